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

HEADER_SIZE = 16
MAGIC = b"EA"
VERSION = 1
_MAX_BODY = (1 << 64) - 1  # the compiled splitter holds the limit in an unsigned 64-bit integer


def _u32(buf: bytearray, offset: int) -> int:
    return int.from_bytes(buf[offset:offset + 4], "little")


class FrameSplitter:
    """feed() bytes, then call next() until it returns None.

    next() returns (kind, method, status, request_id, body) for each whole frame, in order.
    """

    __slots__ = ("_buf", "_start", "_max_body", "_failed")

    def __init__(self, max_body: int):
        max_body = operator.index(max_body)  # what the compiled one's C integer takes, and refuses
        if max_body < 0:
            raise OverflowError("can't convert negative int to unsigned")
        if max_body > _MAX_BODY:
            raise OverflowError("int too big to convert")
        self._buf = bytearray()
        self._start = 0
        self._max_body = max_body
        self._failed = False

    @property
    def max_body(self) -> int:
        return self._max_body

    def feed(self, data) -> None:
        if self._start and self._start == len(self._buf):
            # Everything buffered was consumed: start afresh instead of growing.
            del self._buf[:]
            self._start = 0
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf) - self._start

    @property
    def needed(self) -> int:
        """Bytes still to come before the frame in progress is whole (a header's worth when
        none is in progress): lets a caller read a large body in one receive."""
        avail = len(self._buf) - self._start
        if avail < HEADER_SIZE:
            return HEADER_SIZE - avail
        body_len = _u32(self._buf, self._start + 12)
        return max(0, HEADER_SIZE + min(body_len, self._max_body) - avail)

    @property
    def buffered(self) -> int:
        """Bytes held, consumed or not: bounded however long the stream runs."""
        return len(self._buf)

    def next(self):
        if self._failed:
            raise FramingError(StatusCode.INVALID_ARGUMENT,
                               "the stream is out of step after an earlier error")
        buf, start = self._buf, self._start
        avail = len(buf) - start
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
        body = bytes(buf[start + HEADER_SIZE:start + HEADER_SIZE + body_len])
        self._start = start = start + HEADER_SIZE + body_len
        if start > 65536 and start * 2 > len(buf):
            # Drop consumed bytes once they dominate, so a long pipelined burst stays bounded.
            del buf[:start]
            self._start = 0
        return (kind, method, status, request_id, body)
