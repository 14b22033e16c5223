# Types of the compiled module edge_agent.observe._metrics (cext/_metrics.pyx), for type checkers.
from collections.abc import Sequence

from typing_extensions import disjoint_base

@disjoint_base
class PredictCounters:
    predict_sum: float
    invoke_sum: float
    input_bytes: int
    output_bytes: int
    shared_inputs: int
    def __new__(cls, bounds: Sequence[float]) -> PredictCounters: ...
    def succeeded(self, started: float, invoke_seconds: float, shared: int,
                  input_bytes: int, output_bytes: int) -> None: ...
    def state(self) -> tuple: ...

@disjoint_base
class CallCounts:
    def count(self, rpc: str, code: int) -> None: ...
    def counted(self) -> dict: ...

def now() -> float: ...
