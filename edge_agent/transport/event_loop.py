"""The agent's one event loop: every connection's I/O, of both fronts, on one thread.

The loop waits (epoll, through the standard library's select module) for sockets that are
ready and calls their handlers; a handler reads what is there, feeds its sans-IO connection object, runs short calls
inline and hands long ones to the workers (edge_agent.transport.workers), whose results come
back through call_soon_threadsafe() or call_by_threadsafe(), the only ways into the loop from
another thread (the second wakes the loop only if it would otherwise sleep past a deadline:
a model worker that sent its reply itself has nothing the loop must do at once). Work a
connection still has after its turn (requests already buffered) waits in the ready queue
behind the others, so connections take turns. Timers are per connection: each says when it
next needs the loop (deadline()); the loop scans them only when the earliest is due.
A periodic callback (every()) feeds the systemd watchdog from here, so a stuck loop is noticed.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from typing import Callable, Protocol

log = logging.getLogger(__name__)

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
# A hang-up or an error is reported to the handler as both: its next receive or send says
# which (end of stream, or the error itself).
_TROUBLE = select.EPOLLHUP | select.EPOLLERR
_NEVER = float("inf")
# While calls are out on other threads (calls_out), the loop sleeps at most this long, so that
# one finished lazily (call_by_threadsafe) with a distant deadline needs no wake-up of its own.
LAZY_TICK = 1.0


class Poller:
    """epoll with a callback per descriptor: register(sock, READ | WRITE, callback), modify,
    unregister; the loop calls callback(events) when the socket is ready. (The selectors
    module does the same with a key object per event: a few microseconds a request more.)"""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.callbacks: dict[int, Callable[[int], None]] = {}

    def register(self, fileobj, events: int, callback: Callable[[int], None]) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self._epoll.register(fd, events)
        self.callbacks[fd] = callback

    def modify(self, fileobj, events: int, callback: Callable[[int], None]) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self._epoll.modify(fd, events)
        self.callbacks[fd] = callback

    def unregister(self, fileobj) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if self.callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def poll(self, timeout: float | None):
        return self._epoll.poll(-1 if timeout is None else timeout)

    def close(self) -> None:
        self._epoll.close()


class Timed(Protocol):
    def deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...


class EventLoop:
    """run() on one thread serves until stop(); everything else on the loop's own thread,
    except call_soon_threadsafe() and stop(), which any thread (or a signal handler) may
    call."""

    def __init__(self) -> None:
        self.selector = Poller()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_r, READ, self._drain_wake)
        self._incoming: deque = deque()  # (callback, args) from other threads
        self._ready: deque = deque()  # callbacks for the next turn, on the loop
        self._timed: set[Timed] = set()
        # Items whose deadline stayed put when their timer fired (by the deadline): a second
        # time in a row, they are dropped (see _run_timers).
        self._unmoved: dict[Timed, float] = {}
        self._next_timer = _NEVER
        self._periodic: list[list] = []  # [due, interval, callback]
        self._next_periodic = _NEVER
        self._stop_requested = False
        self.stop_deadline = _NEVER
        self._on_stop: list[Callable[[], None]] = []  # called once, on the loop, at stop()
        self._until: Callable[[], bool] | None = None
        self.thread: threading.Thread | None = None
        # close() and the wake-up write exclude each other: a thread that calls in after the
        # loop closed must not write into a descriptor number reused since. Reentrant: stop()
        # may run in a signal handler on a thread that is inside call_soon_threadsafe().
        self._wake_lock = threading.RLock()
        self.closed = False
        # Calls handed to other threads whose result may come back lazily: counted by their
        # front, on the loop.
        self.calls_out = 0
        # When the loop wakes by itself at the latest while it sleeps in poll (-inf while it
        # runs: it looks at what came in before it sleeps again). Written by the loop only.
        self._sleeping_until = -_NEVER

    # --- from any thread ----------------------------------------------------------------

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        with self._wake_lock:
            if self.closed:  # a worker that outlived the stop: nobody is left to answer
                log.debug("the loop is closed; dropped a late call of %r", callback)
                return
            self._incoming.append((callback, args))
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass  # the pipe is full: a wake-up is pending anyway

    def call_by_threadsafe(self, deadline: float, callback: Callable, *args) -> None:
        """callback(*args) on the loop when it next wakes, and by `deadline` (monotonic) at the
        latest: the loop is woken only if it sleeps and would wake later than that by
        itself. For a result nothing waits for at once (the client's next bytes, a timer or
        LAZY_TICK wake the loop anyway)."""
        with self._wake_lock:
            if self.closed:
                log.debug("the loop is closed; dropped a late call of %r", callback)
                return
            self._incoming.append((callback, args))
            # The loop sets _sleeping_until before it looks at _incoming (under the GIL, in
            # that order): either it sees this call before it sleeps, or this sees its sleep.
            if deadline < self._sleeping_until:
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:
                    pass

    def wake(self) -> None:
        """Wake the loop now (what was queued lazily has become urgent)."""
        with self._wake_lock:
            if not self.closed:
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:
                    pass

    def stop(self, grace: float = 2.0) -> None:
        """Ask the loop to stop: the fronts stop accepting and end their connections
        gracefully (their own rules), for at most `grace` seconds (stop_deadline); the
        run()'s `until` decides when it is over. Safe from a signal handler."""
        self.call_soon_threadsafe(self._request_stop, grace)

    # --- on the loop --------------------------------------------------------------------

    def soon(self, callback: Callable, *args) -> None:
        """Run callback(*args) on the next turn, after the sockets already ready."""
        self._ready.append((callback, args))

    def add_timed(self, item: Timed) -> None:
        self._timed.add(item)
        self.timer_changed(item.deadline())

    def remove_timed(self, item: Timed) -> None:
        self._timed.discard(item)
        self._unmoved.pop(item, None)

    def timer_changed(self, deadline: float | None) -> None:
        """A timed item's deadline moved (earlier: the loop must look sooner)."""
        if deadline is not None and deadline < self._next_timer:
            self._next_timer = deadline

    def every(self, interval: float, callback: Callable[[], None]) -> None:
        """callback() every `interval` seconds, on the loop (the watchdog)."""
        due = time.monotonic() + interval
        self._periodic.append([due, interval, callback])
        self._next_periodic = min(self._next_periodic, due)

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._on_stop.append(callback)

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def _request_stop(self, grace: float) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        self.stop_deadline = time.monotonic() + grace
        self.timer_changed(self.stop_deadline)  # the loop looks again then
        for callback in self._on_stop:
            try:
                callback()
            except Exception:  # a front that fails to stop must not keep the others running
                log.exception("stopping a front failed")

    def _drain_wake(self, _mask: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def run(self, until: Callable[[], bool]) -> None:
        """Serve until `until()` is true (checked after every turn)."""
        self.thread = threading.current_thread()
        poll = self.selector.poll
        callbacks = self.selector.callbacks
        incoming, ready = self._incoming, self._ready
        clock = time.monotonic
        trouble, both = _TROUBLE, READ | WRITE
        while not until():
            wake = min(self._next_timer, self._next_periodic)
            if self.calls_out:
                wake = min(wake, clock() + LAZY_TICK)
            self._sleeping_until = wake  # before incoming is looked at: call_by_threadsafe
            if ready or incoming:
                timeout: float | None = 0.0
            else:
                timeout = None if wake == _NEVER else max(0.0, wake - clock())
            polled = poll(timeout)
            self._sleeping_until = -_NEVER
            # What came from other threads first: a call finished lazily puts its connection
            # back to reading before that connection's readiness is handled below.
            while incoming:
                callback, args = incoming.popleft()
                try:
                    callback(*args)
                except Exception:
                    self._fault(callback)
            for fd, events in polled:
                callback = callbacks.get(fd)
                if callback is not None:  # (unregistered by a handler run before it)
                    try:
                        callback(events | both if events & trouble else events)
                    except Exception:
                        self._fault(callback)
            # (What other threads queue meanwhile runs first in the next turn: its poll does
            # not wait then.)
            for _ in range(len(ready)):  # this turn's; what they add waits for the next
                callback, args = ready.popleft()
                try:
                    callback(*args)
                except Exception:
                    self._fault(callback)
            if self._next_timer != _NEVER or self._next_periodic != _NEVER:
                now = clock()
                if now >= self._next_timer:
                    self._run_timers(now)
                if now >= self._next_periodic:
                    self._run_periodic(now)

    def _fault(self, callback: Callable) -> None:
        """A fault of ours in a handler (or its timer): its connection is closed, the loop
        (and every other connection) goes on."""
        owner = getattr(callback, "__self__", None)
        log.exception("a connection failed with an internal error; it is closed, the agent "
                      "keeps serving")
        close = getattr(owner, "close", None)
        if owner is not None and owner is not self and callable(close):
            try:
                close()
            except Exception:
                log.exception("closing the failed connection failed too")

    def _run_periodic(self, now: float) -> None:
        for periodic in self._periodic:
            if now >= periodic[0]:
                periodic[0] = now + periodic[1]
                try:
                    periodic[2]()
                except Exception:  # (the watchdog's ping out of descriptors): next time
                    log.exception("a periodic task of the loop failed; the loop goes on")
        self._next_periodic = min(p[0] for p in self._periodic)

    def _run_timers(self, now: float) -> None:
        # The stop's deadline is a timer too: the loop must look again then, whatever fired.
        self._next_timer = self.stop_deadline if self.stop_deadline > now else _NEVER
        for item in list(self._timed):
            deadline = item.deadline()
            if deadline is not None and deadline <= now:
                try:
                    item.on_timer(now)
                except Exception:
                    self._fault(item.on_timer)
                if item not in self._timed:
                    continue
                after = item.deadline()
                if after is not None and after == deadline:
                    # Still due. Once may be rounding (a check that wants `now` past the
                    # deadline, not at it: the next turn's clock is); twice in a row, the
                    # item ignores its timer and the loop would spin on it every turn. A bug
                    # of ours: the item loses its timer rather than the agent a core.
                    if self._unmoved.get(item) == deadline:
                        log.error("%r did not move its deadline (%.3f) when its timer "
                                  "fired; its timer is dropped", item, deadline)
                        self.remove_timed(item)
                        continue
                    self._unmoved[item] = deadline
                else:
                    self._unmoved.pop(item, None)
                deadline = after
            if deadline is not None and deadline < self._next_timer:
                self._next_timer = deadline

    def close(self) -> None:
        with self._wake_lock:
            if self.closed:
                return
            self.closed = True
            os.close(self._wake_w)  # (under the lock: no late wake-up writes to its number)
        self.selector.close()
        os.close(self._wake_r)
