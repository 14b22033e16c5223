# Types of the compiled module edge_agent.transport._inline_predicts
# (cext/_inline_predicts.pyx), for type checkers.
from collections.abc import Callable
from typing import Any

from typing_extensions import disjoint_base

@disjoint_base
class InlinePredicts:
    held: Any
    failed: Any
    def __new__(cls, models: Any, decided: Any, count: Callable[[str, int], None],
                measure: Callable[[str, float], None], method: int,
                measure_every: int) -> InlinePredicts: ...
    def answer(self, splitter: Any, turn: int, out: bytearray, now: float) -> int: ...
    def receive(self, sock: Any, splitter: Any, offer: int, turn: int, out: bytearray,
                now: float) -> tuple[int, tuple, bool, int, int]: ...
