"""The flatbuffer verifier (edge_agent.models.verifier): every case on both twins, the compiled
one (cext/_flatverify.pyx) and the pure-Python reference, with the same outcome and message;
the schema table against the `tflite` package it is generated from; every truncation and
every single-byte flip of the first 512 bytes of a small model, refused or accepted and then
loaded and run in a child under a heap that makes over-reads fatal."""
from __future__ import annotations


import flatbuffers
import numpy as np
import pytest
import tflite
from seams import fresh_import

from edge_agent import pure_python

import edge_agent.models._flatverify
from edge_agent.models import _flatverify_py
from edge_agent.models import verifier as model_verifier
from edge_agent.models import tflite_schema
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder, tflite_schema_table

TWINS = {"compiled": edge_agent.models._flatverify.Verifier, "python": _flatverify_py.Verifier}
SCHEMA = model_verifier.schema_arguments(tflite_schema.TABLES, tflite_schema.UNIONS)
GOOD = model_builder.add_model().content


@pytest.fixture(params=sorted(TWINS))
def verifier(request):
    return TWINS[request.param](*SCHEMA)


def outcome(verifier, data) -> str | None:
    try:
        verifier.verify(data)
    except ValueError as e:
        return str(e)
    return None


def flips(limit: int = 512) -> list[bytes]:
    cases = []
    for at in range(min(limit, len(GOOD))):
        data = bytearray(GOOD)
        data[at] ^= 0xFF
        cases.append(bytes(data))
    return cases


@pytest.mark.skipif(pure_python(), reason="EDGE_AGENT_PUREPYTHON forces the twin")
def test_the_compiled_verifier_is_the_one_in_use():
    assert edge_agent.models._flatverify.__file__.endswith(".so")
    assert model_verifier.Verifier is edge_agent.models._flatverify.Verifier


def test_the_schema_table_is_the_one_the_tflite_package_generates():
    """A new `tflite` (a new schema.fbs) that changes a table, a field's slot or kind, or a
    union's members fails here: regenerate with `python -m edge_agent.tools.tflite_schema_table`."""
    assert tflite_schema_table.render() == tflite_schema_table.OUTPUT.read_text()


def test_the_table_agrees_with_the_generated_accessors():
    """Spot checks of the generator's reading, against the generated classes themselves:
    each field's accessor reads the vtable slot of its field id, as the table says."""
    import importlib
    import inspect
    for table, fields in tflite_schema.TABLES.items():
        cls = getattr(importlib.import_module(f"tflite.{table}"), table)
        for field_id, field in enumerate(fields):
            if field is None:
                continue
            accessor = "".join(part.capitalize() for part in field[0].split("_"))
            method = getattr(cls, accessor, None)
            if method is None:  # a name the generator's snake_case did not invert exactly
                method = next(m for name, m in vars(cls).items()
                              if name.lower() == field[0].replace("_", ""))
            assert f"self._tab.Offset({4 + 2 * field_id})" in inspect.getsource(method), \
                (table, field)
    assert tflite_schema.TABLES["Model"][4] == ("buffers", "tables", "Buffer")
    assert tflite_schema.TABLES["Buffer"] == (("data", "scalars", 1), ("offset", "scalar", 8),
                                              ("size", "scalar", 8))
    assert tflite_schema.UNIONS["BuiltinOptions"][tflite.BuiltinOptions.AddOptions] == "AddOptions"


@pytest.mark.parametrize("build", [model_builder.add_model, model_builder.fully_connected_model,
                                   model_builder.quantized_add_model])
def test_the_projects_models_are_accepted(verifier, build):
    verifier.verify(build().content)
    verifier.verify(memoryview(bytearray(build().content)))  # any buffer


def test_every_truncation_is_refused(verifier):
    for length in range(1, len(GOOD)):
        message = outcome(verifier, GOOD[:length])
        assert message is not None, length
        assert message.startswith("Model"), message
        assert f"({length} bytes)" in message or length < 8, message  # the end it crossed


def test_both_twins_answer_every_cut_and_flip_alike():
    compiled, python = (TWINS[name](*SCHEMA) for name in ("compiled", "python"))
    cases = [GOOD[:n] for n in range(len(GOOD))] + flips()
    for data in cases:
        assert outcome(compiled, data) == outcome(python, data)


def test_the_messages_name_what_is_out_of_bounds(verifier):
    assert outcome(verifier, GOOD[:299]) == (
        "Model.subgraphs[0].tensors[0]: the table at byte 312 lies past the end of the file "
        "(299 bytes)")
    assert outcome(verifier, GOOD[:5]) == (
        "Model: the file is 5 bytes, shorter than a flatbuffer's header (8 bytes)")


# --- hand-made buffers: the rules one by one ---------------------------------------------

def _model(build_buffers=None, build_subgraph=None) -> bytes:
    """A Model table with what the callbacks add (they get the builder)."""
    b = flatbuffers.Builder(256)
    buffers = build_buffers(b) if build_buffers else None
    subgraph = build_subgraph(b) if build_subgraph else None
    if subgraph is not None:
        tflite.ModelStartSubgraphsVector(b, 1)
        b.PrependUOffsetTRelative(subgraph)
        subgraphs = b.EndVector()
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    if buffers is not None:
        tflite.ModelAddBuffers(b, buffers)
    if subgraph is not None:
        tflite.ModelAddSubgraphs(b, subgraphs)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _external_buffer(offset: int, size: int):
    def build(b):
        tflite.BufferStart(b)
        tflite.BufferAddOffset(b, offset)
        tflite.BufferAddSize(b, size)
        buffer = tflite.BufferEnd(b)
        tflite.ModelStartBuffersVector(b, 1)
        b.PrependUOffsetTRelative(buffer)
        return b.EndVector()
    return build


def test_data_outside_the_flatbuffer_must_lie_inside_the_file(verifier):
    head = _model(_external_buffer(1, 0))
    verifier.verify(head)  # offset 1: the placeholder for "no data"
    size = len(_model(_external_buffer(2, 64)))  # the same layout, whatever the values
    # The data a large model keeps after its flatbuffer: the file must hold it.
    inside = _model(_external_buffer(size, 64))
    verifier.verify(inside + bytes(64))
    assert outcome(verifier, inside + bytes(63)) == (
        f"Model.buffers[0]: the data at file offset {size} (64 bytes) runs past the end of the "
        f"file ({size + 63} bytes)")
    huge = _model(_external_buffer(2**64 - 8, 16))
    assert "the data at file offset 18446744073709551608 (16 bytes)" in outcome(verifier, huge)


def _operator_with_options_type(options_type: int):
    def build(b):
        tflite.AddOptionsStart(b)
        options = tflite.AddOptionsEnd(b)
        tflite.OperatorStart(b)
        tflite.OperatorAddBuiltinOptionsType(b, options_type)
        tflite.OperatorAddBuiltinOptions(b, options)
        operator = tflite.OperatorEnd(b)
        tflite.SubGraphStartOperatorsVector(b, 1)
        b.PrependUOffsetTRelative(operator)
        operators = b.EndVector()
        tflite.SubGraphStart(b)
        tflite.SubGraphAddOperators(b, operators)
        return tflite.SubGraphEnd(b)
    return build


def test_a_union_must_name_a_table_of_the_schema(verifier):
    verifier.verify(_model(build_subgraph=_operator_with_options_type(
        tflite.BuiltinOptions.AddOptions)))
    assert outcome(verifier, _model(build_subgraph=_operator_with_options_type(250))) == (
        "Model.subgraphs[0].operators[0].builtin_options: union type 250 is not a member of "
        "BuiltinOptions in the schema this agent checks models against")


def test_a_string_must_end_with_nul_inside_the_file(verifier):
    b = flatbuffers.Builder(64)
    description = b.CreateString("model")
    tflite.ModelStart(b)
    tflite.ModelAddDescription(b, description)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    data = bytearray(b.Output())
    verifier.verify(bytes(data))
    at = data.index(b"model")
    data[at + 5] = ord("!")  # the NUL
    message = outcome(verifier, bytes(data))
    assert message.startswith("Model.description: the string at byte ")
    assert message.endswith("(5 bytes) is not NUL-terminated")


def test_a_misaligned_or_wild_vtable_is_refused(verifier):
    data = bytearray(GOOD)
    root = int.from_bytes(data[:4], "little")
    data[root:root + 4] = (-(1 << 30)).to_bytes(4, "little", signed=True)
    assert "has its vtable at byte" in outcome(verifier, bytes(data))
    data = bytearray(GOOD)
    data[:4] = (root + 2).to_bytes(4, "little")
    assert outcome(verifier, bytes(data)) == f"Model: the Model table at byte {root + 2} is not aligned"


NODE_SCHEMA = ([("Node", [("child", 3, 0), ("children", 6, 0)], None)], [], 0)


def _chain(depth: int) -> bytes:
    b = flatbuffers.Builder(64)
    child = None
    for _ in range(depth):
        b.StartObject(2)
        if child is not None:
            b.PrependUOffsetTRelativeSlot(0, child, 0)
        child = b.EndObject()
    b.Finish(child)
    return bytes(b.Output())


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_nesting_is_bounded(twin):
    verifier = TWINS[twin](*NODE_SCHEMA)
    verifier.verify(_chain(_flatverify_py.MAX_DEPTH))
    message = outcome(verifier, _chain(_flatverify_py.MAX_DEPTH + 1))
    assert message == "Node" + ".child" * 64 + ": tables nest deeper than 64"
    assert edge_agent.models._flatverify.MAX_DEPTH == _flatverify_py.MAX_DEPTH


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_the_tables_visited_are_bounded(twin):
    """One table referenced many times is visited each time: the count bounds the work a
    small file can ask for."""
    b = flatbuffers.Builder(64)
    b.StartObject(2)
    leaf = b.EndObject()
    b.StartVector(4, 9, 4)
    for _ in range(9):
        b.PrependUOffsetTRelative(leaf)
    children = b.EndVector()
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, children, 0)
    b.Finish(b.EndObject())
    data = bytes(b.Output())
    TWINS[twin](*NODE_SCHEMA, max_tables=10).verify(data)
    assert outcome(TWINS[twin](*NODE_SCHEMA, max_tables=9), data) == (
        "Node.children[8]: more than 9 tables")
    assert edge_agent.models._flatverify.MAX_TABLES == _flatverify_py.MAX_TABLES == 1_000_000


def test_a_malformed_model_is_failed_precondition_naming_the_fault():
    with pytest.raises(AgentError) as info:
        model_verifier.check(model_verifier.tflite_verifier(), GOOD[:299], "model 'm'")
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert info.value.message == (
        "model 'm' is not a well-formed TensorFlow Lite model (cut short, corrupt or changed "
        "while it was read): Model.subgraphs[0].tensors[0]: the table at byte 312 lies past "
        "the end of the file (299 bytes)")


def test_a_bad_schema_is_refused():
    for twin in TWINS.values():
        with pytest.raises(ValueError):
            twin([("T", [], None)], [], 1)
    with pytest.raises(ValueError):
        model_verifier.schema_arguments({"T": (("u", "union", "U"),)}, {"U": (None, "T")}, "T")


@pytest.mark.parametrize("value, module", [("1", "edge_agent.models._flatverify_py"),
                                           ("0", "edge_agent.models._flatverify")])
def test_the_twin_is_what_purepython_selects(monkeypatch, value, module):
    verifier = fresh_import("edge_agent.models.verifier", monkeypatch, pure=value)
    assert verifier.Verifier.__module__ == module


def test_without_a_compiled_build_the_twin_verifies(monkeypatch):
    verifier = fresh_import("edge_agent.models.verifier", monkeypatch,
                            missing=("edge_agent.models._flatverify",))
    checker = verifier.tflite_verifier()
    checker.verify(model_builder.add_model().content)
    assert type(checker).__module__ == "edge_agent.models._flatverify_py"


def test_the_verifier_reads_numpy_owned_bytes_too(verifier):
    verifier.verify(np.frombuffer(GOOD, dtype=np.uint8))
