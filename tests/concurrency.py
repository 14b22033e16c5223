"""Running test workers on threads of their own."""
from __future__ import annotations

import threading
from typing import Callable


def run_concurrently(*calls: Callable[[], None]) -> None:
    """Run each call on its own thread, wait for all, then raise the first failure: an
    assertion failing in a worker thread must fail the test."""
    errors: list[BaseException] = []

    def guarded(call):
        try:
            call()
        except BaseException as e:  # collected, re-raised in the test's own thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
