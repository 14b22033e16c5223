"""The wire, sans-IO: bytes in, events out; calls in, bytes out. It owns the frame header and
splitter (frames.py, over the compiled _framing or its twin), what a connection hands its loop
(events.py), the agent's and the client's side of one framed connection (server_connection.py,
client_connection.py: ids, kinds, descriptors, end of stream, deadlines, the pending budget),
the agent's side of one gRPC connection over h2 (grpc_connection.py, imported only by the gRPC
front, so h2 loads only when that front is configured), how much either side receives next
(receiving.py), the Predict codec (predict_codec.py, over the compiled _predict or its twin)
and the one shape of a tensor off the wire (tensors.py). Nothing here touches a socket or
reads a clock: the fronts on the agent's event loop (edge_agent.transport) and
edge_agent.client move the bytes and pass the time in. It imports no other package of the
agent but platform's passed_fds and no I/O module (tests/unit/test_imports.py).
docs/PROTOCOL.md is the description of the wire.
"""
from edge_agent.protocol.client_connection import ClientConnection
from edge_agent.protocol.events import (CLOSED, NEED_DATA, Closed, NeedData, ProtocolError,
                                        Reply, Request)
from edge_agent.protocol.frames import (HEADER, MAGIC, MAX_REQUEST_ID, VERSION, FrameSplitter,
                                        FramingError, Kind, encode_error, encode_request,
                                        reply_parts)
from edge_agent.protocol.server_connection import ServerConnection

__all__ = [
    "HEADER", "MAGIC", "MAX_REQUEST_ID", "VERSION", "Kind", "FrameSplitter", "FramingError",
    "encode_request", "encode_error",
    "reply_parts", "Request", "Reply", "ProtocolError", "NeedData", "NEED_DATA", "Closed", "CLOSED",
    "ServerConnection", "ClientConnection",
]
