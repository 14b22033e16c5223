"""The frame codec: the header layout, the splitter and the frame encoders.

Every frame is a 16-byte little-endian header and a body:

    offset size field
    0      2    magic, the ASCII bytes "EA"
    2      1    version, 1
    3      1    kind: 1 request, 2 reply
    4      2    method (edge_agent.api.rpcs numbers them)
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

from edge_agent import pure_python
from edge_agent.errors import FramingError
from edge_agent.protocol._framing_py import HEADER_SIZE, MAGIC, VERSION

# The splitter: the compiled one, else its pure-Python twin (msgpack's seam). The twin is the
# same code in Python (edge_agent/protocol/_framing_py.py), for a checkout without a build and as the
# reference the tests hold the compiled one to; EDGE_AGENT_PUREPYTHON=1 forces it (pure_python()).
if pure_python():
    from edge_agent.protocol._framing_py import FrameSplitter
else:
    try:  # two classes with one API, which mypy sees as two types
        from edge_agent.protocol._framing import FrameSplitter  # type: ignore[assignment]
    except ModuleNotFoundError as missing:  # no build; a broken or stale one is an error
        if missing.name != "edge_agent.protocol._framing":
            raise
        from edge_agent.protocol._framing_py import FrameSplitter

__all__ = [
    "HEADER", "MAGIC", "VERSION", "MAX_REQUEST_ID", "Kind", "FrameSplitter", "FramingError",
    "encode_request", "encode_error", "reply_parts",
]

HEADER = struct.Struct("<2sBBHHII")
assert HEADER.size == HEADER_SIZE
MAX_REQUEST_ID = 0xFFFFFFFF


class Kind(enum.IntEnum):
    REQUEST = 1
    REPLY = 2


def _encode(kind: Kind, method: int, status: int, request_id: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, method, status, request_id, len(body)) + body


def reply_parts(method: int, request_id: int, status: int, body) -> tuple[bytes, bytes]:
    """A reply frame as (header, body), for a sender that writes both without joining them
    (the body may be large: a copy saved). `body`: bytes, the response or error message."""
    return HEADER.pack(MAGIC, VERSION, Kind.REPLY, method, status, request_id, len(body)), body


def encode_request(method: int, request_id: int, body: bytes) -> bytes:
    return _encode(Kind.REQUEST, method, 0, request_id, body)


def encode_error(status: int, request_id: int, message: str, method: int = 0) -> bytes:
    return _encode(Kind.REPLY, method, status, request_id, message.encode("utf-8", "replace"))
