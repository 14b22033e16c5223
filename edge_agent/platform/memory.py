"""The memory budget that loaded models share, and what the board really has free."""
from __future__ import annotations

import os
import threading

from edge_agent.errors import resource_exhausted

MIB = 1024 * 1024


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, None where the kernel does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_bytes() -> int:
    """This process's resident set (the second figure of /proc/self/statm), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryBudget:
    """Bytes reserved by loaded models against a fixed total; thread-safe."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @property
    def free(self) -> int:
        """What may still be reserved: the budget's free part, at most what the system has."""
        free = self.total - self._used
        available = available_bytes()
        return free if available is None else min(free, available)

    def check(self, nbytes: int, what: str) -> None:
        """Raise RESOURCE_EXHAUSTED if nbytes would not fit now, saying how much is missing."""
        free = self.total - self._used
        if nbytes > free:
            raise resource_exhausted(
                f"{what} needs about {nbytes / MIB:.1f} MiB but only {free / MIB:.1f} MiB "
                f"of the {self.total / MIB:.0f} MiB model memory budget is free "
                "(edge_agent_memory_budget_mb); unload a model or raise the budget")
        available = available_bytes()
        if available is not None and nbytes > available:
            raise resource_exhausted(
                f"{what} needs about {nbytes / MIB:.1f} MiB but the system has only "
                f"{available / MIB:.1f} MiB available")

    def reserve(self, nbytes: int, what: str) -> None:
        """Take nbytes for `what`, or raise RESOURCE_EXHAUSTED as check() does."""
        with self._lock:
            self.check(nbytes, what)
            self._used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)
