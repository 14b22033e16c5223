"""The events a connection object hands its I/O loop (the h11 style: the loop calls
next_event() and acts on what it gets)."""
from __future__ import annotations

from typing import NamedTuple, Union

# Named tuples, not frozen dataclasses: one is made per call, and a frozen dataclass's
# __init__ costs about a microsecond, several times a tuple's.


class Request(NamedTuple):
    """A well-formed request frame, for the server to answer with reply_parts().

    `body` is a memoryview of the connection's receive buffer: valid until the connection's
    next get_buffer(), so it is decoded (or copied, by a handler that keeps it) before the
    loop receives again. `fds`: the descriptors that came with the frame (SCM_RIGHTS), now the
    loop's to close once the reply is ready."""
    method: int
    request_id: int
    body: memoryview
    fds: tuple[int, ...] = ()


class Reply(NamedTuple):
    """A reply to a request this client sent (or, with request id 0, the agent's word on the
    whole connection before it closes it). `code`: the status as sent (a gRPC code); `body`:
    the serialized response when it is 0, else a UTF-8 message; a memoryview valid until the
    connection's next get_buffer() or receive_data()."""
    request_id: int
    method: int
    code: int
    body: memoryview


class ProtocolError(NamedTuple):
    """The peer broke the protocol, or a limit was reached. On the server side, the error
    reply is send_error(event); `closing`: the connection ends after it (the stream cannot be
    trusted, or a time limit passed), else only this request is refused. On the client side
    it always ends the connection."""
    code: int
    message: str
    request_id: int = 0
    method: int = 0
    closing: bool = True


class NeedData:
    """Nothing more to hand out until more bytes arrive: receive into get_buffer()."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


class Closed:
    """The connection is over: nothing more will come out of it."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA = NeedData()
CLOSED = Closed()

Event = Union[Request, Reply, ProtocolError, NeedData, Closed]
