# cython: language_level=3, boundscheck=False, wraparound=False
"""Incremental frame splitter: the byte-level core of edge_agent.protocol.

One job: take stream bytes in arbitrary pieces and hand back whole frames, checking each
header (magic, version, body length against the limit) before any body byte is buffered
beyond it. It does no I/O and knows nothing of methods or protobuf; edge_agent.protocol is
the Python API over it and documents the header layout. edge_agent/_framing_py.py is its
pure-Python twin, line for line: a change here is made there too (tests/unit/test_protocol.py
checks that both split any stream alike).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t

# One definition of the error and the status numbers, shared with the twin and the fronts.
from edge_agent.errors import FramingError, StatusCode

cdef enum:
    HEADER_SIZE = 16
    MAGIC0 = 0x45  # 'E'
    MAGIC1 = 0x41  # 'A'
    VERSION = 1


cdef inline uint16_t _u16(const uint8_t* p) nogil:
    return <uint16_t>p[0] | (<uint16_t>p[1] << 8)


cdef inline uint32_t _u32(const uint8_t* p) nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef class FrameSplitter:
    """feed() bytes, then call next() until it returns None.

    next() returns (kind, method, status, request_id, body) for each whole frame, in order.
    """

    cdef bytearray _buf
    cdef Py_ssize_t _start
    cdef readonly unsigned long long max_body
    cdef bint _failed

    def __cinit__(self, unsigned long long max_body):
        self._buf = bytearray()
        self._start = 0
        self.max_body = max_body
        self._failed = False

    def feed(self, data):
        if self._start and self._start == len(self._buf):
            # Everything buffered was consumed: start afresh instead of growing.
            del self._buf[:]
            self._start = 0
        self._buf += data

    @property
    def pending(self):
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf) - self._start

    @property
    def needed(self):
        """Bytes still to come before the frame in progress is whole (a header's worth when
        none is in progress): lets a caller read a large body in one receive."""
        cdef Py_ssize_t avail = len(self._buf) - self._start
        cdef const uint8_t* p
        if avail < HEADER_SIZE:
            return HEADER_SIZE - avail
        p = <const uint8_t*>(<char*>self._buf) + self._start
        return max(0, HEADER_SIZE + <Py_ssize_t>min(_u32(p + 12), self.max_body) - avail)

    @property
    def buffered(self):
        """Bytes held, consumed or not: bounded however long the stream runs."""
        return len(self._buf)

    def next(self):
        cdef Py_ssize_t avail = len(self._buf) - self._start
        cdef const uint8_t* p
        cdef uint32_t body_len, request_id
        cdef uint8_t kind
        cdef uint16_t method, status
        if self._failed:
            raise FramingError(StatusCode.INVALID_ARGUMENT,
                               "the stream is out of step after an earlier error")
        if avail < HEADER_SIZE:
            return None
        p = <const uint8_t*>(<char*>self._buf) + self._start
        request_id = _u32(p + 8)
        if p[0] != MAGIC0 or p[1] != MAGIC1:
            self._failed = True
            raise FramingError(
                StatusCode.INVALID_ARGUMENT,
                "not an edge-agent frame: expected magic 'EA', got %s" % bytes(p[0:2]).hex())
        if p[2] != VERSION:
            self._failed = True
            raise FramingError(
                StatusCode.INVALID_ARGUMENT,
                "unsupported protocol version %d (this agent speaks %d)" % (p[2], VERSION),
                request_id)
        kind = p[3]
        method = _u16(p + 4)
        status = _u16(p + 6)
        body_len = _u32(p + 12)
        if body_len > self.max_body:
            self._failed = True
            raise FramingError(
                StatusCode.RESOURCE_EXHAUSTED,
                "frame body of %d bytes exceeds the limit of %d bytes" % (body_len, self.max_body),
                request_id)
        if avail < HEADER_SIZE + <Py_ssize_t>body_len:
            return None
        body = PyBytes_FromStringAndSize(<const char*>p + HEADER_SIZE, body_len)
        self._start += HEADER_SIZE + body_len
        if self._start > 65536 and self._start * 2 > len(self._buf):
            # Drop consumed bytes once they dominate, so a long pipelined burst stays bounded.
            del self._buf[:self._start]
            self._start = 0
        return (kind, method, status, request_id, body)
