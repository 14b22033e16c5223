# cython: language_level=3, boundscheck=False, wraparound=False
"""Incremental frame splitter: the byte-level core of edge_agent.protocol.

One job: take stream bytes in arbitrary pieces and hand back whole frames, checking each
header (magic, version, body length against the limit) before any body byte is buffered
beyond it. It does no I/O and knows nothing of methods or protobuf; edge_agent.protocol is
the Python API over it and documents the header layout. edge_agent/protocol/_framing_py.py is its
pure-Python twin, line for line: a change here is made there too (tests/unit/test_protocol.py
checks that both split any stream alike).
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memmove

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
    """Receive straight into get_buffer(n), say how many bytes arrived with buffer_updated(n),
    then call next_view() until it returns None.

    next_view() returns (kind, method, status, request_id, body) for each whole frame, in
    order, the body a memoryview of the buffer, valid until the next get_buffer() (which may
    move or overwrite the bytes under it). Nothing is copied on the way: a caller that keeps a
    body past that copies it itself.

    The buffer is one bytearray for the splitter's life, `capacity` bytes to begin with: it
    grows (in place where no view of it is alive) only for a frame larger than that, and
    shrinks back once nothing is pending.
    """

    cdef bytearray _buf
    cdef Py_ssize_t _start, _end, _base, _offered
    cdef object _view
    cdef readonly unsigned long long max_body
    cdef bint _failed

    def __cinit__(self, unsigned long long max_body, Py_ssize_t capacity=0):
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        self._buf = bytearray(capacity)
        self._base = capacity
        self._start = self._end = 0
        self._offered = 0
        self._view = None
        self.max_body = max_body
        self._failed = False

    def get_buffer(self, Py_ssize_t size):
        """A writable view of `size` free bytes after those buffered: receive into it, then
        say how many arrived with buffer_updated(). Moves the pending bytes to the front (so
        earlier views from next_view() are no longer valid) and grows the buffer if needed."""
        cdef Py_ssize_t pending = self._end - self._start
        cdef Py_ssize_t target = max(self._base, size)
        cdef char* p
        if size < 0:
            raise ValueError("size must not be negative")
        self._release()
        if not pending:
            self._start = self._end = 0
            if len(self._buf) > target or len(self._buf) < size:  # back to the base size, or grown
                self._resize(target)
        elif len(self._buf) - self._end < size:
            if self._start:  # make room by moving the pending bytes to the front
                p = PyByteArray_AS_STRING(self._buf)
                memmove(p, p + self._start, pending)
                self._start, self._end = 0, pending
            if len(self._buf) - pending < size:
                self._resize(pending + size)
        self._offered = size
        self._view = memoryview(self._buf)[self._end:self._end + size]
        return self._view

    def buffer_updated(self, Py_ssize_t nbytes):
        """`nbytes` of the view get_buffer() gave were filled."""
        if not 0 <= nbytes <= self._offered:
            raise ValueError(f"{nbytes} bytes received into a buffer of {self._offered}")
        self._end += nbytes
        self._offered = 0
        self._release()


    cdef _release(self):
        # The view handed out is released, so the buffer can be resized in place.
        if self._view is not None:
            self._view.release()
            self._view = None

    cdef _resize(self, Py_ssize_t capacity):
        cdef bytearray buf
        cdef Py_ssize_t pending
        try:  # in place: realloc, no second copy of the pending bytes in memory
            PyByteArray_Resize(self._buf, capacity)
        except BufferError:  # a body view is still alive: leave it its bytes
            buf = bytearray(capacity)
            pending = self._end - self._start
            buf[:pending] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = buf, 0, pending

    @property
    def pending(self):
        """Bytes received that do not yet make a whole frame."""
        return self._end - self._start

    @property
    def needed(self):
        """Bytes still to come before the frame in progress is whole (a header's worth when
        none is in progress): lets a caller read a large body in one receive."""
        cdef Py_ssize_t avail = self._end - self._start
        cdef const uint8_t* p
        if avail < HEADER_SIZE:
            return HEADER_SIZE - avail
        p = <const uint8_t*>PyByteArray_AS_STRING(self._buf) + self._start
        return max(0, HEADER_SIZE + <Py_ssize_t>min(_u32(p + 12), self.max_body) - avail)

    @property
    def buffered(self):
        """Bytes held, consumed or not: bounded however long the stream runs."""
        return len(self._buf)

    def next_view(self):
        cdef Py_ssize_t avail = self._end - self._start
        cdef Py_ssize_t begin
        cdef const uint8_t* p
        cdef uint32_t body_len, request_id
        cdef uint8_t kind
        cdef uint16_t method, status
        if self._failed:
            raise FramingError(StatusCode.INVALID_ARGUMENT,
                               "the stream is out of step after an earlier error")
        if avail < HEADER_SIZE:
            return None
        p = <const uint8_t*>PyByteArray_AS_STRING(self._buf) + self._start
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
        begin = self._start + HEADER_SIZE
        body = memoryview(self._buf)[begin:begin + body_len]
        self._start = begin + body_len
        return (kind, method, status, request_id, body)
