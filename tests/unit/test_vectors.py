"""Test vectors (vectors.py): safe .npy reading, the fit to the model, the comparison and its
tolerances, and validation on a real interpreter."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.packaging import vectors
from edge_agent.models.engine import create_interpreter
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder
from edge_agent.packaging.vectors import TestVectors, VectorError, mismatch, read_npy


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


# --- reading ----------------------------------------------------------------------------------

@pytest.mark.parametrize("array", [
    np.arange(8, dtype=np.float32).reshape(1, 8), np.array([[1, 2], [3, 4]], np.uint8),
    np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)), np.zeros((0, 4), np.int32),
    np.array(True)])
def test_npy_files_read_back_exactly(array):
    read = read_npy(npy(array), "x")
    assert read.dtype == array.dtype and read.flags.c_contiguous
    np.testing.assert_array_equal(read, array)


def test_a_big_endian_file_is_read_as_native_numbers():
    array = np.arange(4, dtype=">f4")
    read = read_npy(npy(array), "x")
    assert read.dtype == np.dtype("float32") and read.dtype.isnative
    np.testing.assert_array_equal(read, [0, 1, 2, 3])


def test_pickles_and_structured_arrays_are_refused():
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(VectorError, match="plain numbers"):
        read_npy(pickled.getvalue(), "x")
    with pytest.raises(VectorError, match="plain numbers"):
        read_npy(npy(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])), "x")


def test_a_header_claiming_more_data_than_the_file_holds_is_refused_before_reading():
    data = npy(np.zeros((2, 2), np.float32))
    header_end = data.index(b"\n") + 1
    huge = data[:header_end].replace(b"(2, 2)", b"(9999999999, 2)")
    with pytest.raises(VectorError, match="declares 79999999992 bytes"):
        read_npy(huge + data[header_end:], "x")
    with pytest.raises(VectorError, match="holds 15"):
        read_npy(data[:-1], "x")
    with pytest.raises(VectorError, match="not a valid .npy file"):
        read_npy(b"not an npy file at all", "x")


def test_the_fit_to_the_model_names_the_tensor():
    array = np.zeros((1, 4), np.float32)
    vectors.check_fits(array, "input", "a", "FLOAT32", (1, 4), "f")
    vectors.check_fits(np.zeros((3, 4), np.float32), "input", "x", "FLOAT32", (-1, 4), "f")
    with pytest.raises(VectorError, match="holds int32, but the model's input 'a' is FLOAT32"):
        vectors.check_fits(array.astype(np.int32), "input", "a", "FLOAT32", (1, 4), "f")
    with pytest.raises(VectorError, match=r"shape \[1, 5\], but the model's output 's' has "
                                          r"shape \[any, 4\]"):
        vectors.check_fits(np.zeros((1, 5), np.float32), "output", "s", "FLOAT32", (-1, 4), "f")
    with pytest.raises(VectorError, match="type STRING"):
        vectors.check_fits(array, "input", "t", "STRING", (1, 4), "f")


# --- comparing --------------------------------------------------------------------------------

def test_integers_compare_exactly_unless_a_tolerance_is_given():
    expected = np.array([[10, 20, 30]], np.uint8)
    actual = np.array([[10, 21, 30]], np.uint8)
    assert mismatch("sum", expected, expected.copy(), None, None) is None
    problem = mismatch("sum", expected, actual, None, None)
    assert problem is not None
    assert "output 'sum'" in problem and "by up to 1 " in problem and "[0, 1]" in problem
    assert mismatch("sum", expected, actual, 1, None) is None
    # uint8 arithmetic would wrap: 10 - 250 is a difference of 240, not 16.
    assert "by up to 240" in mismatch("sum", expected, np.array([[250, 20, 30]], np.uint8),
                                      None, None)


def test_floats_compare_with_the_default_tolerance_or_the_packages():
    expected = np.array([1.0, 100.0, -3.0], np.float32)
    assert mismatch("y", expected, expected + np.float32(5e-6), None, None) is None
    problem = mismatch("y", expected, np.array([1.0, 100.5, -3.0], np.float32), None, None)
    assert problem is not None and "output 'y'" in problem and "by up to 0.5" in problem
    assert "atol 1e-05 + rtol 1e-05" in problem and "1 of 3 values off" in problem
    assert mismatch("y", expected, np.array([1.0, 100.5, -3.0], np.float32), None, 0.01) is None
    assert mismatch("y", expected, np.array([1.2, 100.0, -3.0], np.float32), 0.3, None) is None


def test_nan_matches_only_nan_and_a_shape_change_is_named():
    expected = np.array([np.nan, 1.0], np.float32)
    assert mismatch("y", expected, expected.copy(), None, None) is None
    assert "by up to inf" in mismatch("y", np.array([0.0, 1.0], np.float32), expected, None, None)
    assert "has shape [1, 2], the package's expected output has [2]" in mismatch(
        "y", expected, expected.reshape(1, 2), None, None)


def test_vectors_travel_to_the_child_as_one_blob():
    v = TestVectors((npy(np.zeros(2, np.float32)), b"xy"), (npy(np.ones(3, np.int8)),), 0.5,
                    None, ("test/input-0.npy", "test/input-1.npy"), ("test/output-0.npy",))
    assert TestVectors.from_bytes(v.to_bytes()) == v


# --- validating on a real interpreter ---------------------------------------------------------

def _vectors(model: model_builder.BuiltModel, off: float = 0.0, **tolerance) -> TestVectors:
    inputs = model.sample_inputs(seed=1)
    expected = model.reference(inputs)
    outputs = [a + np.asarray(off, a.dtype) for a in expected.values()]
    return TestVectors(tuple(npy(a) for a in inputs.values()), tuple(npy(a) for a in outputs),
                       **tolerance)


def test_validation_passes_on_the_models_own_outputs_and_names_the_one_that_is_off():
    model = model_builder.add_model()
    interpreter = create_interpreter(model.content, 1)
    vectors.validate(interpreter, _vectors(model))
    with pytest.raises(AgentError) as info:
        vectors.validate(interpreter, _vectors(model, off=0.25))
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert "validation failed: output 'sum'" in info.value.message
    assert "by up to 0.25" in info.value.message


def test_validation_of_a_dynamic_model_resizes_and_restores_when_asked():
    model = model_builder.dynamic_batch_model()
    interpreter = create_interpreter(model.content, 1)
    shape = list(interpreter.get_input_details()[0]["shape"])
    batch = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = model.reference({"x": batch})["y"]
    v = TestVectors((npy(batch),), (npy(expected),))
    vectors.validate(interpreter, v, restore=True)
    assert list(interpreter.get_input_details()[0]["shape"]) == shape
    vectors.validate(interpreter, v)
    assert list(interpreter.get_input_details()[0]["shape"]) == [3, 4]


def test_vectors_that_do_not_match_the_model_are_refused_with_the_reason():
    model = model_builder.add_model()
    interpreter = create_interpreter(model.content, 1)
    with pytest.raises(AgentError, match="2 test input"):
        vectors.validate(interpreter, TestVectors((npy(np.zeros((1, 4), np.float32)),) * 2, ()))
    with pytest.raises(AgentError, match="validation: test input '0' is not a valid .npy"):
        vectors.validate(interpreter, TestVectors((b"junk", b"junk"), (b"junk",)))


def test_64_bit_integers_are_compared_exactly_where_floats_could_not_tell_them_apart():
    big = np.array([2**62, -(2**62)], np.int64)
    problem = mismatch("n", big, big + np.array([1, 0], np.int64), None, None)
    assert problem is not None and "by up to 1 " in problem and str(2**62 + 1) in problem
    top = np.array([2**64 - 1], np.uint64)
    assert "by up to 1 " in mismatch("n", top, top - np.uint64(1), None, None)
    assert mismatch("n", top, top - np.uint64(1), 1, None) is None
    flags = np.array([True, False])
    assert "by up to 1 " in mismatch("b", flags, ~flags, None, None)


_VALID = npy(np.arange(6, dtype=np.float32).reshape(2, 3))


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda at, value: _VALID[:at] + bytes([value]) + _VALID[at + 1:],
              st.integers(0, len(_VALID) - 1), st.integers(0, 255)),
    st.builds(lambda cut: _VALID[:cut], st.integers(0, len(_VALID)))))
def test_hostile_npy_bytes_give_an_array_or_a_vector_error_only(data):
    try:
        array = read_npy(data, "x")
    except VectorError:
        return
    assert array.nbytes <= len(data) and not array.dtype.hasobject
