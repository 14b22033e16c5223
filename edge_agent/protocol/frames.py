"""The frame codec: the header layout, method numbers, the splitter and the frame encoders.

Every frame is a 16-byte little-endian header and a body:

    offset size field
    0      2    magic, the ASCII bytes "EA"
    2      1    version, 1
    3      1    kind: 1 request, 2 reply
    4      2    method (see Method)
    6      2    status: 0 in requests; in replies a gRPC status code
    8      4    request id, chosen by the client, echoed in the reply
    12     4    body length in bytes

A request body is the serialized protobuf request of its method. A reply body is the
serialized response when status is 0, else a UTF-8 error message. docs/PROTOCOL.md is the
full description; nothing here touches a socket, so it is tested and fuzzed on plain bytes.
The connections (server_connection.py, client_connection.py) are built on this.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Iterator

from edge_agent import pure_python
from edge_agent.errors import FramingError, StatusCode

# The splitter: the compiled one, else its pure-Python twin (msgpack's seam). The twin is the
# same code in Python (edge_agent/protocol/_framing_py.py), for a checkout without a build and as the
# reference the tests hold the compiled one to; EDGE_AGENT_PUREPYTHON=1 forces it (pure_python()).
if pure_python():
    from edge_agent.protocol._framing_py import FrameSplitter
else:
    try:
        from edge_agent.protocol._framing import FrameSplitter
    except ImportError:
        from edge_agent.protocol._framing_py import FrameSplitter

__all__ = [
    "HEADER", "VERSION", "Kind", "Frame", "FrameDecoder", "FramingError",
    "encode_request", "encode_reply", "encode_error", "reply_parts",
]

HEADER = struct.Struct("<2sBBHHII")
MAGIC = b"EA"
VERSION = 1
MAX_REQUEST_ID = 0xFFFFFFFF


class Kind(enum.IntEnum):
    REQUEST = 1
    REPLY = 2


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    method: int
    status: int
    request_id: int
    body: bytes


class FrameDecoder:
    """Splits a byte stream into frames, however the stream was cut into pieces.

    For code that reads a captured or scripted stream whole (the fuzz harness, the tests'
    raw-socket helpers, a user's own tooling); the agent and the client use the connection
    objects (ServerConnection, ClientConnection), which own ids, kinds and end of stream.

    A FramingError from frames() means the stream can no longer be trusted: reply with
    encode_error(err.code, err.request_id, ...) and close the connection. Bytes received after
    that are never interpreted.
    """

    def __init__(self, max_body_bytes: int, splitter: type = FrameSplitter):
        # `splitter`: the tests pass each implementation in turn.
        self._splitter = splitter(max_body_bytes)

    def feed(self, data: bytes) -> None:
        self._splitter.feed(data)

    def frames(self) -> Iterator[Frame]:
        """The whole frames buffered so far, in order."""
        take = self._splitter.next
        while (parts := take()) is not None:
            yield Frame(*parts)

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame not yet complete; non-zero at end of stream means it was cut short."""
        return self._splitter.pending

    @property
    def needed_bytes(self) -> int:
        """Bytes still missing from the frame in progress (a header's worth between frames)."""
        return self._splitter.needed

    @property
    def buffered_bytes(self) -> int:
        """Memory the decoder holds, consumed bytes included."""
        return self._splitter.buffered

    def end_of_stream(self) -> None:
        """Call when the peer closed its side: raises FramingError for a frame cut short."""
        if self._splitter.pending:
            raise FramingError(
                StatusCode.INVALID_ARGUMENT,
                f"connection closed in the middle of a frame ({self._splitter.pending} bytes pending)",
            )


def _encode(kind: Kind, method: int, status: int, request_id: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, method, status, request_id, len(body)) + body


def reply_parts(method: int, request_id: int, status: int, body) -> tuple[bytes, bytes]:
    """A reply frame as (header, body), for a sender that writes both without joining them
    (the body may be large: a copy saved). `body`: bytes, the response or error message."""
    return HEADER.pack(MAGIC, VERSION, Kind.REPLY, method, status, request_id, len(body)), body


def encode_request(method: int, request_id: int, body: bytes) -> bytes:
    return _encode(Kind.REQUEST, method, 0, request_id, body)


def encode_reply(method: int, request_id: int, body: bytes) -> bytes:
    return _encode(Kind.REPLY, method, StatusCode.OK, request_id, body)


def encode_error(status: int, request_id: int, message: str, method: int = 0) -> bytes:
    return _encode(Kind.REPLY, method, status, request_id, message.encode("utf-8", "replace"))
