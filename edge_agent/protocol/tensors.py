"""Between the wire's Tensor and NumPy: dtypes, shapes, and the one place a wire tensor
(inline byte_data or a shared-memory handle) becomes a checked array."""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.errors import invalid_argument

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
# Read-only views of the two maps, for the Predict codec's array calls (the client's path).
DTYPE_BY_DATATYPE: Mapping[int, np.dtype] = MappingProxyType(_DTYPE_BY_DATATYPE)
DATATYPE_BY_DTYPE: Mapping[np.dtype, int] = MappingProxyType(_DATATYPE_BY_DTYPE)


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


# --- wire tensors: one shape for whichever decoder read them --------------------------------
#
# A Tensor off the wire, decoded either by upb (wire_tensor() of a pb.Tensor) or straight from
# the frame by the Predict codec (edge_agent.protocol.predict_codec), is a WireTensor; the engine, the
# capture checks and the client take only this, so a tensor is checked in one way whatever
# decoded it.

NO_DATA, BYTE_DATA, SHARED_MEMORY = 0, 1, 2  # WireTensor.kind: which of the oneof `data`


class Handle(NamedTuple):
    """A SharedMemoryHandle's fields; fd_index None when the field is absent (descriptor 0
    is a valid index, so absence is not 0)."""
    size: int = 0
    offset: int = 0
    segment_id: int = 0
    posix_name: str = ""
    fd_index: int | None = None


class WireTensor(NamedTuple):
    """A Tensor's fields. Without tensor_metadata (has_metadata False) name, data_type and
    shape read as their empty defaults, as protobuf reads an unset message."""
    name: bytes
    has_metadata: bool
    data_type: int
    shape: list
    kind: int     # NO_DATA, BYTE_DATA or SHARED_MEMORY
    data: Any  # a bytes-like for BYTE_DATA, a Handle for SHARED_MEMORY, else None (by kind)


def handle_of(handle) -> Handle:
    """The Handle of a pb.SharedMemoryHandle (a Handle is returned as it is)."""
    if isinstance(handle, Handle):
        return handle
    return Handle(handle.size, handle.offset, handle.segment_id, handle.posix_name,
                  handle.fd_index if handle.HasField("fd_index") else None)


def wire_tensor(tensor: pb.Tensor) -> WireTensor:
    """The WireTensor of a pb.Tensor."""
    md = tensor.tensor_metadata
    which = tensor.WhichOneof("data")
    if which == "byte_data":
        kind, data = BYTE_DATA, tensor.byte_data
    elif which == "shared_memory_handle":
        kind, data = SHARED_MEMORY, handle_of(tensor.shared_memory_handle)
    else:
        kind, data = NO_DATA, None
    return WireTensor(md.name, tensor.HasField("tensor_metadata"), md.data_type,
                      list(md.shape), kind, data)


def pb_handle(handle: Handle) -> pb.SharedMemoryHandle:
    message = pb.SharedMemoryHandle(size=handle.size, offset=handle.offset,
                                    segment_id=handle.segment_id, posix_name=handle.posix_name)
    if handle.fd_index is not None:
        message.fd_index = handle.fd_index
    return message


def add_tensor(tensors, name: bytes, data_type: int, shape: Sequence[int], data) -> pb.Tensor:
    """Append a Tensor with full metadata to a repeated Tensor field: `data` is its bytes
    (any C-contiguous buffer) or the Handle of the shared memory that holds them."""
    if isinstance(data, Handle):
        tensor = tensors.add()
        tensor.shared_memory_handle.CopyFrom(pb_handle(data))
    else:
        tensor = tensors.add(byte_data=data if isinstance(data, bytes) else bytes(data))
    md = tensor.tensor_metadata
    md.name = name
    md.data_type = data_type
    md.shape.extend(shape)
    return tensor


def describe(data_type: int, shape: Sequence[int], nbytes: int) -> str:
    return f"{data_type_name(data_type)} {format_shape(shape)} ({nbytes} bytes)"


def tensor_data(tensor: WireTensor, nbytes: int, what: str, reader):
    """The bytes `tensor` carries: its byte_data, or `reader(handle, nbytes, what)` for a
    shared-memory handle (the reader checks the handle's size against nbytes and its bounds
    against the segment, once: shm.ShmCall.read). INVALID_ARGUMENT naming `what` (the
    tensor as the caller's messages name it, e.g. "input 'x'") when it carries none."""
    kind = tensor.kind
    if kind == BYTE_DATA:
        return tensor.data
    if kind == SHARED_MEMORY:
        return reader(tensor.data, nbytes, what)
    raise invalid_argument(f"{what} carries no data (neither byte_data nor "
                           "shared_memory_handle is set)")


def check_length(data, what: str, data_type: int, shape: Sequence[int], nbytes: int) -> None:
    """INVALID_ARGUMENT unless `data` is nbytes long (nbytes = byte_length(dtype, shape))."""
    if len(data) != nbytes:
        raise invalid_argument(
            f"{what}: expected {describe(data_type, shape, nbytes)}, got {len(data)} bytes")


def checked_array(data, what: str, data_type: int, dtype: np.dtype, shape: Sequence[int],
                  nbytes: int) -> np.ndarray:
    """`data` as an array of `dtype` and `shape`, or INVALID_ARGUMENT when its length is not
    nbytes or NumPy cannot make that shape (more dimensions than NumPy allows; a size that
    overflows, as [0, 2**31-1, 2**31-1, 2**31-1] does though it holds no byte)."""
    check_length(data, what, data_type, shape, nbytes)
    try:
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError as e:
        raise invalid_argument(f"{what}: shape {format_shape(shape)} cannot be an array: {e}") \
            from None


def reply_array(tensor: WireTensor) -> tuple[str, np.ndarray]:
    """(name, array) of a byte_data Tensor with metadata, as a reply carries it; the array is
    a view of the tensor's bytes (read-only when they are)."""
    dtype = dtype_of(tensor.data_type)
    if dtype is None:
        raise ValueError(f"tensor {tensor.name!r}: unknown data type {tensor.data_type}")
    name = tensor.name.decode("utf-8", "replace")
    return name, np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))
