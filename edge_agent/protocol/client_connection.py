"""A client's side of one framed connection, sans-IO: request ids, reply matching, end of
stream. The loop (edge_agent.client.AgentClient) sends what send_request() returns and feeds
what it receives; next_event() says what came back:

    Reply          → the reply to a request sent (request id 0: the agent's word on the whole
                     connection, which it closes after it)
    NeedData       → receive into get_buffer(), then buffer_updated(n) (receive_eof() at end
                     of stream)
    ProtocolError  → the agent's stream cannot be trusted: the connection is over
    Closed         → the agent closed the connection
"""
from __future__ import annotations

from edge_agent.errors import StatusCode
from edge_agent.protocol.events import CLOSED, NEED_DATA, ProtocolError, Reply
from edge_agent.protocol.frames import (MAX_REQUEST_ID, FrameSplitter, FramingError, Kind,
                                        encode_request)
from edge_agent.protocol.receiving import RECV_BYTES, next_receive

# Replies are bounded by what the agent sends; this only stops a corrupt length from
# allocating without limit (and a buffer grows with what arrived, never by a length alone).
MAX_REPLY_BYTES = 2**31
_REPLY = int(Kind.REPLY)  # a plain int: compared once a reply, faster than the enum


class ClientConnection:
    def __init__(self, max_reply_bytes: int = MAX_REPLY_BYTES, receive_bytes: int = RECV_BYTES,
                 splitter: type = FrameSplitter):
        # `splitter`: the tests pass each implementation in turn.
        self._splitter = splitter(max_reply_bytes, receive_bytes)
        self._receive_bytes = receive_bytes
        self._offer = receive_bytes
        self.receive_whole = False  # as ServerConnection.receive_whole
        self._next_id = 1
        self._outstanding: dict[int, int] = {}  # request id → method, awaiting a reply
        self._abandoned: set[int] = set()  # ids whose replies are dropped when they come
        self._eof = False
        self._closed = False

    def send_request(self, method: int, body) -> tuple[int, bytes]:
        """A new request id and the frame to send. Ids run from 1 and wrap, never 0 (which
        the agent uses for errors about the connection) and never one still awaited. On a
        closed connection, next_event() says CLOSED."""
        request_id = self._next_id
        while request_id in self._outstanding or request_id in self._abandoned:
            request_id = request_id % MAX_REQUEST_ID + 1
        self._next_id = request_id % MAX_REQUEST_ID + 1
        self._outstanding[request_id] = method
        return request_id, encode_request(method, request_id, body)

    def abandon(self, request_id: int) -> None:
        """The caller no longer waits for this reply (it gave up on time): it is dropped
        when it comes, so it is not taken for a later request's."""
        if self._outstanding.pop(request_id, None) is not None:
            self._abandoned.add(request_id)

    @property
    def outstanding(self) -> frozenset[int]:
        return frozenset(self._outstanding)

    # --- bytes in ---------------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where to receive the next bytes; `sizehint` is not used. Earlier Reply bodies are
        no longer valid after it."""
        return self._splitter.get_buffer(self._offer)

    def buffer_updated(self, nbytes: int) -> None:
        self._splitter.buffer_updated(nbytes)

    def receive_data(self, data) -> None:
        """Bytes received elsewhere (empty: end of stream)."""
        if not data:
            self._eof = True
        else:
            nbytes = len(data)
            self._splitter.get_buffer(nbytes)[:] = data
            self._splitter.buffer_updated(nbytes)

    def receive_eof(self) -> None:
        self._eof = True

    # --- events out -------------------------------------------------------------------------

    def next_event(self):
        splitter = self._splitter
        while not self._closed:
            try:
                parts = splitter.next_view()
            except FramingError as e:
                return self._fail(f"the agent's reply stream is broken: {e.message}")
            if parts is None:
                if not self._eof:
                    self._plan_receive(splitter.pending)
                    return NEED_DATA
                if splitter.pending:
                    return self._fail(f"the agent closed the connection in the middle of a "
                                      f"frame ({splitter.pending} bytes pending)",
                                      StatusCode.UNAVAILABLE)
                self._closed = True
                break
            kind, method, status, request_id, body = parts
            if kind != _REPLY:
                return self._fail(f"the agent sent a frame of kind {kind}, not a reply")
            if request_id == 0 and status:  # an error about the connection
                self._closed = True  # the agent closes the connection after this
                return Reply(0, method, status, body)
            if request_id in self._abandoned:
                self._abandoned.discard(request_id)
                continue
            expected = self._outstanding.pop(request_id, None)
            if expected is None:
                return self._fail(f"the agent replied to request {request_id}, which is not "
                                  "awaiting a reply")
            # An error about the frame itself (an oversized body, say) names no method.
            if method != expected and not (method == 0 and status):
                return self._fail(f"the agent's reply to request {request_id} is for method "
                                  f"{method}, the request was for method {expected}")
            return Reply(request_id, method, status, body)
        return CLOSED

    def _plan_receive(self, pending: int) -> None:
        """What get_buffer() offers next: as ServerConnection's, without a budget."""
        self._offer, self.receive_whole = next_receive(self._splitter.needed, pending,
                                                       self._receive_bytes)

    def _fail(self, message: str, code: int = StatusCode.INTERNAL) -> ProtocolError:
        self._closed = True
        return ProtocolError(code, message)
