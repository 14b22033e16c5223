"""The agent's side of one gRPC connection, sans-IO: h2's HTTP/2 state machine and the unary
gRPC rules over it.

The loop that owns the socket (edge_agent.transport.grpc_front) does only this:

    conn.initiate(now); send conn.data_to_send()
    bytes arrive     → for call in conn.receive_data(data, now): run it (call.rpc is None for
                       a path this agent does not serve), later conn.reply(stream_id, code,
                       reply, now); send conn.data_to_send()
    end of stream    → conn.close()
    at conn.deadline() → conn.check_timers(now): a reason string means the connection is
                       over (send what is left, close)
    stopping         → conn.go_away(); evicting → conn.evict(reason)

Decided here: the 5-byte message framing, the size limit per call, grpc-timeout deadlines,
what is refused before it runs (not gRPC, compressed, too large, not one message, the
pending budget), the reply's headers, message and trailers, HTTP/2 flow control (a reply
the peer's window holds back waits in a backlog, sent on as WINDOW_UPDATEs arrive), the
frame, idle and send timeouts, and GOAWAY. Time comes in as an argument; nothing here reads a
clock or touches a socket (tests/unit/test_grpc_connection.py feeds it an h2 client's bytes).
h2 is imported with this module, which only the gRPC front imports.
"""
from __future__ import annotations

import re
import struct
from typing import Any, Callable, Mapping, NamedTuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from edge_agent.errors import StatusCode

# Each gRPC message: a compressed flag and a big-endian length, then the protobuf bytes.
MESSAGE_PREFIX = struct.Struct(">BI")
# Receive windows: large enough that a message of some MiB streams in without waiting a
# round trip per 64 KiB (the HTTP/2 default); what is buffered stays bounded by the message
# limit per call and, for all clients of both fronts together, by the pending budget.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME = 1024 * 1024  # fewer, larger DATA frames: less Python per byte
MAX_HEADER_LIST = 16 * 1024
# Calls one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_STREAMS = 16
MAX_MESSAGE_BYTES = 1024  # of an error message, in grpc-message
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_TIMEOUT_UNIT = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                    (b"grpc-accept-encoding", b"identity")]


def percent_encode(message: str) -> bytes:
    """grpc-message as the gRPC spec has it: UTF-8, every byte outside printable ASCII and
    '%' itself as %XX. Surrounding blanks go (a header value cannot carry them). Only the
    first MAX_MESSAGE_BYTES of UTF-8 are sent, then "...": the header stays well under the
    8 KiB of metadata gRPC clients accept (an encoded byte takes up to 3), and HPACK's cost,
    which grows with the square of a header's length, stays small."""
    raw = message.strip().encode("utf-8", "replace")
    if len(raw) > MAX_MESSAGE_BYTES:  # cut at a character's boundary, not inside one
        raw = raw[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}"
                   for b in raw).encode("ascii")


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a grpc-timeout header ("100m", "5S"); None when malformed (then ignored)."""
    match = _TIMEOUT.fullmatch(value)
    return int(match[1]) * _TIMEOUT_UNIT[match[2]] if match else None


class Call(NamedTuple):
    """A complete request, for the loop to run and answer with reply(stream_id, ...).
    `rpc`: routes[path], None for a path this agent does not serve; `deadline`: the
    monotonic time its grpc-timeout ends (None: none given)."""
    stream_id: int
    rpc: Any
    path: str
    body: bytes
    deadline: float | None


class _Stream:
    """One stream's request as it arrives, until answered."""
    __slots__ = ("stream_id", "rpc", "path", "deadline", "data", "length", "answered",
                 "remote_closed", "started", "held", "reply")

    def __init__(self, stream_id: int, rpc, path: str, deadline: float | None, now: float):
        self.started = now  # a request still incomplete after the frame timeout ends it all
        self.stream_id = stream_id
        self.rpc = rpc
        self.path = path
        self.deadline = deadline
        self.data = bytearray()
        self.length: int | None = None  # the message length, once its prefix arrived
        self.answered = False  # handed out or refused: the rest of the stream is ignored
        self.remote_closed = False
        self.held = 0  # bytes held against the pending budget, until handed out
        self.reply = memoryview(b"")  # what flow control has not let out yet of the reply


class GrpcConnection:
    """One client's HTTP/2 connection. `budget`: this connection's share of the agent's
    pending budget (change(held, wanted) → bool, refusal() → str); `routes`: gRPC path → rpc.
    """

    def __init__(self, budget, routes: Mapping[str, Any], max_message: int,
                 frame_timeout: float, idle_timeout: float, send_timeout: float,
                 max_streams: int = MAX_STREAMS):
        self.budget = budget
        self.routes = routes
        self.max_message = max_message
        self.max_streams = max_streams
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        # What we send is ours and well-formed: h2 need not check it again on every call.
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self._streams: dict[int, _Stream] = {}
        self._backlog: dict[int, _Stream] = {}  # answered, waiting for the peer's window
        # Calls handed out, not yet replied to, by stream id: a call whose stream the client
        # reset still counts against max_streams until it ends.
        self._running: set[int] = set()
        self._active_at = 0.0  # when a call last ended or bytes last came: the idle clock
        self._sent_at = 0.0  # when a reply in the backlog last made progress
        self._out: list[bytes] = []  # written directly (GOAWAY while streams are open)
        self._ready: list[Call] = []  # calls to hand out at the end of receive_data
        self.draining = False  # GOAWAY sent: no new calls
        self.closed = False
        self.close_reason = ""

    # --- bytes in -----------------------------------------------------------------------

    def initiate(self, now: float) -> None:
        """The server preface and our settings (data_to_send() has them)."""
        self._active_at = now
        self.h2.initiate_connection()
        # Take effect when the client acknowledges them, as HTTP/2 has it.
        self.h2.update_settings({
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        # Accepted at once, not only once acknowledged: h2 checks a whole received chunk
        # against the size in force when it began, and the client's acknowledgement and its
        # first large frame may arrive in one chunk.
        self.h2.max_inbound_frame_size = MAX_FRAME
        self.h2.increment_flow_control_window(CONNECTION_WINDOW)

    def receive_data(self, data: bytes, now: float) -> list[Call]:
        """Feed bytes from the peer: the calls now complete, to be run. After an HTTP/2
        protocol error or the peer's GOAWAY, `closed` is set (what is queued to send says
        why)."""
        if self.closed:
            return []
        self._active_at = now
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.closed = True
            self.close_reason = f"HTTP/2 protocol error: {e}"
            return []  # h2 has queued a GOAWAY that says why
        calls = self._ready
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._on_request(event.stream_id, dict(event.headers), now)
            elif isinstance(event, h2.events.DataReceived):
                # Acknowledged at once, whether kept or ignored: what is kept is charged to
                # the pending budget (a call past it is refused, its bytes dropped), and an
                # ignored stream must not stall the connection.
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                stream = self._streams.get(event.stream_id)
                if stream is not None and not stream.answered:
                    self._on_data(stream, event.data)
            elif isinstance(event, h2.events.StreamEnded):  # also after the DATA that ended it
                call = self._on_end(event.stream_id)
                if call is not None:
                    calls.append(call)
            elif isinstance(event, h2.events.StreamReset):
                stream = self._streams.pop(event.stream_id, None)  # its reply is dropped
                self._backlog.pop(event.stream_id, None)
                if stream is not None:
                    self._release(stream)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
                self.close_reason = "the client sent GOAWAY"
        self._send_backlog(now)  # a WINDOW_UPDATE may have made room
        if calls:
            self._ready = []
        return calls

    def _on_request(self, stream_id: int, headers: dict, now: float) -> None:
        # h2 enforces SETTINGS_MAX_CONCURRENT_STREAMS only once the client acknowledged it
        # (then by closing the connection); until then the streams beyond it are refused
        # here. Counted in our streams, not h2's open ones: h2 has already opened every
        # stream of the chunk it was given when we see the first one. A call still running
        # counts though the client reset its stream: else resets would bypass the limit.
        if self.draining or self._open_calls() >= self.max_streams:
            try:
                self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.ProtocolError:  # the client reset it in the same chunk
                pass
            return
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        timeout = parse_timeout(headers.get(b"grpc-timeout", b""))
        stream = _Stream(stream_id, self.routes.get(path), path,
                         None if timeout is None else now + timeout, now)
        self._streams[stream_id] = stream
        content_type = headers.get(b"content-type", b"")
        if headers.get(b":method") != b"POST" or not content_type.startswith(b"application/grpc"):
            self._refuse(stream, StatusCode.INVALID_ARGUMENT,
                         "not a gRPC request: expected POST with content-type "
                         f"application/grpc, got {headers.get(b':method', b'?').decode('latin-1')} "
                         f"{content_type.decode('latin-1') or 'without a content-type'}", now)
        elif stream.rpc is None:  # answered at once (by the loop: the front counts it)
            stream.answered = True
            self._running.add(stream_id)
            self._ready.append(Call(stream_id, None, path, b"", stream.deadline))

    def _on_data(self, stream: _Stream, data: bytes) -> None:
        # Charged as it is buffered, as the framed socket charges its incomplete frames.
        now = self._active_at
        if not self.budget.change(stream.held, stream.held + len(data)):
            self._refuse(stream, StatusCode.RESOURCE_EXHAUSTED, self.budget.refusal(), now)
            return
        stream.held += len(data)
        stream.data += data
        if stream.length is None and len(stream.data) >= MESSAGE_PREFIX.size:
            compressed, stream.length = MESSAGE_PREFIX.unpack_from(stream.data)
            if compressed:
                self._refuse(stream, StatusCode.UNIMPLEMENTED,
                             "compressed messages are not supported: this agent accepts "
                             "identity encoding only (grpc-accept-encoding: identity)", now)
            elif stream.length > self.max_message:
                # Refused on its prefix: nothing of the message is kept.
                self._refuse(stream, StatusCode.RESOURCE_EXHAUSTED,
                             f"message of {stream.length} bytes exceeds the limit of "
                             f"{self.max_message} bytes", now)
        if (not stream.answered and stream.length is not None
                and len(stream.data) > MESSAGE_PREFIX.size + stream.length):
            self._refuse(stream, StatusCode.INVALID_ARGUMENT, _not_one_message(stream), now)

    def _on_end(self, stream_id: int) -> Call | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        stream.remote_closed = True
        if stream.answered:
            return None
        now = self._active_at
        if stream.length is None or len(stream.data) != MESSAGE_PREFIX.size + stream.length:
            self._refuse(stream, StatusCode.INVALID_ARGUMENT, _not_one_message(stream), now)
            return None
        stream.answered = True
        body = bytes(memoryview(stream.data)[MESSAGE_PREFIX.size:])
        stream.data = bytearray()
        self._release(stream)  # handed over: the body is the call's now
        if stream.deadline is not None and now > stream.deadline:
            self._running.add(stream_id)
            self.reply(stream_id, StatusCode.DEADLINE_EXCEEDED,
                       "the call's deadline passed before it could start", now)
            return None
        self._running.add(stream_id)
        return Call(stream_id, stream.rpc, stream.path, body, stream.deadline)

    def _refuse(self, stream: _Stream, code: int, message: str, now: float) -> None:
        """Answer at once: the request is refused before it runs."""
        stream.answered = True
        stream.data = bytearray()
        self._release(stream)
        self._send_reply(stream, code, message, now)

    def _release(self, stream: _Stream) -> None:
        """Give back what the stream holds of the pending budget (once: it then holds 0)."""
        if stream.held:
            self.budget.change(stream.held, 0)
            stream.held = 0

    # --- replies out --------------------------------------------------------------------

    def reply(self, stream_id: int, code: int, reply, now: float) -> None:
        """The outcome of a Call handed out by receive_data (`reply`: the serialized
        response when `code` is OK, else the error message). Dropped if the client reset the
        stream or the connection is closed meanwhile."""
        self._running.discard(stream_id)
        self._active_at = now  # the idle clock starts again from here
        stream = self._streams.get(stream_id)
        if stream is None or self.closed:
            return
        self._send_reply(stream, code, reply, now)

    def _send_reply(self, stream: _Stream, code: int, reply, now: float) -> None:
        """Headers, the message and trailers, or trailers only for a failure, as far as flow
        control lets them go now; what is held back waits in the backlog."""
        try:
            if code != StatusCode.OK:
                self.h2.send_headers(stream.stream_id, RESPONSE_HEADERS + [
                    (b"grpc-status", b"%d" % code),
                    (b"grpc-message", percent_encode(reply))], end_stream=True)
                self._end_reply(stream)
            else:
                self.h2.send_headers(stream.stream_id, RESPONSE_HEADERS)
                stream.reply = memoryview(MESSAGE_PREFIX.pack(0, len(reply)) + reply)
                self._send_more(stream, now)
        except h2.exceptions.ProtocolError:  # StreamClosedError, or a stream h2 closed
            self._drop(stream)  # the client reset the stream: nobody waits for this reply

    def _send_more(self, stream: _Stream, now: float) -> None:
        """As much of the reply as the windows allow, then its trailers once all of it is
        out; until then the stream waits in the backlog."""
        data = stream.reply
        while data:
            room = min(self.h2.local_flow_control_window(stream.stream_id),
                       self.h2.max_outbound_frame_size, len(data))
            if room <= 0:
                break
            self.h2.send_data(stream.stream_id, data[:room].tobytes())
            data = data[room:]
            self._sent_at = now
        stream.reply = data
        if data:
            if stream.stream_id not in self._backlog:
                if not self._backlog:
                    self._sent_at = now  # the send timeout's clock starts
                self._backlog[stream.stream_id] = stream
            return
        self._backlog.pop(stream.stream_id, None)
        self.h2.send_headers(stream.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        self._end_reply(stream)

    def _end_reply(self, stream: _Stream) -> None:
        if not stream.remote_closed:
            # Answered before the request ended (refused early): the rest is not wanted.
            self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        self._streams.pop(stream.stream_id, None)

    def _drop(self, stream: _Stream) -> None:
        self._backlog.pop(stream.stream_id, None)
        self._streams.pop(stream.stream_id, None)

    def _send_backlog(self, now: float) -> None:
        for stream in list(self._backlog.values()):
            if self._streams.get(stream.stream_id) is not stream:
                self._backlog.pop(stream.stream_id, None)  # reset meanwhile
                continue
            try:
                self._send_more(stream, now)
            except h2.exceptions.ProtocolError:
                self._drop(stream)

    def data_to_send(self) -> bytes:
        """What to write to the peer now (possibly nothing)."""
        data = self.h2.data_to_send()
        if self._out:
            data = data + b"".join(self._out)
            self._out.clear()
        return data

    # --- state and time -----------------------------------------------------------------

    @property
    def incomplete(self) -> bool:
        """A request is still arriving."""
        return any(not s.answered for s in self._streams.values())

    @property
    def busy(self) -> bool:
        """A call is open: arriving, running, or its reply still going out."""
        return bool(self._streams or self._running or self._backlog)

    @property
    def running(self) -> int:
        return len(self._running)

    def _open_calls(self) -> int:
        """Streams open, and calls still running whose stream the client reset."""
        streams = self._streams
        return len(streams) + sum(1 for stream_id in self._running if stream_id not in streams)

    def wanted(self, stream_id: int) -> bool:
        """The call of `stream_id` still has someone waiting for its reply (the client has
        not reset its stream, the connection is open): a call no longer wanted is not run,
        and is answered (reply()) only to free its place."""
        return not self.closed and stream_id in self._streams

    def deadline(self) -> float | None:
        """When check_timers() may next have something to do (None: nothing to wait for)."""
        times = [s.started + self.frame_timeout for s in self._streams.values()
                 if not s.answered]
        if self._backlog:
            times.append(self._sent_at + self.send_timeout)
        if self.idle_timeout and not self.busy:
            times.append(self._active_at + self.idle_timeout)
        return min(times) if times else None

    def check_timers(self, now: float) -> str | None:
        """None, or why the connection is over now (a GOAWAY saying so may be queued):
        a request not completed within the frame timeout, a reply the client has not taken
        for the send timeout, or no call for the idle timeout. A call that outlasts the idle
        timeout is never cut: its clock starts when the connection's last call ended."""
        if self.closed:
            return None
        if any(not s.answered and now - s.started > self.frame_timeout
               for s in self._streams.values()):
            return self._end(f"a request was not completed within {self.frame_timeout:g} s "
                             "(edge_agent_frame_timeout_seconds)")
        if self._backlog and now - self._sent_at > self.send_timeout:
            return self._end(f"the client has not read its reply for {self.send_timeout:g} s")
        if self.idle_timeout and not self.busy and now - self._active_at >= self.idle_timeout:
            # NO_ERROR: nothing was lost; a gRPC client reconnects for its next call.
            self.h2.close_connection(ErrorCodes.NO_ERROR, additional_data=(
                f"connection closed after {self.idle_timeout:g} s without a request "
                "(edge_agent_idle_timeout_seconds); connect again").encode())
            return self._end(f"idle for {self.idle_timeout:g} s "
                             "(edge_agent_idle_timeout_seconds)")
        return None

    def _end(self, reason: str) -> str:
        self.closed = True
        self.close_reason = reason
        return reason

    def go_away(self) -> None:
        """Tell the client to open no more calls; the ones it has open still get answers.
        h2 refuses to send on open streams after its own close_connection(), so the GOAWAY
        frame is written directly."""
        if self.closed or self.draining:
            return
        self.draining = True
        self._out.append(GoAwayFrame(0, last_stream_id=self.h2.highest_inbound_stream_id,
                                     error_code=ErrorCodes.NO_ERROR).serialize())

    def evict(self, reason: str) -> bool:
        """End this connection if it is idle (no call open, running or still sending): a
        GOAWAY (NO_ERROR, `reason`) queued and `closed` set; False if it is not idle."""
        if self.closed or self.draining or self.busy:
            return False
        self.draining = True
        self.h2.close_connection(ErrorCodes.NO_ERROR, additional_data=reason.encode())
        self._end(reason)
        return True

    def close(self) -> None:
        """The connection is over: what its calls still hold of the budget is given back.
        Idempotent (the budget share itself is the owner's to close)."""
        self.closed = True
        for stream in self._streams.values():
            self._release(stream)


def _not_one_message(stream: _Stream) -> str:
    name = stream.rpc.name if stream.rpc is not None else stream.path
    return f"malformed {name} request: a unary call carries exactly one gRPC message"


def refusal_connection(reason: str) -> Callable[[bytes], tuple[bytes, bool]]:
    """For a connection over the limit: a function of received bytes → (bytes to send,
    answered), answering its calls RESOURCE_EXHAUSTED with `reason`, then GOAWAY once one
    call was answered. A bare GOAWAY would not do: gRPC clients take one that comes before
    any call for a transient failure and reconnect at once, again and again."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    conn.initiate_connection()
    first = [conn.data_to_send()]

    def feed(data: bytes) -> tuple[bytes, bool]:
        answered = False
        for event in conn.receive_data(data) if data else ():
            if isinstance(event, h2.events.RequestReceived):
                conn.send_headers(event.stream_id, RESPONSE_HEADERS + [
                    (b"grpc-status", b"%d" % StatusCode.RESOURCE_EXHAUSTED),
                    (b"grpc-message", percent_encode(reason))], end_stream=True)
                answered = True
        if answered:
            conn.close_connection()
        out = (first.pop() if first else b"") + conn.data_to_send()
        return out, answered

    return feed
