"""Model bytes checked against the TFLite schema before any runtime reads them.

A truncated, flipped or half-rewritten flatbuffer makes a TFLite runtime follow offsets past
the end of its copy of the bytes: what lies there differs between processes, so a model the
check in a child process (prover.py) passed can still crash the agent. verify() refuses every
buffer one of whose reads would leave it (edge_agent/models/_flatverify_py.py lists the rules), in
the agent, before the child or the agent's runtime sees it; docs/MODEL_LOADING.md says what
the child still catches.

The verifier in use is the compiled one (cext/_flatverify.pyx), else its pure-Python twin; the
same seam as the Predict codec's (EDGE_AGENT_PUREPYTHON=1 forces the twin). The schema is
edge_agent/models/tflite_schema.py, generated from the `tflite` package's code.
"""
from __future__ import annotations

from edge_agent import pure_python
from edge_agent.models import tflite_schema
from edge_agent.errors import failed_precondition

if pure_python():
    from edge_agent.models._flatverify_py import Verifier
else:
    try:
        from edge_agent.models._flatverify import Verifier
    except ModuleNotFoundError as missing:  # no build; a broken or stale one is an error
        if missing.name != "edge_agent.models._flatverify":
            raise
        from edge_agent.models._flatverify_py import Verifier

ROOT = "Model"
KINDS = {"scalar": 1, "string": 2, "table": 3, "scalars": 4, "strings": 5, "tables": 6,
         "union": 7}
# Tables whose data may lie outside the flatbuffer, by (offset field, size field): the runtime
# reads `size` bytes at `offset` from the start of the file when the offset is above 1.
EXTERNAL = {"Buffer": ("offset", "size"),
            "Operator": ("large_custom_options_offset", "large_custom_options_size")}


def schema_arguments(tables: dict, unions: dict, root: str = ROOT) -> tuple[list, list, int]:
    """The Verifier's arguments (tables, unions, root) for a schema as tflite_schema has it."""
    table_index = {name: i for i, name in enumerate(tables)}
    union_index = {name: i for i, name in enumerate(unions)}
    built = []
    for name, fields in tables.items():
        rows = []
        for field in fields:
            if field is None:  # a deprecated field: nothing reads it
                rows.append(("deprecated", 0, 0))
                continue
            fname, kind, argument = field
            if kind in ("table", "tables"):
                argument = table_index[argument]
            elif kind == "union":  # read after its type, the one-byte field before it
                if not rows or rows[-1][1:] != (KINDS["scalar"], 1):
                    raise ValueError(f"{name}.{fname}: a union needs its type field before it")
                argument = union_index[argument]
            elif argument is None:
                argument = 0
            rows.append((fname, KINDS[kind], argument))
        external = None
        if name in EXTERNAL:
            names = [row[0] for row in rows]
            external = tuple(names.index(f) for f in EXTERNAL[name])
        built.append((name, rows, external))
    members = [(name, [-1 if m is None else table_index[m] for m in slots])
               for name, slots in unions.items()]
    return built, members, table_index[root]


def tflite_verifier() -> Verifier:
    return Verifier(*schema_arguments(tflite_schema.TABLES, tflite_schema.UNIONS))


def check(verifier: Verifier, content, what: str) -> None:
    """FAILED_PRECONDITION naming the first out-of-bounds field of a malformed model."""
    try:
        verifier.verify(content)
    except ValueError as e:
        raise failed_precondition(
            f"{what} is not a well-formed TensorFlow Lite model (cut short, corrupt or "
            f"changed while it was read): {e}") from None


__all__ = ["Verifier", "check", "schema_arguments", "tflite_verifier"]
