"""FIFOs where files are expected, and a way to tell a call that returned from one that hangs.

A FIFO opened for reading blocks until a writer comes: a call that hangs on one would hang the
test for ever, so calls run on a daemon thread with a generous deadline (a hang fails the test,
speed is never asserted), and leaving `fifo()` opens the write end, which releases any thread
still stuck in open().
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
DEADLINE = 60.0  # seconds: far beyond what any of these calls takes when it does not hang


def returns(call: Callable[[], T], deadline: float = DEADLINE) -> T:
    """call()'s result (or its exception, re-raised); fails the test if it does not return."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the test's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="fifo-helpers-call")
    thread.start()
    thread.join(deadline)
    assert not thread.is_alive(), f"the call did not return within {deadline:.0f} s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def release(path: str | Path) -> None:
    """Open `path`'s write end and close it: whoever waits to read it goes on (reads EOF)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))  # O_RDWR on a FIFO never blocks
    except OSError:
        pass


@contextmanager
def fifo(path: str | Path) -> Iterator[Path]:
    """A FIFO at `path` for the block; afterwards stuck readers are released and it is removed."""
    path = Path(path)
    os.mkfifo(path, 0o644)
    try:
        yield path
    finally:
        release(path)
        path.unlink(missing_ok=True)
