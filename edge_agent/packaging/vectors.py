"""Test vectors of a package: inputs the model runs on before it is served, and the outputs it
must give, within a tolerance.

A package of format `edge-agent-package/2` carries one .npy file per model input and per model
output (signed and hashed like its other files) and the tolerance. This module reads those
files safely (no pickles, the header's size checked against the bytes, the dtype and shape
checked against the model's own inputs and outputs), carries them to the model check's child
process, and compares: integer outputs exactly unless a tolerance is given, floating-point
ones as numpy.allclose does, |actual - expected| <= atol + rtol * |expected|, with
DEFAULT_FLOAT_ATOL and DEFAULT_FLOAT_RTOL where the package gives none. docs/PACKAGES.md,
"Test vectors", is the reference.
"""
from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_agent.errors import failed_precondition

DEFAULT_FLOAT_ATOL = 1e-5
DEFAULT_FLOAT_RTOL = 1e-5
# The test vector files of one package together; they are read into the agent's memory.
MAX_VECTOR_BYTES = 16 * 1024 * 1024
VECTOR_SUFFIX = ".npy"

# TFLite type names (as the manifest's inputs and outputs carry them) and their NumPy dtypes;
# other types (STRING, RESOURCE, ...) cannot be given as test vectors.
TYPE_DTYPES = {
    "FLOAT16": "float16", "FLOAT32": "float32", "FLOAT64": "float64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "BOOL": "bool", "COMPLEX64": "complex64", "COMPLEX128": "complex128",
}


class VectorError(ValueError):
    """A test vector that cannot be read or does not fit the model."""


def read_npy(data: bytes, what: str) -> np.ndarray:
    """The array in the .npy bytes `data`; VectorError saying what is wrong. No pickles
    (object arrays are refused), no structured dtypes, and the data must be exactly what the
    header declares: a header claiming more than the file holds is refused before any array
    is made."""
    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():  # NumPy warns of headers it repairs (Python 2's)
            warnings.simplefilter("ignore")
            major, _ = np.lib.format.read_magic(stream)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except Exception as e:  # hostile headers fail deep in NumPy in many ways
        # (its header repair tokenizes them as Python: SyntaxError, TokenError, ...)
        raise VectorError(f"{what} is not a valid .npy file: "
                          f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise VectorError(f"{what} holds {dtype} elements; a test vector holds plain numbers")
    declared = math.prod(shape) * dtype.itemsize
    held = len(data) - stream.tell()
    if declared != held:
        raise VectorError(f"{what}: its header declares {declared} bytes of data "
                          f"({dtype}, shape {tuple(shape)}), the file holds {held}")
    stream.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = np.load(stream, allow_pickle=False)
    except Exception as e:  # as above
        raise VectorError(f"{what} is not a valid .npy file: "
                          f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array) if fortran else array


def check_fits(array: np.ndarray, role: str, name: str, type_name: str,
               shape: Sequence[int], what: str) -> None:
    """VectorError unless `array` has the dtype and shape of the model's `role` ('input' or
    'output') `name`, of TFLite type `type_name` and `shape` (-1: any size)."""
    dtype = TYPE_DTYPES.get(type_name)
    if dtype is None:
        raise VectorError(f"{what}: the model's {role} '{name}' is of type {type_name}, "
                          "which test vectors cannot hold")
    if array.dtype != np.dtype(dtype):
        raise VectorError(f"{what} holds {array.dtype}, but the model's {role} '{name}' is "
                          f"{type_name} ({dtype})")
    fits = len(array.shape) == len(shape) and all(
        want < 0 or want == got for want, got in zip(shape, array.shape))
    if not fits:
        wanted = "[" + ", ".join("any" if d < 0 else str(d) for d in shape) + "]"
        raise VectorError(f"{what} has shape {list(array.shape)}, but the model's {role} "
                          f"'{name}' has shape {wanted}")


def tolerance(dtype: np.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """The (atol, rtol) an output of `dtype` is compared with: what the package gives, else
    the float defaults for inexact types and 0 (exact) for integers and booleans."""
    inexact = np.issubdtype(dtype, np.inexact)
    return (atol if atol is not None else DEFAULT_FLOAT_ATOL if inexact else 0.0,
            rtol if rtol is not None else DEFAULT_FLOAT_RTOL if inexact else 0.0)


def _shown(value) -> str:
    """A number for a message: integers in full, others to 7 significant digits."""
    value = value.item() if hasattr(value, "item") else value
    return str(value) if isinstance(value, int) else f"{value:.7g}"


def mismatch(name: str, expected: np.ndarray, actual: np.ndarray,
             atol: float | None, rtol: float | None) -> str | None:
    """Why output `name`'s `actual` value is not the `expected` one, or None when it is."""
    if actual.shape != expected.shape:
        return (f"output '{name}' has shape {list(actual.shape)}, the package's expected "
                f"output has {list(expected.shape)}")
    a, r = tolerance(expected.dtype, atol, rtol)
    if expected.dtype.kind in "biu":
        # Exact integers, without wrap-around (uint8 10 - 250 is 240 off, not 16); 64-bit
        # ones as Python integers, which float64 could not tell apart near 2**63.
        wide = object if expected.dtype.itemsize >= 8 else np.int64
        difference = np.abs(actual.astype(wide) - expected.astype(wide))
        allowed = a + r * np.abs(expected.astype(np.float64))
        bad = (difference != 0) if a == 0 and r == 0 else (difference > allowed)
        bad = np.asarray(bad, dtype=bool)
    else:
        kind = np.complex128 if expected.dtype.kind == "c" else np.float64
        want, got = expected.astype(kind), actual.astype(kind)
        difference = np.abs(got - want)
        # NaN where NaN is expected is a match; NaN anywhere else is the largest difference.
        both_nan = np.isnan(want) & np.isnan(got)
        difference = np.where(both_nan, 0.0, np.where(np.isnan(difference), np.inf, difference))
        bad = difference > a + r * np.abs(want)
    if not bad.any():
        return None
    ranked = np.where(bad, difference, -1).astype(np.float64)
    worst = np.unravel_index(int(np.argmax(ranked)), difference.shape)
    return (f"output '{name}' differs from the package's expected output by up to "
            f"{_shown(difference[worst])} (at index {list(map(int, worst))}: "
            f"{_shown(actual[worst])} where {_shown(expected[worst])} "
            f"was expected; {int(bad.sum())} of {bad.size} values off), more than "
            f"atol {a:g} + rtol {r:g} x |expected| allows")


@dataclass(frozen=True)
class TestVectors:
    """The verified .npy bytes of a package's test inputs and expected outputs, in the
    model's input and output order, and the tolerance (None: the default for the type)."""
    __test__ = False  # not a pytest class, whatever its name
    inputs: tuple[bytes, ...]
    outputs: tuple[bytes, ...]
    atol: float | None = None
    rtol: float | None = None
    input_files: tuple[str, ...] = ()  # the package's file names, for messages
    output_files: tuple[str, ...] = ()

    def arrays(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The inputs and expected outputs as arrays (VectorError for a bad file)."""
        def read(blobs, files, role):
            return [read_npy(blob, f"test {role} '{files[i] if i < len(files) else i}'")
                    for i, blob in enumerate(blobs)]
        return (read(self.inputs, self.input_files, "input"),
                read(self.outputs, self.output_files, "output"))

    def to_bytes(self) -> bytes:
        """One blob for the model check's child: a JSON line, then the files end to end."""
        header = {"inputs": [len(b) for b in self.inputs],
                  "outputs": [len(b) for b in self.outputs], "atol": self.atol,
                  "rtol": self.rtol, "input_files": list(self.input_files),
                  "output_files": list(self.output_files)}
        return b"".join([json.dumps(header).encode() + b"\n", *self.inputs, *self.outputs])

    @classmethod
    def from_bytes(cls, data: bytes) -> "TestVectors":
        line, _, rest = data.partition(b"\n")
        header = json.loads(line)
        blobs, at = [], 0
        for size in [*header["inputs"], *header["outputs"]]:
            blobs.append(rest[at:at + int(size)])
            at += int(size)
        count = len(header["inputs"])
        return cls(tuple(blobs[:count]), tuple(blobs[count:]), header["atol"], header["rtol"],
                   tuple(header["input_files"]), tuple(header["output_files"]))


def validate(interpreter, vectors: TestVectors, restore: bool = False) -> None:
    """Run `interpreter` (allocated) on the test inputs and compare its outputs with the
    expected ones; FAILED_PRECONDITION naming the output and the largest difference, or the
    file that does not fit. Dynamic inputs are resized to the vectors' shapes; `restore`:
    resize them back afterwards (an interpreter that will be served keeps its shapes)."""
    try:
        inputs, expected = vectors.arrays()
    except VectorError as e:
        raise failed_precondition(f"validation: {e}") from None
    details = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(inputs) != len(details) or len(expected) != len(outputs):
        raise failed_precondition(
            f"validation: the package has {len(inputs)} test input(s) and {len(expected)} "
            f"expected output(s); the model has {len(details)} input(s) and {len(outputs)} "
            "output(s)")
    original = [tuple(int(d) for d in detail["shape"]) for detail in details]
    resized = False
    try:
        for detail, array, shape in zip(details, inputs, original):
            if array.shape != shape:
                interpreter.resize_tensor_input(detail["index"], list(array.shape))
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for detail, array in zip(interpreter.get_input_details(), inputs):
            interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()
        problems = [mismatch(detail["name"], want, interpreter.get_tensor(detail["index"]),
                             vectors.atol, vectors.rtol)
                    for detail, want in zip(interpreter.get_output_details(), expected)]
    except (ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise failed_precondition(
            f"validation: the runtime could not run the model on the package's test inputs: "
            f"{first}") from None
    finally:
        if resized and restore:
            for detail, shape in zip(details, original):
                interpreter.resize_tensor_input(detail["index"], list(shape))
            interpreter.allocate_tensors()
    failures = [p for p in problems if p is not None]
    if failures:
        raise failed_precondition("validation failed: " + "; ".join(failures))
