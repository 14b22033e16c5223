"""The pure-Python twin of the compiled frame splitter (cext/_framing.pyx).

Same behaviour, same messages, same status codes: it is the reference the compiled splitter is
tested against (tests/unit/test_protocol.py splits any byte stream with both and compares), and
what edge_agent.protocol uses where the compiled module is missing (a source checkout without
a build) or EDGE_AGENT_PUREPYTHON=1 asks for it. The compiled one is several times faster and
is what the agent runs. A change to one is made to the other.
"""
from __future__ import annotations

import operator

from edge_agent.errors import FramingError, StatusCode

# The header's layout (edge_agent.protocol.frames.HEADER builds its struct from these; the
# compiled splitter has them as C constants, held equal by tests/unit/test_protocol.py).
HEADER_SIZE = 16
MAGIC = b"EA"
VERSION = 1
_MAX_BODY = (1 << 64) - 1  # the compiled splitter holds the limit in an unsigned 64-bit integer


def _u32(buf: bytearray, offset: int) -> int:
    return int.from_bytes(buf[offset:offset + 4], "little")


class FrameSplitter:
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

    __slots__ = ("_buf", "_start", "_end", "_base", "_offered", "_view", "_max_body",
                 "_failed")

    def __init__(self, max_body: int, capacity: int = 0):
        max_body = operator.index(max_body)  # what the compiled one's C integer takes, and refuses
        if max_body < 0:
            raise OverflowError("can't convert negative int to unsigned")
        if max_body > _MAX_BODY:
            raise OverflowError("int too big to convert")
        capacity = operator.index(capacity)
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        self._buf = bytearray(capacity)
        self._base = capacity
        self._start = self._end = 0
        self._offered = 0
        self._view: memoryview | None = None
        self._max_body = max_body
        self._failed = False

    @property
    def max_body(self) -> int:
        return self._max_body

    def get_buffer(self, size: int) -> memoryview:
        """A writable view of `size` free bytes after those buffered: receive into it, then
        say how many arrived with buffer_updated(). Moves the pending bytes to the front (so
        earlier views from next_view() are no longer valid) and grows the buffer if needed."""
        size = operator.index(size)
        if size < 0:
            raise ValueError("size must not be negative")
        self._release()
        buf, pending = self._buf, self._end - self._start
        target = max(self._base, size)
        if not pending:
            self._start = self._end = 0
            if len(buf) > target or len(buf) < size:  # back to the base size, or grown
                self._resize(target)
        elif len(buf) - self._end < size:
            if self._start:  # make room by moving the pending bytes to the front
                buf[:pending] = buf[self._start:self._end]
                self._start, self._end = 0, pending
            if len(buf) - pending < size:
                self._resize(pending + size)
        self._offered = size
        view = memoryview(self._buf)[self._end:self._end + size]
        self._view = view
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` of the view get_buffer() gave were filled."""
        nbytes = operator.index(nbytes)
        if not 0 <= nbytes <= self._offered:
            raise ValueError(f"{nbytes} bytes received into a buffer of {self._offered}")
        self._end += nbytes
        self._offered = 0
        self._release()


    def _release(self) -> None:
        # The view handed out is released, so the buffer can be resized in place.
        if self._view is not None:
            self._view.release()
            self._view = None

    def _resize(self, capacity: int) -> None:
        try:  # in place: realloc, no second copy of the pending bytes in memory
            if capacity < len(self._buf):
                del self._buf[capacity:]
            else:
                self._buf += bytes(capacity - len(self._buf))
        except BufferError:  # a body view is still alive: leave it its bytes
            buf = bytearray(capacity)
            pending = self._end - self._start
            buf[:pending] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = buf, 0, pending

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return self._end - self._start

    @property
    def needed(self) -> int:
        """Bytes still to come before the frame in progress is whole (a header's worth when
        none is in progress): lets a caller read a large body in one receive."""
        avail = self._end - self._start
        if avail < HEADER_SIZE:
            return HEADER_SIZE - avail
        body_len = _u32(self._buf, self._start + 12)
        return max(0, HEADER_SIZE + min(body_len, self._max_body) - avail)

    @property
    def buffered(self) -> int:
        """Bytes held, consumed or not: bounded however long the stream runs."""
        return len(self._buf)

    def next_view(self):
        if self._failed:
            raise FramingError(StatusCode.INVALID_ARGUMENT,
                               "the stream is out of step after an earlier error")
        buf, start = self._buf, self._start
        avail = self._end - start
        if avail < HEADER_SIZE:
            return None
        request_id = _u32(buf, start + 8)
        if buf[start:start + 2] != MAGIC:
            self._failed = True
            raise FramingError(
                StatusCode.INVALID_ARGUMENT,
                "not an edge-agent frame: expected magic 'EA', got %s"
                % bytes(buf[start:start + 2]).hex())
        if buf[start + 2] != VERSION:
            self._failed = True
            raise FramingError(
                StatusCode.INVALID_ARGUMENT,
                "unsupported protocol version %d (this agent speaks %d)"
                % (buf[start + 2], VERSION),
                request_id)
        kind = buf[start + 3]
        method = int.from_bytes(buf[start + 4:start + 6], "little")
        status = int.from_bytes(buf[start + 6:start + 8], "little")
        body_len = _u32(buf, start + 12)
        if body_len > self._max_body:
            self._failed = True
            raise FramingError(
                StatusCode.RESOURCE_EXHAUSTED,
                "frame body of %d bytes exceeds the limit of %d bytes"
                % (body_len, self._max_body),
                request_id)
        if avail < HEADER_SIZE + body_len:
            return None
        begin = start + HEADER_SIZE
        body = memoryview(buf)[begin:begin + body_len]
        self._start = begin + body_len
        return (kind, method, status, request_id, body)
