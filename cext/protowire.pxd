# The protocol buffer wire primitives of the compiled Predict codec (cext/_predict.pyx):
# varints and field keys, over raw pointers, without the GIL. A negative result means "not
# read here": the codec leaves the message to upb. Only the two wire types PredictRequest and
# PredictResponse use are read (0 varint, 2 length-delimited).
from libc.stdint cimport int64_t, uint8_t, uint64_t


cdef struct Field:
    uint64_t number
    int wire              # 0 or 2
    uint64_t value        # the varint (wire 0)
    const uint8_t* start  # the bytes (wire 2)
    const uint8_t* stop


cdef inline int read_varint(const uint8_t** pos, const uint8_t* end, uint64_t* value) noexcept nogil:
    cdef const uint8_t* p = pos[0]
    cdef uint64_t result = 0
    cdef unsigned int shift = 0
    cdef uint8_t byte
    while True:
        if p >= end:
            return -1
        byte = p[0]
        p += 1
        if shift == 63 and byte > 1:  # more than 64 bits
            return -1
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            break
        shift += 7
    pos[0] = p
    value[0] = result
    return 0


cdef inline int read_varint32(const uint8_t** pos, const uint8_t* end, uint64_t* value) noexcept nogil:
    """A field key or a length: upb reads these in at most 5 bytes and refuses longer ones
    (however small their value), so they are left to it."""
    cdef const uint8_t* start = pos[0]
    if read_varint(pos, end, value) < 0 or pos[0] - start > 5:
        pos[0] = start
        return -1
    return 0


cdef inline int next_field(const uint8_t** pos, const uint8_t* end, Field* field) noexcept nogil:
    cdef uint64_t key, length
    if read_varint32(pos, end, &key) < 0:
        return -1
    field.number = key >> 3
    field.wire = <int>(key & 7)
    if field.number == 0 or key > 0xFFFFFFFFULL:
        return -1
    if field.wire == 0:
        return read_varint(pos, end, &field.value)
    if field.wire == 2:
        if read_varint32(pos, end, &length) < 0 or length >= 0x80000000ULL \
                or length > <uint64_t>(end - pos[0]):
            return -1
        field.start = pos[0]
        field.stop = pos[0] + length
        pos[0] = field.stop
        return 0
    return -1  # fixed-width or a group: no field of these messages is one


cdef inline int as_int32(uint64_t value, long long* out) noexcept nogil:
    """An int32 field's value; one that is not a sign-extended int32 is left to upb."""
    if value < 0x80000000ULL:
        out[0] = <long long>value
        return 0
    if value >= 0xFFFFFFFF80000000ULL:
        out[0] = <long long><int64_t>value
        return 0
    return -1


cdef inline Py_ssize_t varint_size(uint64_t value) noexcept nogil:
    cdef inline Py_ssize_t n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


cdef inline uint8_t* write_varint(uint8_t* pos, uint64_t value) noexcept nogil:
    while value >= 0x80:
        pos[0] = <uint8_t>((value & 0x7F) | 0x80)
        pos += 1
        value >>= 7
    pos[0] = <uint8_t>value
    return pos + 1
