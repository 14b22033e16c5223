"""Between the wire's DataType/TensorMetadata and NumPy dtypes and shapes."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edge_agent import agent_pb2 as pb

# Every TFLite tensor type that has a fixed-size NumPy equivalent. STRING, RESOURCE, VARIANT
# and INT4 have none; models with such inputs or outputs are refused at load.
_DTYPE_BY_DATATYPE: dict[int, np.dtype] = {
    pb.UINT8: np.dtype(np.uint8),
    pb.INT16: np.dtype(np.int16),
    pb.INT32: np.dtype(np.int32),
    pb.INT64: np.dtype(np.int64),
    pb.FLOAT16: np.dtype(np.float16),
    pb.FLOAT32: np.dtype(np.float32),
    pb.FLOAT64: np.dtype(np.float64),
    pb.INT8: np.dtype(np.int8),
    pb.BOOL: np.dtype(np.bool_),
    pb.UINT16: np.dtype(np.uint16),
    pb.UINT32: np.dtype(np.uint32),
    pb.UINT64: np.dtype(np.uint64),
    pb.COMPLEX64: np.dtype(np.complex64),
    pb.COMPLEX128: np.dtype(np.complex128),
}
_DATATYPE_BY_DTYPE: dict[np.dtype, int] = {v: k for k, v in _DTYPE_BY_DATATYPE.items()}


def dtype_of(data_type: int) -> np.dtype | None:
    """The NumPy dtype of a wire DataType, None for a value this agent does not know."""
    return _DTYPE_BY_DATATYPE.get(data_type)


def data_type_of(dtype: np.dtype | type) -> int | None:
    """The wire DataType of a NumPy dtype, None where the wire has none."""
    return _DATATYPE_BY_DTYPE.get(np.dtype(dtype))


def data_type_name(data_type: int) -> str:
    try:
        return pb.DataType.Name(data_type)
    except ValueError:
        return f"DataType({data_type})"


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def byte_length(dtype: np.dtype, shape: Sequence[int]) -> int:
    return dtype.itemsize * math.prod(shape)


def metadata(name: str, dtype: np.dtype, shape: Sequence[int]) -> pb.TensorMetadata:
    return pb.TensorMetadata(name=name.encode(), data_type=_DATATYPE_BY_DTYPE[dtype], shape=shape)


def add_array(tensors, name: str, array: np.ndarray) -> pb.Tensor:
    """Append a byte_data Tensor holding `array` (C order) with full metadata to `tensors`."""
    data_type = _DATATYPE_BY_DTYPE.get(array.dtype)
    if data_type is None:
        raise TypeError(f"tensor {name!r}: dtype {array.dtype} has no wire DataType")
    tensor = tensors.add(byte_data=array.tobytes())
    md = tensor.tensor_metadata
    md.name = name.encode()
    md.data_type = data_type
    md.shape.extend(array.shape)
    return tensor


def tensor_to_array(tensor: pb.Tensor) -> tuple[str, np.ndarray]:
    """(name, array) of a byte_data Tensor with metadata, as a reply carries it."""
    md = tensor.tensor_metadata
    dtype = dtype_of(md.data_type)
    if dtype is None:
        raise ValueError(f"tensor {md.name!r}: unknown data type {md.data_type}")
    name = md.name.decode("utf-8", "replace")
    return name, np.frombuffer(tensor.byte_data, dtype=dtype).reshape(tuple(md.shape))
