# cython: language_level=3, boundscheck=False, wraparound=False
"""The Predict codec, compiled: PredictRequest and PredictResponse read straight from and
written straight into wire bytes, without protobuf objects; plain_inputs, the service's
match of decoded inputs to a model's in the common case; and the client's array calls,
encode_arrays_request and decode_arrays_response.

The twin of edge_agent/protocol/_predict_py.py, which says what is read here and what is left to upb
(decode_* return None): a change here is made there too. tests/integration/test_predict_codec.py holds
both to upb. Decoded byte_data are memoryviews of the body (no copy); encoded byte_data are
copied once, from the caller's buffer (the runtime's output tensor) into the reply.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset

from protowire cimport Field, as_int32, next_field, read_varint, varint_size, write_varint

from numpy import ndarray

from edge_agent.protocol.tensors import (DATATYPE_BY_DTYPE, DTYPE_BY_DATATYPE, Handle,
                                         WireTensor)

# The tuples are built without their Python constructors (one C call each).
cdef object _tuple_new = tuple.__new__

cdef enum:
    NO_DATA = 0  # edge_agent.protocol.tensors.NO_DATA, BYTE_DATA, SHARED_MEMORY
    BYTE_DATA = 1
    SHARED_MEMORY = 2
    # Copies from this size up run without the GIL: other connections' calls go on meanwhile.
    NOGIL_COPY_BYTES = 64 * 1024


class _Unusual(Exception):
    """Not read here: left to upb."""


# --- decoding --------------------------------------------------------------------------------------

cdef object _text(const uint8_t* start, const uint8_t* stop):
    try:
        return PyUnicode_DecodeUTF8(<const char*>start, stop - start, "strict")
    except UnicodeDecodeError:  # upb refuses the message: its error is the reference
        raise _Unusual from None


cdef object _handle(const uint8_t* pos, const uint8_t* end):
    cdef Field f
    cdef uint64_t size = 0, offset = 0, segment_id = 0
    posix_name = ""
    fd_index = None
    while pos < end:
        if next_field(&pos, end, &f) < 0:
            raise _Unusual
        if f.wire == 0 and f.number == 1:
            size = f.value
        elif f.wire == 0 and f.number == 2:
            offset = f.value
        elif f.wire == 0 and f.number == 3:
            segment_id = f.value
        elif f.wire == 2 and f.number == 100:
            posix_name = _text(f.start, f.stop)
        elif f.wire == 0 and f.number == 101 and f.value <= 0xFFFFFFFFULL:
            fd_index = f.value
        else:
            raise _Unusual
    return _tuple_new(Handle, (size, offset, segment_id, posix_name, fd_index))


cdef object _tensor(object view, const uint8_t* base, const uint8_t* pos, const uint8_t* end):
    cdef Field f, m
    cdef const uint8_t* mpos
    cdef const uint8_t* dims
    cdef uint64_t dim
    cdef long long value, data_type = 0
    cdef int kind = NO_DATA
    cdef bint has_metadata = False
    name = b""
    shape = []
    data = None
    while pos < end:
        if next_field(&pos, end, &f) < 0 or f.wire != 2:
            raise _Unusual
        if f.number == 1:
            if has_metadata:  # upb merges the two: left to it
                raise _Unusual
            has_metadata = True
            mpos = f.start
            while mpos < f.stop:
                if next_field(&mpos, f.stop, &m) < 0:
                    raise _Unusual
                if m.number == 1 and m.wire == 2:
                    name = PyBytes_FromStringAndSize(<const char*>m.start, m.stop - m.start)
                elif m.number == 2 and m.wire == 0:
                    if as_int32(m.value, &data_type) < 0:
                        raise _Unusual
                elif m.number == 3 and m.wire == 0:
                    if as_int32(m.value, &value) < 0:
                        raise _Unusual
                    shape.append(value)
                elif m.number == 3 and m.wire == 2:  # packed, as proto3 writes it
                    dims = m.start
                    while dims < m.stop:
                        if read_varint(&dims, m.stop, &dim) < 0 or as_int32(dim, &value) < 0:
                            raise _Unusual
                        shape.append(value)
                else:
                    raise _Unusual
        elif f.number == 4 or f.number == 5:
            if kind != NO_DATA:  # the oneof given twice
                raise _Unusual
            if f.number == 4:
                kind = BYTE_DATA
                data = view[f.start - base:f.stop - base]
            else:
                kind = SHARED_MEMORY
                data = _handle(f.start, f.stop)
        else:
            raise _Unusual
    return _tuple_new(WireTensor, (name, has_metadata, data_type, shape, kind, data))


cdef object _byte_view(body):
    return memoryview(body) if type(body) is bytes else memoryview(body).cast("B")


def decode_request(body):
    """(name, [WireTensor], [Handle] of output_handles) of a PredictRequest, or None: left
    to upb."""
    cdef Py_buffer buf
    cdef Field f
    cdef const uint8_t* base
    cdef const uint8_t* pos
    cdef const uint8_t* end
    view = _byte_view(body)
    PyObject_GetBuffer(view, &buf, PyBUF_SIMPLE)
    name = ""
    tensors = []
    handles = []
    try:
        base = <const uint8_t*>buf.buf
        pos = base
        end = base + buf.len
        while pos < end:
            if next_field(&pos, end, &f) < 0 or f.wire != 2:
                raise _Unusual
            if f.number == 1:
                name = _text(f.start, f.stop)
            elif f.number == 2:
                tensors.append(_tensor(view, base, f.start, f.stop))
            elif f.number == 100:
                handles.append(_handle(f.start, f.stop))
            else:
                raise _Unusual
    except _Unusual:
        return None
    finally:
        PyBuffer_Release(&buf)
    return name, tensors, handles


def decode_response(body):
    """[WireTensor] of a PredictResponse, or None: left to upb."""
    cdef Py_buffer buf
    cdef Field f
    cdef const uint8_t* base
    cdef const uint8_t* pos
    cdef const uint8_t* end
    view = _byte_view(body)
    PyObject_GetBuffer(view, &buf, PyBUF_SIMPLE)
    tensors = []
    try:
        base = <const uint8_t*>buf.buf
        pos = base
        end = base + buf.len
        while pos < end:
            if next_field(&pos, end, &f) < 0 or f.wire != 2 or f.number != 1:
                raise _Unusual
            tensors.append(_tensor(view, base, f.start, f.stop))
    except _Unusual:
        return None
    finally:
        PyBuffer_Release(&buf)
    return tensors


# --- encoding --------------------------------------------------------------------------------------
# Field by field in field-number order, defaults left out, as upb writes them. Two passes: the
# sizes, then one bytes object of exactly that size written in place.

cdef bytes _handle_bytes(handle):
    cdef uint64_t size = handle[0], offset = handle[1], segment_id = handle[2], fd = 0
    cdef Py_ssize_t n = 0, name_len
    cdef bint has_fd = handle[4] is not None
    cdef uint8_t* pos
    posix_name = handle[3].encode() if handle[3] else b""
    name_len = len(posix_name)
    if size:
        n += 1 + varint_size(size)
    if offset:
        n += 1 + varint_size(offset)
    if segment_id:
        n += 1 + varint_size(segment_id)
    if name_len:
        n += 2 + varint_size(name_len) + name_len
    if has_fd:
        fd = handle[4]
        n += 2 + varint_size(fd)
    out = PyBytes_FromStringAndSize(NULL, n)
    pos = <uint8_t*>PyBytes_AS_STRING(out)
    if size:
        pos[0] = 1 << 3
        pos = write_varint(pos + 1, size)
    if offset:
        pos[0] = 2 << 3
        pos = write_varint(pos + 1, offset)
    if segment_id:
        pos[0] = 3 << 3
        pos = write_varint(pos + 1, segment_id)
    if name_len:
        pos = write_varint(pos, 100 << 3 | 2)
        pos = write_varint(pos, name_len)
        memcpy(pos, PyBytes_AS_STRING(posix_name), name_len)
        pos += name_len
    if has_fd:
        pos = write_varint(pos, 101 << 3)
        write_varint(pos, fd)
    return out


cdef struct Sizes:
    Py_ssize_t metadata  # the TensorMetadata message
    Py_ssize_t packed    # its packed shape
    Py_ssize_t data      # byte_data, or the SharedMemoryHandle message
    Py_ssize_t tensor    # the Tensor message


cdef Py_ssize_t _sizes(Sizes* s, bytes name, long long data_type, shape,
                       Py_ssize_t data_len) except -1:
    cdef Py_ssize_t n = 0, packed = 0, name_len = len(name)
    cdef long long dim
    if name_len:
        n += 1 + varint_size(name_len) + name_len
    if data_type:
        n += 1 + varint_size(<uint64_t>data_type)
    for d in shape:
        dim = d
        packed += varint_size(<uint64_t>dim)
    if packed:
        n += 1 + varint_size(packed) + packed
    s.metadata = n
    s.packed = packed
    s.data = data_len
    s.tensor = 1 + varint_size(n) + n + 1 + varint_size(data_len) + data_len
    return 1 + varint_size(s.tensor) + s.tensor


cdef uint8_t* _write_tensor(uint8_t* pos, uint8_t key, Sizes* s, bytes name,
                            long long data_type, shape, const uint8_t* data,
                            uint8_t data_key) except NULL:
    cdef Py_ssize_t name_len = len(name)
    cdef long long dim
    pos[0] = key
    pos = write_varint(pos + 1, s.tensor)
    pos[0] = 1 << 3 | 2
    pos = write_varint(pos + 1, s.metadata)
    if name_len:
        pos[0] = 1 << 3 | 2
        pos = write_varint(pos + 1, name_len)
        memcpy(pos, PyBytes_AS_STRING(name), name_len)
        pos += name_len
    if data_type:
        pos[0] = 2 << 3
        pos = write_varint(pos + 1, <uint64_t>data_type)
    if s.packed:
        pos[0] = 3 << 3 | 2
        pos = write_varint(pos + 1, s.packed)
        for d in shape:
            dim = d
            pos = write_varint(pos, <uint64_t>dim)
    pos[0] = data_key
    pos = write_varint(pos + 1, s.data)
    if s.data >= NOGIL_COPY_BYTES:
        with nogil:
            memcpy(pos, data, s.data)
    else:
        memcpy(pos, data, s.data)
    return pos + s.data


cdef bytes _encode(bytes name, tensors, handles, uint8_t tensor_key):
    """The message of `name` (field 1; b"": none), `tensors` (field tensor_key >> 3) and
    `handles` (field 100): PredictRequest, or PredictResponse with no name or handles."""
    cdef Py_ssize_t count = len(tensors), i, total = 0, name_len = len(name)
    cdef Sizes* sizes = <Sizes*>PyMem_Malloc((count + 1) * sizeof(Sizes))
    cdef Py_buffer* buffers = <Py_buffer*>PyMem_Malloc((count + 1) * sizeof(Py_buffer))
    cdef uint8_t* pos
    cdef uint8_t* start
    cdef bytes out
    if sizes == NULL or buffers == NULL:
        PyMem_Free(sizes)
        PyMem_Free(buffers)
        raise MemoryError
    memset(buffers, 0, (count + 1) * sizeof(Py_buffer))  # obj NULL: nothing to release
    blobs = [None] * count  # each shared-memory handle's message
    handle_blobs = [_handle_bytes(h) for h in handles]
    try:
        if name_len:
            total += 1 + varint_size(name_len) + name_len
        for i in range(count):
            tensor_name, data_type, shape, data = tensors[i]
            if isinstance(data, Handle):
                blobs[i] = _handle_bytes(data)
                total += _sizes(&sizes[i], tensor_name, data_type, shape, len(blobs[i]))
            else:
                PyObject_GetBuffer(data, &buffers[i], PyBUF_SIMPLE)
                total += _sizes(&sizes[i], tensor_name, data_type, shape, buffers[i].len)
        for blob in handle_blobs:
            total += 2 + varint_size(len(blob)) + len(blob)
        out = PyBytes_FromStringAndSize(NULL, total)
        start = pos = <uint8_t*>PyBytes_AS_STRING(out)
        if name_len:
            pos[0] = 1 << 3 | 2
            pos = write_varint(pos + 1, name_len)
            memcpy(pos, PyBytes_AS_STRING(name), name_len)
            pos += name_len
        for i in range(count):
            tensor_name, data_type, shape, data = tensors[i]
            if blobs[i] is not None:
                pos = _write_tensor(pos, tensor_key, &sizes[i], tensor_name, data_type, shape,
                                    <const uint8_t*>PyBytes_AS_STRING(blobs[i]), 5 << 3 | 2)
            else:
                pos = _write_tensor(pos, tensor_key, &sizes[i], tensor_name, data_type, shape,
                                    <const uint8_t*>buffers[i].buf, 4 << 3 | 2)
        for blob in handle_blobs:
            pos = write_varint(pos, 100 << 3 | 2)
            pos = write_varint(pos, len(blob))
            memcpy(pos, PyBytes_AS_STRING(blob), len(blob))
            pos += len(blob)
        if pos - start != total:  # the two passes disagree: a fault of this module
            raise SystemError(f"Predict codec wrote {pos - start} bytes of {total}")
        return out
    finally:
        for i in range(count):
            PyBuffer_Release(&buffers[i])
        PyMem_Free(buffers)
        PyMem_Free(sizes)


def encode_response(outputs):
    """The PredictResponse of (name bytes, DataType, shape, data) per tensor: data any
    C-contiguous buffer (its bytes go in byte_data) or a Handle."""
    return _encode(b"", outputs, (), 1 << 3 | 2)


def encode_request(str name, tensors, output_handles=()):
    """The PredictRequest of a model name, (name bytes, DataType, shape, data) per input
    tensor as for encode_response, and output Handles."""
    return _encode(name.encode(), tensors, output_handles, 2 << 3 | 2)


# --- the client's arrays --------------------------------------------------------------------------
# The client's common case in one call each way: a request from NumPy arrays, a reply to them.

cdef object _array_tensor(bytes name, value):
    """(name, DataType, shape, array) of a C-contiguous array of a wire type, else None."""
    if type(value) is not ndarray:
        return None
    if not value.flags.c_contiguous:
        return None
    data_type = DATATYPE_BY_DTYPE.get(value.dtype)
    if data_type is None:
        return None
    return (name, data_type, value.shape, value)


def encode_arrays_request(str name, inputs):
    """The PredictRequest of a model name and its inputs as NumPy arrays, by position (a list
    or a tuple) or by name (a dict of str): what encode_request writes for them. None when an
    input is anything else (not an ndarray, not C-contiguous, a dtype without a wire DataType)
    or the inputs are not a list, tuple or dict: the caller's general path shapes those."""
    cdef list tensors = []
    if type(inputs) is dict:
        for key, value in (<dict>inputs).items():
            if type(key) is not str:
                return None
            tensor = _array_tensor((<str>key).encode(), value)
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
    return _encode(name.encode(), tensors, (), 2 << 3 | 2)


def decode_arrays_response(body):
    """[(output name, array)] of a PredictResponse, each array a read-only view of the body's
    byte_data in the shape and dtype its metadata gives. None when the body is left to upb or
    a tensor is anything else (no metadata, not byte_data, an unknown DataType, a negative
    dimension, a length its shape does not make, a shape NumPy cannot make): the caller's
    general path reads those."""
    cdef tuple tensor
    tensors = decode_response(body)
    if tensors is None:
        return None
    arrays = []
    for item in tensors:
        tensor = <tuple>item
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
            array = ndarray(tuple(tensor[3]), dtype, data)
        except ValueError:  # a shape NumPy cannot make, though it holds no byte
            return None
        arrays.append(((<bytes>tensor[0]).decode("utf-8", "replace"), array))
    return arrays


# --- matching inputs -------------------------------------------------------------------------------

def plain_inputs(tensors, dict positions, tuple specs):
    """The request's inputs as arrays in the model's input order, when every one is plain:
    inline byte_data of exactly the model's shape and type, named all or none, each name once;
    else None, and the engine's general path binds, resizes or refuses them (its checks and
    messages are the only ones: this only recognises what they would accept unchanged).

    `positions`: input name bytes -> place among the inputs; `specs`: per input, (wire
    DataType, shape as a list, byte length, dtype, shape as a tuple). The arrays are views of
    the byte_data (no copy), read-only where the byte_data are."""
    cdef Py_ssize_t count = len(specs), i, position
    cdef int named = -1  # unknown yet; then 1 (all named) or 0 (none named)
    cdef tuple tensor, spec
    if len(tensors) != count:
        return None
    arrays = [None] * count
    for i in range(count):
        item = tensors[i]
        if not isinstance(item, tuple):  # a WireTensor is one
            return None
        tensor = <tuple>item
        if tensor[4] != BYTE_DATA:
            return None
        name = tensor[0]
        if name:
            if named == 0:
                return None
            named = 1
            found = positions.get(name)
            if found is None:
                return None
            position = found
        else:
            if named == 1:
                return None
            named = 0
            position = i
        if arrays[position] is not None:  # a name given twice
            return None
        spec = <tuple>specs[position]
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
