"""Build small, real ``.tflite`` models in memory, each with a NumPy reference.

The agent's tests, benchmark and demo need TensorFlow Lite models without
depending on TensorFlow (far too heavy for the boards the agent runs on) and
without shipping opaque binary fixtures.  This module writes the TFLite
flatbuffer schema directly with ``flatbuffers`` and the schema bindings of the
``tflite`` package, so every model is a few reviewable lines of Python and
comes with a NumPy implementation of what it computes, against which any
runtime's outputs can be checked.

Only ``numpy``, ``flatbuffers`` and ``tflite`` are imported: building a model
must not need an interpreter.
"""
from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import flatbuffers
import numpy as np
import tflite
from numpy.typing import DTypeLike
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.TensorType import TensorType

__all__ = [
    "IDENTITY_DTYPES",
    "BuiltModel",
    "BuiltTensor",
    "add_model",
    "custom_op_model",
    "demo_model",
    "dynamic_batch_model",
    "fully_connected_model",
    "image_model",
    "multi_output_model",
    "quantized_add_model",
    "reshape_model",
    "slow_model",
    "tiny_model",
]

Arrays = dict[str, np.ndarray]
Reference = Callable[[Mapping[str, np.ndarray]], Arrays]
Quantization = tuple[float, int]  # (scale, zero_point), as in the interpreter's tensor details

_SCHEMA_VERSION = 3
_FILE_IDENTIFIER = b"TFL3"
# Constant data is 16-byte aligned so kernels and delegates (XNNPACK) can use it
# in place with vector loads, whatever its element type.
_BUFFER_ALIGNMENT = 16

_TENSOR_TYPES: dict[np.dtype, int] = {
    np.dtype(np.float32): TensorType.FLOAT32,
    np.dtype(np.float16): TensorType.FLOAT16,
    np.dtype(np.float64): TensorType.FLOAT64,
    np.dtype(np.int8): TensorType.INT8,
    np.dtype(np.int16): TensorType.INT16,
    np.dtype(np.int32): TensorType.INT32,
    np.dtype(np.int64): TensorType.INT64,
    np.dtype(np.uint8): TensorType.UINT8,
    np.dtype(np.uint16): TensorType.UINT16,
    np.dtype(np.uint32): TensorType.UINT32,
    np.dtype(np.uint64): TensorType.UINT64,
    np.dtype(np.bool_): TensorType.BOOL,
    np.dtype(np.complex64): TensorType.COMPLEX64,
    np.dtype(np.complex128): TensorType.COMPLEX128,
}

#: Dtypes :func:`reshape_model` accepts: every one runs in tflite-runtime 2.14.
#: uint16 is left out although the schema has it: that runtime's Python
#: ``set_tensor`` cannot map a uint16 array to a TFLite type ("Got value of
#: type NOTYPE but expected type UINT16"), so such a model cannot be fed.
IDENTITY_DTYPES: tuple[np.dtype, ...] = tuple(
    dtype for dtype in _TENSOR_TYPES if dtype != np.dtype(np.uint16)
)


@dataclass(frozen=True)
class BuiltTensor:
    """Name, dtype and shape of a built model's input or output (what the builder wrote;
    engine.TensorSpec is what the agent reads back from a loaded interpreter).

    ``shape`` is the shape signature: ``-1`` marks a dimension the interpreter
    lets callers resize.  ``quantization`` is set on quantized tensors only,
    with the scale rounded to float32 as the model stores it.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    quantization: Quantization | None = None

    def __post_init__(self) -> None:
        # Accept np.float32 & co. and lists, but always expose np.dtype and a tuple.
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.quantization is not None:
            object.__setattr__(self, "quantization", _as_stored(self.quantization))

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic (-1) dimension replaced by ``batch``."""
        return tuple(batch if d == -1 else d for d in self.shape)


def _as_stored(quantization: Quantization) -> Quantization:
    """``(scale, zero_point)`` as the flatbuffer holds them: the scale is a float32."""
    scale, zero_point = quantization
    return float(np.float32(scale)), int(zero_point)


@dataclass(frozen=True)
class BuiltModel:
    """A ``.tflite`` flatbuffer plus what is needed to drive and check it."""

    name: str
    content: bytes
    inputs: tuple[BuiltTensor, ...]
    outputs: tuple[BuiltTensor, ...]
    reference: Reference = field(repr=False, compare=False)

    def write(self, path: str | os.PathLike[str]) -> pathlib.Path:
        """Write the flatbuffer to ``path`` (its directory must exist); return the path."""
        target = pathlib.Path(path)
        target.write_bytes(self.content)
        return target

    def sample_inputs(self, seed: int = 0, batch: int = 1) -> Arrays:
        """Random valid inputs by name; dynamic dimensions become ``batch``."""
        rng = np.random.default_rng(seed)
        return {
            spec.name: _random_array(rng, spec.dtype, spec.concrete_shape(batch))
            for spec in self.inputs
        }


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Integers over the dtype's whole range; floats (and complex parts) standard normal."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------
# Graph description and the one flatbuffer writer
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    """A builtin-options table: its union tag and a function writing it."""

    kind: int
    write: Callable[[flatbuffers.Builder], int]


def _options(kind: int, start: Callable, end: Callable, *fields: tuple[Callable, object]) -> _Options:
    def write(builder: flatbuffers.Builder) -> int:
        start(builder)
        for add_field, value in fields:
            add_field(builder, value)
        return end(builder)

    return _Options(kind, write)


# The options table written for each builtin operator used here.  Empty tables
# keep the schema defaults (no fused activation); SOFTMAX must set beta, whose
# schema default is 0 (a uniform output).
_BUILTIN_OPTIONS: dict[int, _Options] = {
    BuiltinOperator.ADD: _options(
        BuiltinOptions.AddOptions, tflite.AddOptionsStart, tflite.AddOptionsEnd
    ),
    BuiltinOperator.MUL: _options(
        BuiltinOptions.MulOptions, tflite.MulOptionsStart, tflite.MulOptionsEnd
    ),
    BuiltinOperator.NEG: _options(
        BuiltinOptions.NegOptions, tflite.NegOptionsStart, tflite.NegOptionsEnd
    ),
    BuiltinOperator.RESHAPE: _options(
        BuiltinOptions.ReshapeOptions, tflite.ReshapeOptionsStart, tflite.ReshapeOptionsEnd
    ),
    BuiltinOperator.FULLY_CONNECTED: _options(
        BuiltinOptions.FullyConnectedOptions,
        tflite.FullyConnectedOptionsStart,
        tflite.FullyConnectedOptionsEnd,
    ),
    BuiltinOperator.SOFTMAX: _options(
        BuiltinOptions.SoftmaxOptions,
        tflite.SoftmaxOptionsStart,
        tflite.SoftmaxOptionsEnd,
        (tflite.SoftmaxOptionsAddBeta, 1.0),
    ),
}


@dataclass(frozen=True)
class _Tensor:
    spec: BuiltTensor
    data: np.ndarray | None  # contents of a constant tensor, else None


@dataclass(frozen=True)
class _Operator:
    code: int  # a BuiltinOperator value
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    custom_code: str | None = None


class _Graph:
    """A single-subgraph model being described: tensors, operators, inputs, outputs.

    Model functions only describe their graph through this class; the
    flatbuffer layout lives in one place, :meth:`build`.
    """

    def __init__(self) -> None:
        self._tensors: list[_Tensor] = []
        self._operators: list[_Operator] = []
        self._inputs: list[int] = []
        self._outputs: list[int] = []

    def tensor(
        self, name: str, dtype: DTypeLike, shape: Sequence[int], quantization: Quantization | None = None
    ) -> int:
        """Add an intermediate (activation) tensor and return its index."""
        return self._add(_Tensor(BuiltTensor(name, np.dtype(dtype), tuple(shape), quantization), None))

    def input(
        self, name: str, dtype: DTypeLike, shape: Sequence[int], quantization: Quantization | None = None
    ) -> int:
        """Add a model input (inputs keep the order of these calls) and return its index."""
        index = self.tensor(name, dtype, shape, quantization)
        self._inputs.append(index)
        return index

    def output(
        self, name: str, dtype: DTypeLike, shape: Sequence[int], quantization: Quantization | None = None
    ) -> int:
        """Add a model output (outputs keep the order of these calls) and return its index."""
        index = self.tensor(name, dtype, shape, quantization)
        self._outputs.append(index)
        return index

    def constant(self, name: str, data: np.ndarray) -> int:
        """Add a constant tensor holding ``data`` and return its index."""
        data = np.ascontiguousarray(data)
        return self._add(_Tensor(BuiltTensor(name, data.dtype, data.shape), data))

    def op(
        self, code: int, inputs: Sequence[int], outputs: Sequence[int], custom_code: str | None = None
    ) -> None:
        """Add an operator reading and writing the given tensor indices."""
        self._operators.append(_Operator(code, tuple(inputs), tuple(outputs), custom_code))

    def build(self, name: str, description: str, reference: Reference) -> BuiltModel:
        """Serialize the graph and wrap it with its specs and reference."""
        return BuiltModel(
            name=name,
            content=self._serialize(description),
            inputs=tuple(self._tensors[i].spec for i in self._inputs),
            outputs=tuple(self._tensors[i].spec for i in self._outputs),
            reference=reference,
        )

    def _add(self, tensor: _Tensor) -> int:
        self._tensors.append(tensor)
        return len(self._tensors) - 1

    def _serialize(self, description: str) -> bytes:
        # A flatbuffer is written back to front: every child before its parent.
        builder = flatbuffers.Builder(1024)
        # Buffer 0 is the empty sentinel; every non-constant tensor points at it.
        buffers = [_write_buffer(builder, None)]
        tensors = []
        for tensor in self._tensors:
            buffer_index = 0
            if tensor.data is not None:
                buffer_index = len(buffers)
                buffers.append(_write_buffer(builder, tensor.data))
            tensors.append(_write_tensor(builder, tensor.spec, buffer_index))

        opcodes = list(dict.fromkeys((op.code, op.custom_code) for op in self._operators))
        operators = [
            _write_operator(builder, op, opcodes.index((op.code, op.custom_code)))
            for op in self._operators
        ]
        operator_codes = [_write_operator_code(builder, code, custom) for code, custom in opcodes]

        tensors_vector = _offset_vector(builder, tensors)
        inputs_vector = _int32_vector(builder, self._inputs)
        outputs_vector = _int32_vector(builder, self._outputs)
        operators_vector = _offset_vector(builder, operators)
        subgraph_name = builder.CreateString("main")
        tflite.SubGraphStart(builder)
        tflite.SubGraphAddTensors(builder, tensors_vector)
        tflite.SubGraphAddInputs(builder, inputs_vector)
        tflite.SubGraphAddOutputs(builder, outputs_vector)
        tflite.SubGraphAddOperators(builder, operators_vector)
        tflite.SubGraphAddName(builder, subgraph_name)
        subgraph = tflite.SubGraphEnd(builder)

        operator_codes_vector = _offset_vector(builder, operator_codes)
        subgraphs_vector = _offset_vector(builder, [subgraph])
        description_string = builder.CreateString(description)
        buffers_vector = _offset_vector(builder, buffers)
        tflite.ModelStart(builder)
        tflite.ModelAddVersion(builder, _SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(builder, operator_codes_vector)
        tflite.ModelAddSubgraphs(builder, subgraphs_vector)
        tflite.ModelAddDescription(builder, description_string)
        tflite.ModelAddBuffers(builder, buffers_vector)
        builder.Finish(tflite.ModelEnd(builder), file_identifier=_FILE_IDENTIFIER)
        return bytes(builder.Output())


def _offset_vector(builder: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _int32_vector(builder: flatbuffers.Builder, values: Sequence[int]) -> int:
    return builder.CreateNumpyVector(np.asarray(values, dtype=np.int32))


def _write_buffer(builder: flatbuffers.Builder, data: np.ndarray | None) -> int:
    """A Buffer table holding ``data`` little-endian; ``None`` gives an empty buffer."""
    payload = None
    if data is not None:
        raw = np.frombuffer(data.astype(data.dtype.newbyteorder("<")).tobytes(), dtype=np.uint8)
        # CreateNumpyVector only aligns to the element size (1 for bytes): pad
        # first so the data itself starts on a _BUFFER_ALIGNMENT boundary.
        builder.Prep(_BUFFER_ALIGNMENT, raw.size)
        payload = builder.CreateNumpyVector(raw)
    tflite.BufferStart(builder)
    if payload is not None:
        tflite.BufferAddData(builder, payload)
    return tflite.BufferEnd(builder)


def _write_tensor(builder: flatbuffers.Builder, spec: BuiltTensor, buffer_index: int) -> int:
    name = builder.CreateString(spec.name)
    shape = _int32_vector(builder, spec.concrete_shape(batch=1))
    # A signature is only needed (so only written) when a dimension is dynamic.
    signature = _int32_vector(builder, spec.shape) if -1 in spec.shape else None
    quantization = _write_quantization(builder, spec.quantization) if spec.quantization else None
    tflite.TensorStart(builder)
    tflite.TensorAddName(builder, name)
    tflite.TensorAddShape(builder, shape)
    if signature is not None:
        tflite.TensorAddShapeSignature(builder, signature)
    tflite.TensorAddType(builder, _tensor_type(spec.dtype))
    tflite.TensorAddBuffer(builder, buffer_index)
    if quantization is not None:
        tflite.TensorAddQuantization(builder, quantization)
    return tflite.TensorEnd(builder)


def _write_quantization(builder: flatbuffers.Builder, quantization: Quantization) -> int:
    scale, zero_point = quantization
    scales = builder.CreateNumpyVector(np.array([scale], dtype=np.float32))
    zero_points = builder.CreateNumpyVector(np.array([zero_point], dtype=np.int64))
    tflite.QuantizationParametersStart(builder)
    tflite.QuantizationParametersAddScale(builder, scales)
    tflite.QuantizationParametersAddZeroPoint(builder, zero_points)
    return tflite.QuantizationParametersEnd(builder)


def _write_operator(builder: flatbuffers.Builder, op: _Operator, opcode_index: int) -> int:
    inputs = _int32_vector(builder, op.inputs)
    outputs = _int32_vector(builder, op.outputs)
    options = _BUILTIN_OPTIONS.get(op.code)
    options_table = options.write(builder) if options else None
    tflite.OperatorStart(builder)
    tflite.OperatorAddOpcodeIndex(builder, opcode_index)
    tflite.OperatorAddInputs(builder, inputs)
    tflite.OperatorAddOutputs(builder, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(builder, options.kind)
        tflite.OperatorAddBuiltinOptions(builder, options_table)
    return tflite.OperatorEnd(builder)


def _write_operator_code(builder: flatbuffers.Builder, code: int, custom_code: str | None) -> int:
    custom = builder.CreateString(custom_code) if custom_code is not None else None
    # Old readers only know the int8 `deprecated_builtin_code`; codes past its
    # range are stored there as the placeholder value 127.
    deprecated_code = min(code, BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    tflite.OperatorCodeStart(builder)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, deprecated_code)
    tflite.OperatorCodeAddBuiltinCode(builder, code)
    tflite.OperatorCodeAddVersion(builder, 1)
    if custom is not None:
        tflite.OperatorCodeAddCustomCode(builder, custom)
    return tflite.OperatorCodeEnd(builder)


def _tensor_type(dtype: np.dtype) -> int:
    try:
        return _TENSOR_TYPES[dtype]
    except KeyError:
        raise ValueError(f"no TFLite tensor type for dtype {dtype}") from None


def _dense_weights(seed: int, out_features: int, in_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Random weights [out, in] and bias [out], scaled so activations stay about N(0, 1)."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((out_features, in_features)) / math.sqrt(in_features)
    bias = 0.1 * rng.standard_normal(out_features)
    return weights.astype(np.float32), bias.astype(np.float32)


def _dense(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """FULLY_CONNECTED, accumulated in float64 so the reference is the accurate side."""
    return (x.astype(np.float64) @ weights.T.astype(np.float64) + bias).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def add_model(shape: Sequence[int] = (1, 4)) -> BuiltModel:
    """``sum = a + b`` in float32: the simplest model with two inputs."""
    g = _Graph()
    a = g.input("a", np.float32, shape)
    b = g.input("b", np.float32, shape)
    g.op(BuiltinOperator.ADD, [a, b], [g.output("sum", np.float32, shape)])
    return g.build("add", "sum = a + b", lambda i: {"sum": i["a"] + i["b"]})


def fully_connected_model(in_features: int = 16, out_features: int = 8, seed: int = 0) -> BuiltModel:
    """``y = x @ W.T + b`` with constant random weights; compare with a float32 tolerance."""
    weights, bias = _dense_weights(seed, out_features, in_features)
    g = _Graph()
    x = g.input("x", np.float32, (1, in_features))
    y = g.output("y", np.float32, (1, out_features))
    g.op(BuiltinOperator.FULLY_CONNECTED, [x, g.constant("weights", weights), g.constant("bias", bias)], [y])
    return g.build("fully_connected", "y = x @ W.T + b", lambda i: {"y": _dense(i["x"], weights, bias)})


# (scale, zero point for uint8) of each tensor of the quantized ADD.  Distinct
# scales make the kernel really requantize rather than add raw integers.
_QUANTIZED_ADD_PARAMS: dict[str, Quantization] = {"a": (0.05, 128), "b": (0.1, 100), "sum": (0.125, 110)}


def quantized_add_model(dtype: DTypeLike = np.uint8) -> BuiltModel:
    """``sum = a + b`` on uint8- or int8-quantized [1, 8] tensors, each with its own scale.

    Both dtypes represent the same real values (int8 zero points are the uint8
    ones minus 128).  The reference replays TFLite's integer ADD arithmetic
    (inputs rescaled to a shared fixed-point scale, added, requantized with
    gemmlowp rounding, clamped), so interpreter outputs match it *exactly*; this
    holds for the default (XNNPACK), optimized and reference kernels of
    tflite-runtime 2.14.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise ValueError(f"quantized ADD is built for uint8 or int8, not {dtype}")
    offset = 0 if dtype == np.uint8 else -128
    params = {
        name: _as_stored((scale, zero_point + offset))
        for name, (scale, zero_point) in _QUANTIZED_ADD_PARAMS.items()
    }
    g = _Graph()
    a = g.input("a", dtype, (1, 8), params["a"])
    b = g.input("b", dtype, (1, 8), params["b"])
    g.op(BuiltinOperator.ADD, [a, b], [g.output("sum", dtype, (1, 8), params["sum"])])
    return g.build(
        f"quantized_add_{dtype.name}",
        f"sum = a + b on {dtype.name}-quantized tensors",
        lambda i: {"sum": _quantized_add(i["a"], i["b"], params["a"], params["b"], params["sum"])},
    )


def _quantized_add(
    a: np.ndarray, b: np.ndarray, a_params: Quantization, b_params: Quantization, out_params: Quantization
) -> np.ndarray:
    """TFLite's 8-bit quantized ADD step for step (tensorflow/lite/kernels/add.cc).

    Parameters must be as stored (float32 scales): the kernel derives its
    fixed-point multipliers from those values.
    """
    (a_scale, a_zero), (b_scale, b_zero), (out_scale, out_zero) = a_params, b_params, out_params
    left_shift = 20  # headroom the kernel gives 8-bit inputs before rescaling
    twice_max_scale = 2 * max(a_scale, b_scale)
    a_multiplier = _quantize_multiplier(a_scale / twice_max_scale)
    b_multiplier = _quantize_multiplier(b_scale / twice_max_scale)
    out_multiplier = _quantize_multiplier(twice_max_scale / ((1 << left_shift) * out_scale))
    scaled_a = _multiply_by_quantized_multiplier((a.astype(np.int64) - a_zero) << left_shift, *a_multiplier)
    scaled_b = _multiply_by_quantized_multiplier((b.astype(np.int64) - b_zero) << left_shift, *b_multiplier)
    raw = _multiply_by_quantized_multiplier(scaled_a + scaled_b, *out_multiplier) + out_zero
    info = np.iinfo(a.dtype)
    return np.clip(raw, info.min, info.max).astype(a.dtype)


def _quantize_multiplier(real: float) -> tuple[int, int]:
    """``real`` (< 1) as a Q31 fixed-point multiplier and a power-of-two exponent."""
    fraction, exponent = math.frexp(real)
    fixed = math.floor(fraction * (1 << 31) + 0.5)  # std::round: halves away from zero
    if fixed == 1 << 31:
        fixed, exponent = fixed // 2, exponent + 1
    return fixed, exponent


def _multiply_by_quantized_multiplier(x: np.ndarray, multiplier: int, exponent: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT(-exponent)."""
    product = x.astype(np.int64) * multiplier
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(nudged) * (np.abs(nudged) >> 31)  # C++ division truncates towards zero
    shift = -exponent
    mask = (1 << shift) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> shift) + ((high & mask) > threshold)


def multi_output_model() -> BuiltModel:
    """One input and three named outputs, to exercise output naming and ordering."""
    g = _Graph()
    x = g.input("x", np.float32, (1, 4))
    g.op(BuiltinOperator.ADD, [x, x], [g.output("doubled", np.float32, (1, 4))])
    g.op(BuiltinOperator.MUL, [x, x], [g.output("squared", np.float32, (1, 4))])
    g.op(BuiltinOperator.NEG, [x], [g.output("negated", np.float32, (1, 4))])
    return g.build(
        "multi_output",
        "doubled = x + x, squared = x * x, negated = -x",
        lambda i: {"doubled": i["x"] + i["x"], "squared": i["x"] * i["x"], "negated": -i["x"]},
    )


def dynamic_batch_model(features: int = 4) -> BuiltModel:
    """``y = x * [1, 2, ..., features]`` with a resizable batch (signature ``[-1, features]``)."""
    scale = np.arange(1, features + 1, dtype=np.float32)
    g = _Graph()
    x = g.input("x", np.float32, (-1, features))
    g.op(BuiltinOperator.MUL, [x, g.constant("scale", scale)], [g.output("y", np.float32, (-1, features))])
    return g.build("dynamic_batch", "y = x * [1, 2, ...] for any batch size", lambda i: {"y": i["x"] * scale})


def reshape_model(dtype: DTypeLike) -> BuiltModel:
    """An identity-like model for one dtype: ``y = reshape(x, [3, 2])`` with ``x`` [2, 3].

    RESHAPE only moves bytes, so ``y`` must equal the reshaped input exactly:
    this checks that a runtime wrapper passes each element type through
    faithfully.  Supported (:data:`IDENTITY_DTYPES`): uint8, uint32, uint64,
    int8, int16, int32, int64, float16, float32, float64, bool, complex64 and
    complex128, all verified in tflite-runtime 2.14.  Any other dtype (uint16
    included, see :data:`IDENTITY_DTYPES`) raises ``ValueError``.
    """
    dtype = np.dtype(dtype)
    if dtype not in IDENTITY_DTYPES:
        supported = ", ".join(d.name for d in IDENTITY_DTYPES)
        raise ValueError(f"reshape_model supports {supported}; not {dtype}")
    g = _Graph()
    x = g.input("x", dtype, (2, 3))
    new_shape = g.constant("new_shape", np.array([3, 2], dtype=np.int32))
    g.op(BuiltinOperator.RESHAPE, [x, new_shape], [g.output("y", dtype, (3, 2))])
    return g.build(
        f"reshape_{dtype.name}",
        f"y = reshape(x, [3, 2]) on {dtype.name}",
        lambda i: {"y": i["x"].reshape(3, 2)},
    )


def custom_op_model(custom_code: str = "EdgeAgentMissingOp") -> BuiltModel:
    """``y = custom_code(x)`` with a CUSTOM operator no runtime implements.

    For checking how unloadable models are reported: tflite-runtime 2.14
    constructs the ``Interpreter`` fine and fails in ``allocate_tensors()`` with
    a RuntimeError starting "Encountered unresolved custom op: <custom_code>.".
    The reference is what the op would compute if it existed: the identity.
    """
    g = _Graph()
    x = g.input("x", np.float32, (1, 4))
    g.op(BuiltinOperator.CUSTOM, [x], [g.output("y", np.float32, (1, 4))], custom_code=custom_code)
    description = f"y = {custom_code}(x), an unresolvable custom op"
    return g.build("custom_op", description, lambda i: {"y": i["x"].copy()})


# ImageNet channel means (RGB, 0-255 scale): image_model is mean subtraction.
_IMAGENET_MEAN = np.array([123.68, 116.78, 103.94], dtype=np.float32)


def image_model(shape: Sequence[int] = (1, 224, 224, 3)) -> BuiltModel:
    """``out = image - channel_mean``: trivial compute on an image-sized tensor.

    At the default shape the input is 602112 bytes, which is what benchmarks of
    tensor transfer (rather than of compute) need.
    """
    offset = -_IMAGENET_MEAN
    g = _Graph()
    image = g.input("image", np.float32, shape)
    g.op(BuiltinOperator.ADD, [image, g.constant("neg_mean", offset)], [g.output("out", np.float32, shape)])
    return g.build("image", "out = image - ImageNet channel mean", lambda i: {"out": i["image"] + offset})


def slow_model(width: int = 1024, layers: int = 8, seed: int = 0, batch: int = 1) -> BuiltModel:
    """``layers`` chained FULLY_CONNECTED layers with constant ``width`` x ``width`` weights.

    Each invoke reads every weight once (32 MiB at the defaults): about 2 ms on
    one x86_64 server core, far more on a small board. With a small ``width`` and a
    large ``batch`` the weights stay in cache and the work is compute-bound, which is
    what shows two models' predictions overlapping on two cores.
    """
    params = [_dense_weights(seed + layer, width, width) for layer in range(layers)]
    g = _Graph()
    current = g.input("x", np.float32, (batch, width))
    for layer, (weights, bias) in enumerate(params):
        if layer == layers - 1:
            out = g.output("y", np.float32, (batch, width))
        else:
            out = g.tensor(f"hidden_{layer}", np.float32, (batch, width))
        w, b = g.constant(f"weights_{layer}", weights), g.constant(f"bias_{layer}", bias)
        g.op(BuiltinOperator.FULLY_CONNECTED, [current, w, b], [out])
        current = out

    def reference(inputs: Mapping[str, np.ndarray]) -> Arrays:
        y = inputs["x"]
        for weights, bias in params:
            y = _dense(y, weights, bias)
        return {"y": y}

    return g.build("slow", f"{layers} chained {width}x{width} fully-connected layers", reference)


def input_sink_model(length: int) -> BuiltModel:
    """A [1, ``length``] float32 input that no operator reads, and ``y = -1`` [1, 1].

    For measuring how a tensor reaches the interpreter (set_tensor is the only thing that
    touches it): invoke costs next to nothing whatever ``length`` is, and the reply is tiny.
    """
    g = _Graph()
    g.input("x", np.float32, (1, length))
    g.op(BuiltinOperator.NEG, [g.constant("one", np.ones((1, 1), np.float32))],
         [g.output("y", np.float32, (1, 1))])
    return g.build("input_sink", f"x [1, {length}] is only set; y = -1",
                   lambda i: {"y": -np.ones((1, 1), np.float32)})


def offset_model(offset: float, shape: Sequence[int] = (1, 4)) -> BuiltModel:
    """``y = x + offset`` in float32: versions of one model that answer differently (the
    offset tells which version answered) with the same inputs and outputs."""
    constant = np.full(tuple(shape), offset, np.float32)
    g = _Graph()
    x = g.input("x", np.float32, shape)
    g.op(BuiltinOperator.ADD, [x, g.constant("offset", constant)], [g.output("y", np.float32, shape)])
    return g.build("offset", f"y = x + {offset}", lambda i: {"y": i["x"] + constant})


def tiny_model() -> BuiltModel:
    """The cheapest useful model (a [1, 4] ADD), for measuring per-request overhead."""
    return replace(add_model((1, 4)), name="tiny")


_DEMO_SEED = 8  # fixes the demo classifier's weights


def demo_model() -> BuiltModel:
    """The classifier ``edge-agent demo`` serves: ``scores = softmax(features @ W.T + b)``, 8 -> 3."""
    weights, bias = _dense_weights(_DEMO_SEED, 3, 8)
    g = _Graph()
    features = g.input("features", np.float32, (1, 8))
    logits = g.tensor("logits", np.float32, (1, 3))
    dense_inputs = [features, g.constant("weights", weights), g.constant("bias", bias)]
    g.op(BuiltinOperator.FULLY_CONNECTED, dense_inputs, [logits])
    g.op(BuiltinOperator.SOFTMAX, [logits], [g.output("scores", np.float32, (1, 3))])
    return g.build(
        "demo",
        "3-class softmax classifier over 8 features",
        lambda i: {"scores": _softmax(_dense(i["features"], weights, bias))},
    )
