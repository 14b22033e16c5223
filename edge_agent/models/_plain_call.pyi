# Types of the compiled module edge_agent.models._plain_call (cext/_plain_call.pyx), for type
# checkers.
from typing import Any

from typing_extensions import disjoint_base

@disjoint_base
class PlainCall:
    def __new__(cls, model: Any, interpreter: Any) -> PlainCall: ...
    def answer(self, body: Any, started: float) -> bytes | None: ...
    def run(self, tensors: Any, started: float) -> bytes | None: ...
