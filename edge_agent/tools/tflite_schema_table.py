"""Writes edge_agent/models/tflite_schema.py: the TFLite schema as the model verifier needs it, read
from the code the `tflite` package generated from schema.fbs (`python -m
edge_agent.tools.tflite_schema_table`). tests/unit/test_model_verifier.py regenerates it and
compares, so a new `tflite` (a new schema) that changes any table is caught.

Each generated table class has one accessor per field, and the accessor's body says all the
verifier needs: the field's vtable slot (`self._tab.Offset(N)`: field id (N - 4) / 2) and what
the slot holds (a scalar of a given width, a string, a table of a named class, a vector of
either, a union). A union's accessor does not name its enum: UNION_ENUMS does, and a union
field missing from it stops the generator.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "models" / "tflite_schema.py"

SCALAR_SIZES = {"Bool": 1, "Int8": 1, "Uint8": 1, "Int16": 2, "Uint16": 2, "Int32": 4,
                "Uint32": 4, "Float32": 4, "Int64": 8, "Uint64": 8, "Float64": 8}
# (table, accessor) of each union field -> the union's enum class.
UNION_ENUMS = {
    ("Operator", "BuiltinOptions"): "BuiltinOptions",
    ("Operator", "BuiltinOptions2"): "BuiltinOptions2",
    ("QuantizationParameters", "Details"): "QuantizationDetails",
    ("DimensionMetadata", "ArraySegments"): "SparseIndexVector",
    ("DimensionMetadata", "ArrayIndices"): "SparseIndexVector",
}
_SLOT = re.compile(r"self\._tab\.Offset\((\d+)\)")
_FLAGS = re.compile(r"number_types\.(\w+)Flags, (a|o) \+")
_IMPORT = re.compile(r"from tflite\.(\w+) import")


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def field_kind(table: str, accessor: str, body: str) -> tuple:
    """(kind, argument) of one field from its accessor's source."""
    if "self._tab.Union(" in body:
        return ("union", UNION_ENUMS[(table, accessor)])
    # A table accessor builds its object (obj.Init); another may import an enum.
    imported = _IMPORT.search(body) if "obj.Init(" in body else None
    flags = _FLAGS.search(body)
    if "self._tab.Vector(o)" in body:
        if imported:
            return ("tables", imported.group(1))
        if "self._tab.String(a" in body:
            return ("strings", None)
        assert flags and flags.group(2) == "a", body
        return ("scalars", SCALAR_SIZES[flags.group(1)])
    if "self._tab.String(o + self._tab.Pos)" in body:
        return ("string", None)
    if imported:
        return ("table", imported.group(1))
    assert flags and flags.group(2) == "o", body
    return ("scalar", SCALAR_SIZES[flags.group(1)])


def read_schema() -> tuple[dict, dict, str]:
    """(tables, unions, tflite version): tables maps a class to its fields by id as
    (name, kind, argument), None for an id with no accessor (a deprecated field); unions
    maps an enum to its member classes by type value, None for NONE."""
    import tflite

    tables: dict[str, list] = {}
    enums: dict[str, dict[str, int]] = {}
    for info in pkgutil.iter_modules(tflite.__path__):
        module = importlib.import_module(f"tflite.{info.name}")
        source = Path(str(module.__file__)).read_text()
        tree = ast.parse(source)
        for node in tree.body:
            if not isinstance(node, ast.ClassDef) or node.name != info.name:
                continue
            methods = [m for m in node.body if isinstance(m, ast.FunctionDef)]
            if not any(m.name == "Init" for m in methods):  # an enum: NAME = value
                enums[node.name] = {
                    a.targets[0].id: int(a.value.value) for a in node.body
                    if isinstance(a, ast.Assign) and isinstance(a.targets[0], ast.Name)
                    and isinstance(a.value, ast.Constant) and isinstance(a.value.value, int)}
                continue
            fields: dict[int, tuple] = {}
            for method in methods:
                body = ast.get_source_segment(source, method) or ""
                slot = _SLOT.search(body)
                if slot is None or method.name.endswith(("Length", "IsNone", "AsNumpy")):
                    continue
                field_id = (int(slot.group(1)) - 4) // 2
                assert field_id not in fields, (node.name, method.name)
                fields[field_id] = (snake(method.name),) + field_kind(node.name, method.name, body)
            tables[node.name] = [fields.get(i) for i in range(max(fields, default=-1) + 1)]
    unions: dict[str, list] = {}
    for enum in sorted(set(UNION_ENUMS.values())):
        members = enums[enum]
        slots: list = [None] * (max(members.values()) + 1)
        for name, value in members.items():
            if value:
                assert name in tables, f"union {enum} member {name} is no table"
                slots[value] = name
        unions[enum] = slots
    from importlib.metadata import version
    return tables, unions, version("tflite")


def render() -> str:
    tables, unions, version = read_schema()
    lines = [
        f'"""The TFLite schema (tflite {version}) as edge_agent.models.verifier needs it: each',
        "table's fields by field id as (name, kind, argument), None for a deprecated id; each",
        "union's member tables by type value. Kinds: scalar (argument: its size), string, table",
        "(its class), scalars (a vector; the element size), strings, tables (a vector; the class),",
        "union (its enum; the type is the field before it).",
        "",
        "Generated by `python -m edge_agent.tools.tflite_schema_table` from the `tflite`",
        'package\'s generated code; do not edit."""',
        "",
        f"TFLITE_VERSION = {version!r}",
        "",
        "TABLES: dict[str, tuple] = {",
    ]
    for name in sorted(tables):
        lines.append(f"    {name!r}: (")
        for field in tables[name]:
            lines.append(f"        {field!r},")
        lines.append("    ),")
    lines += ["}", "", "UNIONS: dict[str, tuple] = {"]
    for name in sorted(unions):
        lines.append(f"    {name!r}: (")
        for member in unions[name]:
            lines.append(f"        {member!r},")
        lines.append("    ),")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    OUTPUT.write_text(render())


if __name__ == "__main__":
    main()
