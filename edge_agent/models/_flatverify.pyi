# Types of the compiled module edge_agent.models._flatverify (cext/_flatverify.pyx), for type
# checkers; its pure-Python twin, edge_agent/models/_flatverify_py.py, has the same API (the
# docstrings are there).
from typing import Any, Iterable

from typing_extensions import disjoint_base

MAX_DEPTH: int
MAX_TABLES: int

@disjoint_base
class Verifier:
    def __init__(self, tables: Iterable, unions: Iterable, root: int,
                 max_tables: int = ...) -> None: ...
    def verify(self, data: Any) -> None: ...
