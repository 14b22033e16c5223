"""The agent's one budget for bytes of requests not yet complete (edge_agent_max_pending_bytes),
shared by the framed socket and the gRPC front, so that many clients each sending part of a
large request cannot exhaust the board through either front or both."""
from __future__ import annotations

import threading


class PendingBudget:
    """Bytes that incomplete requests hold across all connections (edge_agent_max_pending_bytes).

    Each holder (a framed connection, a gRPC call) says what it holds now; one that would take
    the total past the limit is refused."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def change(self, held: int, wanted: int) -> bool:
        """Move one holder's share from `held` to `wanted` bytes; False if it cannot grow."""
        with self._lock:
            if wanted > held and self.used + wanted - held > self.limit:
                return False
            self.used += wanted - held
            return True

    def refusal(self) -> str:
        """What a refused client is told (the same words on both fronts)."""
        return (f"incomplete frames of all clients would hold more than {self.limit} bytes "
                "(edge_agent_max_pending_bytes); send the frame again later")
