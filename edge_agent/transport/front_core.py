"""What both fronts share, on the agent's event loop: the listening socket (bound with the
configured mode and group, removed at stop), accept, the connection limit shared fairly
between users (edge_agent.transport.pending.connection_slot: an idle connection of the user
holding the most makes room), the refusal of a connection over it, the pending budget, and
the graceful stop. A front supplies how to serve a connection (make_connection) and how to
refuse one (refuse); its connections are handlers with this interface:

    caller, idle (waiting for a request, nothing of one received), deadline(), on_timer(now),
    evict(reason) → bool (closes it if it is idle), begin_stop() (end once the calls in
    progress are answered), close()
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections import Counter
from typing import Callable, Protocol

from edge_agent.api.caller import Caller
from edge_agent.config import AgentConfig
from edge_agent.transport.event_loop import READ, EventLoop
from edge_agent.transport.pending import PendingBudget, connection_slot
from edge_agent.transport.socket_files import bind_socket, peer_credentials, remove_socket_file
from edge_agent.transport.workers import POOL_THREADS, Workers

log = logging.getLogger(__name__)

ACCEPTS_PER_TURN = 16
# After running out of descriptors or memory, accepting waits this long (the limits are
# logged, not fatal).
ACCEPT_PAUSE_SECONDS = 0.5


class Handler(Protocol):
    caller: Caller

    @property
    def idle(self) -> bool: ...

    def deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...

    def evict(self, reason: str) -> bool: ...

    def begin_stop(self) -> None: ...

    def close(self) -> None: ...


class FrontCore:
    """One front's socket on the loop: `make_connection(sock, caller)` → a registered
    handler (it calls core.remove(handler) when it ends), `refuse(sock, reason)` answers a
    connection over the limit."""

    def __init__(self, loop: EventLoop, config: AgentConfig, path: str, name: str,
                 pending: PendingBudget | None,
                 make_connection: Callable[[socket.socket, Caller], Handler],
                 refuse: Callable[[socket.socket, str], None]):
        self.loop = loop
        self.config = config
        self.path = path
        self.name = name
        # Shared with the other front when the agent runs both; else this front's own.
        self.pending = pending or PendingBudget(
            config.pending_budget_bytes, config.edge_agent_connection_reserve_bytes)
        self._make_connection = make_connection
        self._refuse = refuse
        self.handlers: dict[int, Handler] = {}  # by the socket's descriptor
        self.listener: socket.socket | None = None
        self._inode = 0
        self.stopping = False
        self._paused_until = 0.0

    def bind(self) -> None:
        self.listener = bind_socket(self.path, self.config)
        self._inode = os.stat(self.path).st_ino
        self.loop.selector.register(self.listener, READ, self._on_accept)
        self.loop.on_stop(self.begin_stop)

    def close_listener(self) -> None:
        """Stop accepting and remove the socket file (idempotent)."""
        if self.listener is not None:
            try:
                self.loop.selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            self.listener.close()
            self.listener = None
            remove_socket_file(self.path, self._inode)

    def _on_accept(self, _mask: int) -> None:
        listener = self.listener
        for _ in range(ACCEPTS_PER_TURN):
            if listener is None or self.stopping:
                return
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept a client: %s", e)
                    self._pause_accepting()
                    return
                if e.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                raise
            self._admit(sock)

    def _pause_accepting(self) -> None:
        if self.listener is None:
            return
        self.loop.selector.unregister(self.listener)
        self._paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS
        self.loop.add_timed(self)

    def deadline(self) -> float | None:  # only while accepting is paused
        return self._paused_until or None

    def on_timer(self, now: float) -> None:
        self._paused_until = 0.0
        self.loop.remove_timed(self)
        if self.listener is not None and not self.stopping:
            self.loop.selector.register(self.listener, READ, self._on_accept)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            caller = peer_credentials(sock)
        except OSError as e:  # the client left before we could ask who it is
            log.debug("client connection ended at once: %s", e)
            sock.close()
            return
        limit = self.config.edge_agent_max_connections
        slots = Counter(handler.caller.uid for handler in self.handlers.values())
        admitted, owner = connection_slot(caller.uid, slots, limit)
        if owner is not None:
            # Under its guarantee: an idle connection of the user with the most slots, past
            # its own share, makes room (told why), as it would have at its idle timeout.
            reason = (f"closed to make room for another user's client (edge_agent_max_connections "
                      f"is {limit}, shared fairly by the users connected); connect again")
            admitted = any(handler.caller.uid == owner and handler.idle and handler.evict(reason)
                           for handler in list(self.handlers.values()))
        if not admitted:
            if len(self.handlers) >= limit:
                reason = f"too many clients (edge_agent_max_connections is {limit}); try again later"
            else:
                reason = (f"this user's clients hold {slots.get(caller.uid, 0)} of the "
                          f"{limit} connections (edge_agent_max_connections), and the rest "
                          "are kept for other users; try again later")
            self._refuse(sock, reason)
            return
        fd = sock.fileno()  # (-1 once the handler closed the socket)
        try:
            handler = self._make_connection(sock, caller)
        except OSError as e:  # the client left (setsockopt on a dead socket)
            log.debug("client connection ended at once: %s", e)
            sock.close()
            return
        if sock.fileno() == -1:  # the client left before its first bytes could be sent: the
            # handler closed itself, and neither it nor its timer is kept
            log.debug("client connection ended at once")
            return
        self.handlers[fd] = handler
        self.loop.add_timed(handler)

    def remove(self, fd: int, handler: Handler) -> None:
        """A handler ended (it closed its socket)."""
        if self.handlers.get(fd) is handler:
            del self.handlers[fd]
        self.loop.remove_timed(handler)

    def begin_stop(self) -> None:
        """Stop accepting, remove the socket file, and let every connection end by its
        front's rules (calls in progress are answered)."""
        self.stopping = True
        self.close_listener()
        for handler in list(self.handlers.values()):
            handler.begin_stop()

    @property
    def done(self) -> bool:
        """Stopped (or never bound) with no connection left."""
        return (self.stopping or self.listener is None) and not self.handlers

    def close_all(self) -> None:
        for handler in list(self.handlers.values()):
            handler.close()
        self.handlers.clear()


class FrontLoop:
    """The agent's loop, its workers and the fronts on it: run() (or start(), on a thread of
    its own) serves until stop(grace); then every connection is closed, the workers end and
    the loop is closed."""

    def __init__(self, pool_threads: int = POOL_THREADS):
        self.loop = EventLoop()
        self.workers = Workers(pool_threads)
        self.cores: list[FrontCore] = []
        self.finished = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, core: FrontCore) -> None:
        self.cores.append(core)

    def _over(self) -> bool:
        loop = self.loop
        return loop._stop_requested and (all(core.done for core in self.cores)
                                         or time.monotonic() >= loop.stop_deadline)

    def run(self) -> None:
        try:
            self.loop.run(self._over)
        finally:
            left = sum(len(core.handlers) for core in self.cores)
            for core in self.cores:
                core.close_listener()
                core.close_all()
            if not self.workers.stop() or left:
                log.warning("stopping with %d connection(s) still busy or calls still running "
                            "after the grace period", left)
            self.loop.close()
            self.finished.set()

    def start(self) -> "FrontLoop":
        self._thread = threading.Thread(target=self.run, name="edge-agent-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Ask the loop to stop (from any thread, or a signal handler)."""
        if not self.loop.closed:
            self.loop.stop(grace)

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)
