"""The pure-Python twin of cext/_metrics.pyx: a model's per-prediction counters and the calls
by RPC and status, the same classes with the same results, for a checkout without a build
and as the reference the tests hold the compiled module to (EDGE_AGENT_PUREPYTHON=1 forces
it; edge_agent.observe.metrics chooses).

The compiled classes need no lock: each method runs whole under the GIL. Python code may
switch threads between any two bytecodes, so here each update and each read takes the
object's own lock instead: a reader still sees all of one prediction or none of it, and
counts from any number of threads still add up exactly.
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Sequence

MAX_BOUNDS = 32
MAX_RPCS = 32
CODES = 17  # gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED)


def now() -> float:
    """Seconds on CLOCK_MONOTONIC, the clock of time.perf_counter() on Linux."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class PredictCounters:
    """Two latency histograms (end to end, invoke) over the same upper bounds, and the bytes
    and shared-memory inputs of successful predictions."""
    __slots__ = ("_bounds", "_predict_counts", "_invoke_counts", "predict_sum", "invoke_sum",
                 "input_bytes", "output_bytes", "shared_inputs", "_lock")

    def __init__(self, bounds: Sequence[float]):
        if len(bounds) > MAX_BOUNDS:
            raise ValueError(f"at most {MAX_BOUNDS} bucket bounds, got {len(bounds)}")
        self._bounds = [float(bound) for bound in bounds]
        self._predict_counts = [0] * (len(bounds) + 1)
        self._invoke_counts = [0] * (len(bounds) + 1)
        self.predict_sum = 0.0
        self.invoke_sum = 0.0
        self.input_bytes = 0
        self.output_bytes = 0
        self.shared_inputs = 0
        self._lock = threading.Lock()

    def succeeded(self, started: float, invoke_seconds: float, shared: int,
                  input_bytes: int, output_bytes: int) -> None:
        """A prediction whose outputs are in the reply; `started`: time.perf_counter() when
        the agent had the decoded request."""
        seconds = now() - started
        invoke_seconds = float(invoke_seconds)
        with self._lock:
            self._predict_counts[bisect_left(self._bounds, seconds)] += 1
            self.predict_sum += seconds
            self._invoke_counts[bisect_left(self._bounds, invoke_seconds)] += 1
            self.invoke_sum += invoke_seconds
            self.input_bytes += input_bytes
            self.output_bytes += output_bytes
            self.shared_inputs += shared

    def state(self) -> tuple:
        """(predict bucket counts, predict sum, invoke bucket counts, invoke sum, input
        bytes, output bytes, shared inputs), all as of one moment. Bucket counts are per
        bucket, not cumulative, the last one +Inf."""
        with self._lock:
            return (list(self._predict_counts), self.predict_sum, list(self._invoke_counts),
                    self.invoke_sum, self.input_bytes, self.output_bytes, self.shared_inputs)


class CallCounts:
    """Calls by RPC name and status code, for one front; codes outside 0-16 are not counted.
    The RPC names are the program's own (its RPC table and "unknown"), at most 32."""
    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}  # rpc name → calls by code
        self._lock = threading.Lock()

    def count(self, rpc: str, code: int) -> None:
        if not isinstance(rpc, str):
            raise TypeError(f"rpc must be a str, not {type(rpc).__name__}")
        with self._lock:
            row = self._counts.get(rpc)
            if row is None:
                if len(self._counts) == MAX_RPCS:
                    raise ValueError(f"more than {MAX_RPCS} RPC names counted")
                row = self._counts[rpc] = [0] * CODES
            if 0 <= code < CODES:
                row[code] += 1

    def counted(self) -> dict:
        """{(rpc, code): calls} for every count that is not zero."""
        with self._lock:
            return {(name, code): calls for name, row in self._counts.items()
                    for code, calls in enumerate(row) if calls}
