"""The Predict codec in pure Python: the twin of cext/_predict.pyx, line for line (with
plain_inputs, the service's match of decoded inputs to a model's in the common case, and the
client's array calls, encode_arrays_request and decode_arrays_response).

PredictRequest and PredictResponse are small, fixed messages: their protocol buffer encoding
is a few varints and length-delimited fields. This reads them straight from the frame body and
writes them straight into the reply, without protobuf objects. Anything it does not read the
way upb would (unknown fields, a message field given twice, which upb merges; a oneof set
twice; groups, fixed-width fields; a value out of its field's range; bytes that are not a
message) makes decode_* return None: the caller then hands the body to upb, the reference, so
the agent's answer is the same either way. tests/integration/test_predict_codec.py holds both codecs to
upb with property tests. A change here is made in cext/_predict.pyx too.

Decoded tensors are edge_agent.protocol.tensors.WireTensor tuples; byte_data is a memoryview of the
body (no copy): it is valid as long as the body is.
"""
from __future__ import annotations

from numpy import ndarray

from edge_agent.protocol.tensors import (BYTE_DATA, DATATYPE_BY_DTYPE, DTYPE_BY_DATATYPE, NO_DATA,
                                         SHARED_MEMORY, Handle, WireTensor)

_U64 = (1 << 64) - 1


class _Unusual(Exception):
    """Not read here: left to upb."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Unusual
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:  # more than 64 bits
            raise _Unusual
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varint32(buf, pos: int, end: int) -> tuple[int, int]:
    """A field key or a length: upb reads these in at most 5 bytes and refuses longer ones
    (however small their value), so they are left to it."""
    value, after = _varint(buf, pos, end)
    if after - pos > 5:
        raise _Unusual
    return value, after


def _int32(value: int) -> int:
    """An int32 field's value; one that is not a sign-extended int32 is left to upb."""
    if value < 0x80000000:
        return value
    if value >= 0xFFFFFFFF80000000:
        return value - (1 << 64)
    raise _Unusual


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value): the varint for type 0, (start, end) for type 2."""
    while pos < end:
        key, pos = _varint32(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0 or key > 0xFFFFFFFF:
            raise _Unusual
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, 0, value
        elif wire == 2:
            length, pos = _varint32(buf, pos, end)
            if length >= 0x80000000 or length > end - pos:
                raise _Unusual
            yield number, 2, (pos, pos + length)
            pos += length
        else:  # fixed-width or a group: no field of these messages is one
            raise _Unusual


def _text(buf, span) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:  # upb refuses the message: its error is the reference
        raise _Unusual from None


def _handle(buf, start: int, end: int) -> Handle:
    size = offset = segment_id = 0
    posix_name = ""
    fd_index = None
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 0:
            size = value
        elif number == 2 and wire == 0:
            offset = value
        elif number == 3 and wire == 0:
            segment_id = value
        elif number == 100 and wire == 2:
            posix_name = _text(buf, value)
        elif number == 101 and wire == 0:
            if value > 0xFFFFFFFF:
                raise _Unusual
            fd_index = value
        else:
            raise _Unusual
    return Handle(size, offset, segment_id, posix_name, fd_index)


def _metadata(buf, start: int, end: int, shape: list) -> tuple[bytes, int]:
    name = b""
    data_type = 0
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 2:
            name = bytes(buf[value[0]:value[1]])
        elif number == 2 and wire == 0:
            data_type = _int32(value)
        elif number == 3 and wire == 0:
            shape.append(_int32(value))
        elif number == 3 and wire == 2:  # packed, as proto3 writes it
            pos, stop = value
            while pos < stop:
                dim, pos = _varint(buf, pos, stop)
                shape.append(_int32(dim))
        else:
            raise _Unusual
    return name, data_type


def _tensor(buf, view, start: int, end: int) -> WireTensor:
    name = b""
    data_type = 0
    shape: list = []
    has_metadata = False
    kind, data = NO_DATA, None
    for number, wire, value in _fields(buf, start, end):
        if wire != 2:
            raise _Unusual
        if number == 1:
            if has_metadata:  # upb merges the two: left to it
                raise _Unusual
            has_metadata = True
            name, data_type = _metadata(buf, value[0], value[1], shape)
        elif number in (4, 5):
            if kind != NO_DATA:  # the oneof given twice
                raise _Unusual
            if number == 4:
                kind, data = BYTE_DATA, view[value[0]:value[1]]
            else:
                kind, data = SHARED_MEMORY, _handle(buf, value[0], value[1])
        else:
            raise _Unusual
    return WireTensor(name, has_metadata, data_type, shape, kind, data)


def decode_request(body) -> tuple[str, list, list] | None:
    """(name, [WireTensor], [Handle] of output_handles) of a PredictRequest, or None: left
    to upb."""
    view = memoryview(body).cast("B")
    name = ""
    tensors: list = []
    handles: list = []
    try:
        for number, wire, value in _fields(view, 0, len(view)):
            if wire != 2:
                raise _Unusual
            if number == 1:
                name = _text(view, value)
            elif number == 2:
                tensors.append(_tensor(view, view, value[0], value[1]))
            elif number == 100:
                handles.append(_handle(view, value[0], value[1]))
            else:
                raise _Unusual
    except _Unusual:
        return None
    return name, tensors, handles


def decode_response(body) -> list | None:
    """[WireTensor] of a PredictResponse, or None: left to upb."""
    view = memoryview(body).cast("B")
    tensors: list = []
    try:
        for number, wire, value in _fields(view, 0, len(view)):
            if number != 1 or wire != 2:
                raise _Unusual
            tensors.append(_tensor(view, view, value[0], value[1]))
    except _Unusual:
        return None
    return tensors


# --- encoding ---------------------------------------------------------------------------------
# Field by field in field-number order, defaults left out, as upb writes them: the bytes are
# the same as SerializeToString's (the property tests assert it).

def _put_varint(out: bytearray, value: int) -> None:
    value &= _U64  # a negative int32 is written as its 64-bit two's complement
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, key: int, data) -> None:
    _put_varint(out, key)
    _put_varint(out, len(data))
    out += data


def _raw_bytes(data) -> memoryview:
    """A C-contiguous buffer's bytes (the compiled codec's PyBUF_SIMPLE)."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise BufferError("the buffer is not C-contiguous")
    return view.cast("B") if view.nbytes else memoryview(b"")


def _handle_bytes(handle: Handle) -> bytearray:
    out = bytearray()
    for key, value in ((1 << 3, handle.size), (2 << 3, handle.offset),
                       (3 << 3, handle.segment_id)):
        if value:
            _put_varint(out, key)
            _put_varint(out, value)
    if handle.posix_name:
        _put_bytes(out, 100 << 3 | 2, handle.posix_name.encode())
    if handle.fd_index is not None:
        _put_varint(out, 101 << 3)
        _put_varint(out, handle.fd_index)
    return out


def _tensor_bytes(name: bytes, data_type: int, shape, data) -> bytearray:
    metadata = bytearray()
    if name:
        _put_bytes(metadata, 1 << 3 | 2, name)
    if data_type:
        _put_varint(metadata, 2 << 3)
        _put_varint(metadata, data_type)
    if len(shape):
        packed = bytearray()
        for dim in shape:
            _put_varint(packed, dim)
        _put_bytes(metadata, 3 << 3 | 2, packed)
    out = bytearray()
    _put_bytes(out, 1 << 3 | 2, metadata)
    if isinstance(data, Handle):
        _put_bytes(out, 5 << 3 | 2, _handle_bytes(data))
    else:
        _put_bytes(out, 4 << 3 | 2, _raw_bytes(data))
    return out


def encode_response(outputs) -> bytes:
    """The PredictResponse of (name bytes, DataType, shape, data) per tensor: data any
    C-contiguous buffer (its bytes go in byte_data) or a Handle."""
    out = bytearray()
    for name, data_type, shape, data in outputs:
        _put_bytes(out, 1 << 3 | 2, _tensor_bytes(name, data_type, shape, data))
    return bytes(out)


def encode_request(name: str, tensors, output_handles=()) -> bytes:
    """The PredictRequest of a model name, (name bytes, DataType, shape, data) per input
    tensor as for encode_response, and output Handles."""
    out = bytearray()
    if name:
        _put_bytes(out, 1 << 3 | 2, name.encode())
    for tensor in tensors:
        _put_bytes(out, 2 << 3 | 2, _tensor_bytes(*tensor))
    for handle in output_handles:
        _put_bytes(out, 100 << 3 | 2, _handle_bytes(handle))
    return bytes(out)


# --- the client's arrays ----------------------------------------------------------------------
# The client's common case in one call each way: a request from NumPy arrays, a reply to them.

def _array_tensor(name: bytes, value) -> tuple | None:
    """(name, DataType, shape, array) of a C-contiguous array of a wire type, else None."""
    if type(value) is not ndarray:
        return None
    if not value.flags.c_contiguous:
        return None
    data_type = DATATYPE_BY_DTYPE.get(value.dtype)
    if data_type is None:
        return None
    return (name, data_type, value.shape, value)


def encode_arrays_request(name: str, inputs) -> bytes | None:
    """The PredictRequest of a model name and its inputs as NumPy arrays, by position (a list
    or a tuple) or by name (a dict of str): what encode_request writes for them. None when an
    input is anything else (not an ndarray, not C-contiguous, a dtype without a wire DataType)
    or the inputs are not a list, tuple or dict: the caller's general path shapes those."""
    tensors: list = []
    if type(inputs) is dict:
        for key, value in inputs.items():
            if type(key) is not str:
                return None
            tensor = _array_tensor(key.encode(), value)
            if tensor is None:
                return None
            tensors.append(tensor)
    elif type(inputs) is list or type(inputs) is tuple:
        for value in inputs:
            tensor = _array_tensor(b"", value)
            if tensor is None:
                return None
            tensors.append(tensor)
    else:
        return None
    return encode_request(name, tensors)


def decode_arrays_response(body) -> list | None:
    """[(output name, array)] of a PredictResponse, each array a read-only view of the body's
    byte_data in the shape and dtype its metadata gives. None when the body is left to upb or
    a tensor is anything else (no metadata, not byte_data, an unknown DataType, a negative
    dimension, a length its shape does not make, a shape NumPy cannot make): the caller's
    general path reads those."""
    tensors = decode_response(body)
    if tensors is None:
        return None
    arrays: list = []
    for tensor in tensors:
        if tensor[4] != BYTE_DATA or not tensor[1]:
            return None
        dtype = DTYPE_BY_DATATYPE.get(tensor[2])
        if dtype is None:
            return None
        nbytes = dtype.itemsize
        for dim in tensor[3]:
            if dim < 0:
                return None
            nbytes *= dim
        data = tensor[5]
        if len(data) != nbytes:
            return None
        try:
            array: ndarray = ndarray(tuple(tensor[3]), dtype, data)
        except ValueError:  # a shape NumPy cannot make, though it holds no byte
            return None
        arrays.append((tensor[0].decode("utf-8", "replace"), array))
    return arrays


# --- matching inputs -------------------------------------------------------------------------------

def plain_inputs(tensors: list, positions: dict, specs: tuple) -> list | None:
    """The request's inputs as arrays in the model's input order, when every one is plain:
    inline byte_data of exactly the model's shape and type, named all or none, each name once;
    else None, and the engine's general path binds, resizes or refuses them (its checks and
    messages are the only ones: this only recognises what they would accept unchanged).

    `positions`: input name bytes -> place among the inputs; `specs`: per input, (wire
    DataType, shape as a list, byte length, dtype, shape as a tuple). The arrays are views of
    the byte_data (no copy), read-only where the byte_data are."""
    count = len(specs)
    named = -1  # unknown yet; then 1 (all named) or 0 (none named)
    if len(tensors) != count:
        return None
    arrays: list = [None] * count
    for i in range(count):
        tensor = tensors[i]
        if not isinstance(tensor, tuple):  # a WireTensor is one
            return None
        if tensor[4] != BYTE_DATA:
            return None
        name = tensor[0]
        if name:
            if named == 0:
                return None
            named = 1
            position = positions.get(name)
            if position is None:
                return None
        else:
            if named == 1:
                return None
            named = 0
            position = i
        if arrays[position] is not None:  # a name given twice
            return None
        spec = specs[position]
        if tensor[1]:  # has_metadata: its type must be the model's, its shape none or the model's
            if tensor[2] != spec[0]:
                return None
            shape = tensor[3]
            if shape and shape != spec[1]:
                return None
        data = tensor[5]
        if len(data) != spec[2]:
            return None
        arrays[position] = ndarray(spec[4], spec[3], data)
    return arrays
