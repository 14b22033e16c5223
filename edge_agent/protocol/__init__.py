"""The framed protocol, sans-IO: bytes in, events out; calls in, bytes out.

- frames.py: the header layout, the frame splitter (compiled or its pure-Python
  twin) and the frame encoders;
- events.py: what a connection hands its loop (Request, Reply, ProtocolError, NeedData,
  Closed);
- server_connection.py: ServerConnection, the agent's side of one connection (request
  kinds, descriptors, end of stream, the partial-frame deadline, idle timeout and pending
  budget);
- client_connection.py: ClientConnection, a client's side (request ids, reply matching);
- receiving.py: how much either side receives next, and sets aside for a large body;
- grpc_connection.py: GrpcConnection, the agent's side of one gRPC connection over h2
  (imported only by the gRPC front: h2 loads only when that front is configured);
- descriptors.py: descriptors passed with a call (how many, by index, closing them).

Nothing here touches a socket or reads a clock: the fronts on the agent's event loop
(edge_agent.transport) and edge_agent.client move bytes and descriptors and pass the time in. docs/PROTOCOL.md is the
description of the wire.
"""
from edge_agent.protocol.client_connection import ClientConnection
from edge_agent.protocol.events import (CLOSED, NEED_DATA, Closed, NeedData, ProtocolError,
                                        Reply, Request)
from edge_agent.protocol.frames import (HEADER, MAGIC, MAX_REQUEST_ID, VERSION, Frame,
                                        FrameDecoder, FrameSplitter, FramingError, Kind,
                                        encode_error, encode_reply, encode_request,
                                        reply_parts)
from edge_agent.protocol.server_connection import ServerConnection

__all__ = [
    "HEADER", "MAGIC", "MAX_REQUEST_ID", "VERSION", "Kind", "Frame", "FrameDecoder",
    "FrameSplitter", "FramingError", "encode_request", "encode_reply", "encode_error",
    "reply_parts", "Request", "Reply", "ProtocolError", "NeedData", "NEED_DATA", "Closed", "CLOSED",
    "ServerConnection", "ClientConnection",
]
