"""edge_agent.transport.event_loop by direct calls (epoll and a pipe; no socket, no thread):
what a fault in a timer or a periodic task does, an item that ignores its timer, the stop's
deadline kept when timers fire, and a call that comes in after the loop closed. Turns are
counted, never timed: a deadline of 0.0 is always due."""
from __future__ import annotations

import itertools
import os
import time

import pytest

from edge_agent.transport.event_loop import EventLoop

NEVER = float("inf")


@pytest.fixture
def loop():
    loop = EventLoop()
    loop.every(0.0, lambda: None)  # a turn after every turn: run() never sleeps in poll()
    yield loop
    loop.close()


def turns(count: int):
    """An `until` for run(): true after `count` turns."""
    counter = itertools.count()
    return lambda: next(counter) >= count


class Item:
    """A timed item: due at `deadline`; on_timer(now) runs `fire(self)`; close() removes it
    from the loop, as a connection does."""

    def __init__(self, loop: EventLoop, fire, deadline: float | None = 0.0):
        self.loop = loop
        self.fire = fire
        self.due = deadline
        self.fired = 0
        self.closed = False

    def deadline(self) -> float | None:
        return self.due

    def on_timer(self, now: float) -> None:
        self.fired += 1
        self.fire(self)

    def close(self) -> None:
        self.closed = True
        self.loop.remove_timed(self)


def test_a_failing_periodic_task_is_logged_and_the_loop_goes_on(loop, caplog):
    calls = []

    def ping():  # the watchdog's notify out of descriptors
        calls.append(1)
        raise OSError(24, "Too many open files")

    loop.every(0.0, ping)
    loop.run(lambda: len(calls) >= 3 or turns(1000)())
    assert len(calls) == 3
    assert "a periodic task of the loop failed" in caplog.text


def test_a_failing_timer_closes_its_item_and_the_others_fire(loop):
    def fail(item):
        raise RuntimeError("a bug")

    def settle(item):
        item.due = None

    failing, healthy = Item(loop, fail), Item(loop, settle)
    loop.add_timed(failing)
    loop.add_timed(healthy)
    until = turns(1000)
    loop.run(lambda: until() or (failing.closed and healthy.fired))
    assert failing.closed and failing.fired == 1
    assert healthy.fired == 1 and not healthy.closed
    assert loop._next_timer == NEVER


def test_an_item_that_ignores_its_timer_loses_it_and_the_loop_sleeps(loop, caplog):
    """(A gRPC handler closed in its constructor kept a deadline in the past: the loop spun
    a core on it.) It is dropped the second time in a row its deadline stays put."""
    ghost = Item(loop, lambda item: None)
    loop.add_timed(ghost)
    count = itertools.count()
    loop.run(lambda: next(count) >= 100)
    assert ghost.fired == 2
    assert ghost not in loop._timed and loop._next_timer == NEVER
    assert "did not move its deadline" in caplog.text


def test_a_deadline_that_stays_put_once_is_kept(loop):
    """A check that wants the clock past its deadline, not at it, may leave the deadline
    where it is once; the next turn it moves."""
    def later(item):
        if item.fired == 2:
            item.due = NEVER - 1  # far away, but still timed

    item = Item(loop, later)
    loop.add_timed(item)
    until = turns(1000)
    loop.run(lambda: until() or item.fired == 2)
    assert item.fired == 2 and item in loop._timed
    assert loop._next_timer == item.due


def test_the_stop_deadline_is_kept_when_a_timer_fires_during_the_grace(loop):
    loop._request_stop(grace=3600)
    item = Item(loop, lambda item: setattr(item, "due", None))
    loop.add_timed(item)
    loop._run_timers(time.monotonic())
    assert item.fired == 1
    assert loop._next_timer == loop.stop_deadline  # the loop looks again at the deadline


def test_a_passed_stop_deadline_is_not_kept_as_a_timer(loop):
    loop._request_stop(grace=0)
    loop._run_timers(loop.stop_deadline + 1)
    assert loop._next_timer == NEVER  # (else the loop would spin)


def test_a_call_after_the_loop_closed_writes_nothing_into_a_reused_descriptor():
    """A worker that outlived the stop must not write the wake-up byte into whatever the
    process opened since under the wake pipe's old number."""
    loop = EventLoop()
    number = loop._wake_w
    loop.close()
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.dup2(write_end, number)  # a file opened after the stop, under the same number
        loop.call_soon_threadsafe(print, "late")
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)  # nothing was written
        assert not loop._incoming
    finally:
        if number not in (read_end, write_end):
            os.close(number)
        os.close(read_end)
        os.close(write_end)


def _woken(loop: EventLoop) -> bool:
    """Whether a wake-up byte is waiting in the loop's pipe (drained)."""
    try:
        return bool(os.read(loop._wake_r, 4096))
    except BlockingIOError:
        return False


def test_a_lazy_call_wakes_the_loop_only_if_it_would_sleep_past_the_deadline():
    loop = EventLoop()
    try:
        now = time.monotonic()
        loop._sleeping_until = now + 10  # asleep in poll() until then
        loop.call_by_threadsafe(now + 20, print, "later")
        assert not _woken(loop)  # it wakes by itself before the deadline
        loop.call_by_threadsafe(now + 5, print, "sooner")
        assert _woken(loop)
        loop._sleeping_until = -NEVER  # running: it looks at what came in before it sleeps
        loop.call_by_threadsafe(now, print, "now")
        assert not _woken(loop)
        assert len(loop._incoming) == 3
    finally:
        loop.close()


def test_a_lazy_call_runs_on_the_next_turn_and_calls_out_bound_the_sleep():
    """While calls are out, poll() is given at most LAZY_TICK (so a lazy result is looked at
    within it); with none out and no timer, the loop sleeps until something happens."""
    from edge_agent.transport.event_loop import LAZY_TICK

    loop = EventLoop()
    timeouts: list = []
    poll = loop.selector.poll

    def recording(timeout):
        timeouts.append(timeout)
        return poll(0)

    loop.selector.poll = recording  # type: ignore[method-assign]
    ran: list[str] = []
    try:
        loop.calls_out = 1
        loop.run(turns(1))
        loop.call_by_threadsafe(NEVER, ran.append, "lazy")
        loop.calls_out = 0
        loop.run(lambda: bool(ran))
        assert ran == ["lazy"]
        loop.run(turns(1))
        assert timeouts[0] is not None and 0 <= timeouts[0] <= LAZY_TICK
        assert timeouts[-1] is None
    finally:
        loop.close()
