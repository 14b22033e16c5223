"""The gRPC front: `AWS.SageMaker.Edge.Agent` over a UNIX socket the agent owns, for
applications written for the original agent's gRPC API.

A small unary gRPC server on the `h2` sans-IO HTTP/2 library, in the framed socket's style:
the agent binds and accepts the socket itself (edge_agent.transport.socket_files), reads the peer's
credentials once per connection and hands the same Caller to the service, so shared-memory
permissions are checked exactly as on the framed socket. One reader thread per connection
feeds bytes to h2; each complete request runs on a worker pool shared by all connections
(edge_agent_grpc_max_workers calls at once), so several calls on one HTTP/2 connection, and
calls on different models, run in parallel. Writes to a connection take its lock; what of
a reply HTTP/2 flow control holds back waits in the connection's backlog, and the reader
thread sends it as the peer opens its window: a worker never waits for a client. A watch
thread, only while a backlog waits, closes a connection whose client does not take its
replies for edge_agent_send_timeout_seconds. docs/PROTOCOL.md says why h2 and not grpcio or
grpclib.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from edge_agent.api.rpcs import BY_GRPC_PATH, Api, Outcome
from edge_agent.config import AgentConfig
from edge_agent.errors import StatusCode
from edge_agent.transport.pending import PendingBudget, connection_slot
from edge_agent.api.service import AgentService
from edge_agent.api.caller import Caller
from edge_agent.transport.socket_files import (accept_until, bind_socket, peer_credentials,
                                    remove_socket_file, timeval)

from edge_agent.protocol.grpc_connection import (CONNECTION_WINDOW, MAX_FRAME, MAX_HEADER_LIST,
                                                 MESSAGE_PREFIX, STREAM_WINDOW, parse_timeout,
                                                 percent_encode)
from edge_agent.protocol.grpc_connection import RESPONSE_HEADERS as _RESPONSE_HEADERS

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024
# A connection over edge_agent_max_connections is answered RESOURCE_EXHAUSTED for this long,
# by at most MAX_REFUSING threads at once; beyond, it is closed unanswered.
REFUSAL_SECONDS = 2.0
MAX_REFUSING = 4


class _Call:
    """One stream: its request message as it arrives, until answered."""
    __slots__ = ("stream_id", "rpc", "deadline", "data", "length", "answered", "remote_closed",
                 "started", "held", "reply")

    def __init__(self, stream_id: int, rpc, deadline: float | None):
        self.started = time.monotonic()  # a request still incomplete after the frame timeout goes
        self.stream_id = stream_id
        self.rpc = rpc
        self.deadline = deadline
        self.data = bytearray()
        self.length: int | None = None  # the message length, once its prefix arrived
        self.answered = False  # a reply is on its way or sent: the rest of the stream is ignored
        self.remote_closed = False
        self.held = 0  # bytes held against the agent's PendingBudget: until a worker takes it
        self.reply = memoryview(b"")  # what flow control has not let out yet of the reply


class GrpcServer:
    """Serves gRPC on path until stop(); start() binds and accepts in a thread of its own."""

    def __init__(self, service: AgentService, config: AgentConfig, path: str | None = None,
                 pending: PendingBudget | None = None):
        self.api = Api(service, service.metrics.call_counter("grpc"))
        self.config = config
        # Shared with the framed socket when the agent runs both (cli); else this front's own.
        self.pending = pending or PendingBudget(
            config.pending_budget_bytes, config.edge_agent_connection_reserve_bytes)
        self.path = path or config.edge_agent_grpc_socket_path
        self.workers = ThreadPoolExecutor(config.edge_agent_grpc_max_workers,
                                          thread_name_prefix="edge-agent-grpc")
        self._stopping = threading.Event()
        self._connections: set[GrpcConnection] = set()
        service.metrics.watch_connections("grpc", self._connections.__len__)
        self._refusing = 0  # connections over the limit being told so
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "GrpcServer":
        self._listener = listener = bind_socket(self.path, self.config)
        self._inode = os.stat(self.path).st_ino
        self._thread = threading.Thread(target=self._serve, args=(listener,),
                                        name="edge-agent-grpc-accept", daemon=True)
        self._thread.start()
        log.info("gRPC front serving on unix://%s", self.path)
        return self

    def _serve(self, listener: socket.socket) -> None:
        try:
            accept_until(listener, self._stopping, self._start_connection)
        except OSError as e:
            log.error("the gRPC front stopped accepting: %s", e)

    def stop(self, grace: float = 2.0) -> None:
        """GOAWAY to every client, then up to `grace` seconds for calls in progress to be
        answered; then the connections close. The socket file is removed first, so no new
        client arrives meanwhile."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            remove_socket_file(self.path, self._inode)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.go_away()
        deadline = time.monotonic() + grace
        for connection in connections:
            connection.wait_idle(deadline)
        for connection in connections:
            connection.close()
        self.workers.shutdown(wait=True, cancel_futures=True)

    def _start_connection(self, sock: socket.socket) -> None:
        limit = self.config.edge_agent_max_connections
        try:
            connection = GrpcConnection(self, sock)
        except OSError as e:  # the client left before we could ask who it is
            log.debug("gRPC client connection ended at once: %s", e)
            sock.close()
            return
        uid = connection.caller.uid
        with self._lock:
            held: dict[int, int] = {}
            for other in self._connections:
                held[other.caller.uid] = held.get(other.caller.uid, 0) + 1
            admitted, owner = connection_slot(uid, held, limit)
            if owner is not None:
                # Under its guarantee: an idle connection of the user with the most slots,
                # past its own share, makes room (GOAWAY saying why), as the framed front does.
                admitted = self._evict_idle(owner)
            full = not admitted
            if not full:
                self._connections.add(connection)
        if full:
            connection.pending.close()
            if len(self._connections) >= limit:
                reason = (f"too many clients (edge_agent_max_connections is {limit}); "
                          "try again later")
            else:
                reason = (f"this user's clients hold {held.get(uid, 0)} of the {limit} "
                          "connections (edge_agent_max_connections), and the rest are kept "
                          "for other users; try again later")
            with self._lock:
                refusing = self._refusing < MAX_REFUSING
                self._refusing += refusing
            if refusing:
                threading.Thread(target=self._refuse, args=(sock, reason), daemon=True,
                                 name="edge-agent-grpc-refuse").start()
            else:
                sock.close()  # a flood: no thread for each
            return
        threading.Thread(target=self._serve_connection, args=(connection,), daemon=True,
                         name="edge-agent-grpc-conn").start()

    def _evict_idle(self, owner: int) -> bool:
        """(Under the lock.) Close an idle connection of the user `owner`, if it has one."""
        reason = (f"closed to make room for another user's client (edge_agent_max_connections "
                  f"is {self.config.edge_agent_max_connections}, shared fairly by the users "
                  "connected); connect again")
        return any(c.caller.uid == owner and c.evict(reason) for c in list(self._connections))

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        try:
            _refuse(sock, reason)
        finally:
            with self._lock:
                self._refusing -= 1

    def _serve_connection(self, connection: "GrpcConnection") -> None:
        try:
            connection.run()
        except OSError as e:
            log.debug("gRPC client connection ended: %s", e)
        except Exception:  # a fault of ours: this connection ends, the agent keeps serving
            log.exception("a gRPC connection (pid %d) failed with an internal error",
                          connection.caller.pid)
        finally:
            with self._lock:  # first: a client that saw the close may connect again at once
                self._connections.discard(connection)
            connection.close()


def _refuse(sock: socket.socket, reason: str) -> None:
    """Answer the calls of a connection over the limit with RESOURCE_EXHAUSTED and the reason,
    as the framed socket does, for at most REFUSAL_SECONDS; then GOAWAY and close.

    A bare GOAWAY would not do: gRPC clients take one that comes before any call for a
    transient failure and reconnect at once, again and again, instead of failing the call."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    conn.initiate_connection()
    deadline = time.monotonic() + REFUSAL_SECONDS
    try:
        sock.sendall(conn.data_to_send())
        answered = False
        while not answered and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(RECV_BYTES)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    conn.send_headers(event.stream_id, _RESPONSE_HEADERS + [
                        (b"grpc-status", b"%d" % StatusCode.RESOURCE_EXHAUSTED),
                        (b"grpc-message", percent_encode(reason))], end_stream=True)
                    answered = True
            sock.sendall(conn.data_to_send())
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass  # it has gone, or spoke no HTTP/2: closing is all that is left
    finally:
        sock.close()


class GrpcConnection:
    """One client's HTTP/2 connection: the reader loop, and the replies workers send."""

    def __init__(self, server: GrpcServer, sock: socket.socket):
        self.server = server
        self.sock = sock
        self.caller: Caller = peer_credentials(sock)
        self.max_message = server.config.edge_agent_max_frame_bytes
        self.max_streams = server.config.edge_agent_grpc_max_workers
        # This connection's share of the pending budget, for all its calls (its reserve, then
        # the user's fair part of the rest: edge_agent.transport.pending); closed with the connection.
        self.pending = server.pending.holder(self.caller.uid)
        self.send_timeout = server.config.edge_agent_send_timeout_seconds
        self.request_timeout = server.config.edge_agent_frame_timeout_seconds
        self.idle_timeout = server.config.edge_agent_idle_timeout_seconds
        self._receive_timeout = 0.0  # what SO_RCVTIMEO is set to now (0: wait for ever)
        # When the connection last had a call open or received bytes: the idle clock's start.
        self._active_at = time.monotonic()
        # What we send is ours and well-formed: h2 need not check it again on every call.
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self._cond = threading.Condition()  # guards h2 and writes to sock
        self._calls: dict[int, _Call] = {}
        self._backlog: dict[int, _Call] = {}  # calls whose reply waits for the peer's window
        self._sent_at = 0.0  # when a reply in the backlog last made progress
        self._watching = False  # a thread watches the backlog for a client that stopped reading
        self._running = 0  # calls handed to a worker, not yet answered
        self._draining = False
        self._closed = False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(self.send_timeout))

    # --- the reader thread ----------------------------------------------------------------

    def run(self) -> None:
        with self._cond:
            self.h2.initiate_connection()
            # Take effect when the client acknowledges them, as HTTP/2 has it.
            self.h2.update_settings({
                SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            })
            # Accepted at once, not only once acknowledged: h2 checks a whole received chunk
            # against the size in force when it began, and the client's acknowledgement and
            # its first large frame may arrive in one chunk.
            self.h2.max_inbound_frame_size = MAX_FRAME
            self.h2.increment_flow_control_window(CONNECTION_WINDOW)
            self._flush()
        self._arm_receive_timeout(self.idle_timeout)  # even the preface may never come
        buffer = bytearray(RECV_BYTES)
        while True:
            try:
                n = self.sock.recv_into(buffer)
            except BlockingIOError:  # SO_RCVTIMEO: nothing came for as long as it allows
                n = None
            if n is None and self._waited_idle():
                return
            if n is None or self._request_stalled():
                if n is None and not self._incomplete():
                    continue  # a call ran meanwhile: the idle clock starts again from its end
                log.info("closing a gRPC connection (pid %d): a request was not completed within "
                         "%g s (edge_agent_frame_timeout_seconds)", self.caller.pid,
                         self.request_timeout)
                return
            if not n:
                return
            with self._cond:
                try:
                    events = self.h2.receive_data(bytes(memoryview(buffer)[:n]))
                except h2.exceptions.ProtocolError as e:
                    log.info("closing a gRPC connection (pid %d): HTTP/2 protocol error: %s",
                             self.caller.pid, e)
                    self._flush()  # h2 has queued a GOAWAY that says why
                    return
                for event in events:
                    self._on_event(event)
                self._send_backlog()  # a WINDOW_UPDATE may have made room
                self._flush()
                self._cond.notify_all()  # the backlog's watch re-checks its clock
                self._active_at = time.monotonic()
                self._arm_receive_timeout(
                    self.request_timeout if self._incomplete() else self.idle_timeout)
            if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                return

    def _arm_receive_timeout(self, seconds: float) -> None:
        """As on the framed socket, the kernel bounds the wait (SO_RCVTIMEO): for the rest of
        a request while one is incomplete, else for the next one (the idle timeout; 0: for
        ever). The option is set only when the bound changes, never per read."""
        if seconds != self._receive_timeout:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(seconds))
            self._receive_timeout = seconds

    def _incomplete(self) -> bool:
        with self._cond:
            return any(not c.answered for c in self._calls.values())

    def _waited_idle(self) -> bool:
        """After SO_RCVTIMEO fired with no request incomplete: True (and a GOAWAY sent) if no
        call has been open for edge_agent_idle_timeout_seconds; else the wait is re-armed for
        what is left. A call that outlasts the timeout is never cut: the clock starts when
        the connection's last call ends (workers answer while this thread waits in recv)."""
        with self._cond:
            if not self.idle_timeout or any(not c.answered for c in self._calls.values()):
                return False
            now = time.monotonic()
            if self._calls or self._running:
                self._active_at = now
            left = self._active_at + self.idle_timeout - now
            if left > 0:
                self._arm_receive_timeout(max(left, 0.001))
                return False
            log.info("closing a gRPC connection (pid %d) idle for %g s "
                     "(edge_agent_idle_timeout_seconds)", self.caller.pid, self.idle_timeout)
            # NO_ERROR: nothing was lost; a gRPC client reconnects for its next call.
            self.h2.close_connection(ErrorCodes.NO_ERROR, additional_data=(
                f"connection closed after {self.idle_timeout:g} s without a request "
                "(edge_agent_idle_timeout_seconds); connect again").encode())
            try:
                self._flush()
            except OSError:
                pass
            return True

    def _request_stalled(self) -> bool:
        """A request trickling in for longer than the frame timeout (bytes keep coming, so
        SO_RCVTIMEO never fires) is given up too."""
        limit = time.monotonic() - self.request_timeout
        with self._cond:
            return any(not c.answered and c.started < limit for c in self._calls.values())

    def _on_event(self, event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event.stream_id, dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            # Acknowledged at once, whether kept or ignored: what is kept is charged to the
            # pending budget (a call past it is refused and its bytes dropped), and an
            # ignored stream must not stall the connection.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            call = self._calls.get(event.stream_id)
            if call is not None and not call.answered:
                self._on_data(call, event.data)
        elif isinstance(event, h2.events.StreamEnded):  # also after the DATA that ended it
            self._on_end(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            call = self._calls.pop(event.stream_id, None)  # a worker's reply to it is dropped
            self._backlog.pop(event.stream_id, None)
            if call is not None:
                self._release(call)

    def _on_request(self, stream_id: int, headers: dict) -> None:
        # h2 enforces SETTINGS_MAX_CONCURRENT_STREAMS only once the client acknowledged it
        # (then by closing the connection); until then the streams beyond it are refused
        # here, so a connection never has more calls open than there are workers. Counted
        # in our calls, not h2's open streams: h2 has already opened every stream of the
        # chunk it was given when we see the first one.
        if self._draining or len(self._calls) >= self.max_streams:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        timeout = parse_timeout(headers.get(b"grpc-timeout", b""))
        call = _Call(stream_id, BY_GRPC_PATH.get(path),
                     None if timeout is None else time.monotonic() + timeout)
        self._calls[stream_id] = call
        content_type = headers.get(b"content-type", b"")
        if headers.get(b":method") != b"POST" or not content_type.startswith(b"application/grpc"):
            self._answer_now(call, Outcome(
                StatusCode.INVALID_ARGUMENT, "not a gRPC request: expected POST with content-type "
                f"application/grpc, got {headers.get(b':method', b'?').decode('latin-1')} "
                f"{content_type.decode('latin-1') or 'without a content-type'}"))
        elif call.rpc is None:
            self._answer_now(call, self.server.api.unknown(path))

    def _on_data(self, call: _Call, data: bytes) -> None:
        # Charged as it is buffered, as the framed socket charges its incomplete frames.
        if not self.pending.change(call.held, call.held + len(data)):
            self._answer_now(call, Outcome(StatusCode.RESOURCE_EXHAUSTED, self.pending.refusal()))
            return
        call.held += len(data)
        call.data += data
        if call.length is None and len(call.data) >= MESSAGE_PREFIX.size:
            compressed, call.length = MESSAGE_PREFIX.unpack_from(call.data)
            if compressed:
                self._answer_now(call, Outcome(
                    StatusCode.UNIMPLEMENTED, "compressed messages are not supported: this "
                    "agent accepts identity encoding only (grpc-accept-encoding: identity)"))
            elif call.length > self.max_message:
                # Refused on its prefix: nothing of the message is kept.
                self._answer_now(call, Outcome(
                    StatusCode.RESOURCE_EXHAUSTED, f"message of {call.length} bytes exceeds the "
                    f"limit of {self.max_message} bytes"))
        if (not call.answered and call.length is not None
                and len(call.data) > MESSAGE_PREFIX.size + call.length):
            self._answer_now(call, _not_one_message(call))

    def _on_end(self, stream_id: int) -> None:
        call = self._calls.get(stream_id)
        if call is None:
            return
        call.remote_closed = True
        if call.answered:
            return
        if call.length is None or len(call.data) != MESSAGE_PREFIX.size + call.length:
            self._answer_now(call, _not_one_message(call))
            return
        call.answered = True
        body = bytes(memoryview(call.data)[MESSAGE_PREFIX.size:])
        call.data = bytearray()
        self._running += 1
        try:
            # Still charged while it waits for a worker: the queue is bounded by the budget.
            self.server.workers.submit(self._serve_call, call, body)
        except RuntimeError:  # the pool is shut down: the agent is stopping
            self._running -= 1
            self._release(call)
            self._send_reply(call, Outcome(StatusCode.UNAVAILABLE, "the agent is stopping"))

    def _answer_now(self, call: _Call, outcome: Outcome) -> None:
        """Answer on the reader thread (the request is refused before it runs)."""
        call.answered = True
        call.data = bytearray()
        self._release(call)
        self._send_reply(call, outcome)

    def _release(self, call: _Call) -> None:
        """Give back what the call holds of the pending budget (once: it then holds 0)."""
        self.pending.change(call.held, 0)
        call.held = 0

    # --- workers --------------------------------------------------------------------------

    def _serve_call(self, call: _Call, body: bytes) -> None:
        try:
            with self._cond:
                self._release(call)  # handed over: the body is the call's now
                if self._closed or self._calls.get(call.stream_id) is not call:
                    return  # reset, or its connection closed, while it waited: nobody to answer
            if call.deadline is not None and time.monotonic() > call.deadline:
                outcome = Outcome(StatusCode.DEADLINE_EXCEEDED,
                                  "the call's deadline passed before it could start")
            else:
                outcome = self.server.api.serve(call.rpc, body, self.caller)
            with self._cond:
                self._send_reply(call, outcome)
        except OSError as e:
            log.debug("gRPC client went away before its reply: %s", e)
            self._shutdown_socket()
        finally:
            with self._cond:
                self._running -= 1
                self._active_at = time.monotonic()  # the idle clock starts again from here
                self._cond.notify_all()

    def _send_reply(self, call: _Call, outcome: Outcome) -> None:
        """Headers, the message and trailers, or trailers only for a failure, as far as flow
        control lets them go now; holds the condition's lock and never waits for the client:
        what is held back goes to the backlog, which the reader thread sends later."""
        if self._calls.get(call.stream_id) is not call or self._closed:
            return  # reset by the client, or the connection is gone
        try:
            # An Outcome's reply is the error message when the call failed, else its bytes.
            if outcome.code != StatusCode.OK:
                self.h2.send_headers(call.stream_id, _RESPONSE_HEADERS + [
                    (b"grpc-status", b"%d" % outcome.code),
                    (b"grpc-message", percent_encode(cast(str, outcome.reply)))],
                    end_stream=True)
                self._end_reply(call)
            else:
                reply = cast(bytes, outcome.reply)
                self.h2.send_headers(call.stream_id, _RESPONSE_HEADERS)
                call.reply = memoryview(MESSAGE_PREFIX.pack(0, len(reply)) + reply)
                self._send_more(call)
        except h2.exceptions.ProtocolError:  # StreamClosedError, or a stream h2 closed itself
            self._drop(call)  # the client reset the stream: nobody waits for this reply
        finally:
            self._flush()

    def _send_more(self, call: _Call) -> None:
        """As much of the call's reply as the windows allow, then its trailers once all of it
        is out; until then the call waits in the backlog."""
        data = call.reply
        while data:
            room = min(self.h2.local_flow_control_window(call.stream_id),
                       self.h2.max_outbound_frame_size, len(data))
            if room <= 0:
                break
            self.h2.send_data(call.stream_id, data[:room].tobytes())
            data = data[room:]
            self._sent_at = time.monotonic()
        call.reply = data
        if data:
            if call.stream_id not in self._backlog:
                self._backlog[call.stream_id] = call
                self._watch_backlog()
            return
        self._backlog.pop(call.stream_id, None)
        self.h2.send_headers(call.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        self._end_reply(call)

    def _end_reply(self, call: _Call) -> None:
        if not call.remote_closed:
            # Answered before the request ended (refused early): the rest is not wanted.
            self.h2.reset_stream(call.stream_id, ErrorCodes.NO_ERROR)
        self._calls.pop(call.stream_id, None)

    def _drop(self, call: _Call) -> None:
        self._backlog.pop(call.stream_id, None)
        self._calls.pop(call.stream_id, None)

    def _send_backlog(self) -> None:
        """On the reader thread, with the lock: send on the replies that wait for a window."""
        for call in list(self._backlog.values()):
            if self._calls.get(call.stream_id) is not call:
                self._backlog.pop(call.stream_id, None)  # reset meanwhile
                continue
            try:
                self._send_more(call)
            except h2.exceptions.ProtocolError:
                self._drop(call)

    def _watch_backlog(self) -> None:
        """Start the watch if none runs (with the lock held)."""
        if not self._watching:
            self._watching = True
            self._sent_at = time.monotonic()
            threading.Thread(target=self._watch, daemon=True,
                             name="edge-agent-grpc-send").start()

    def _watch(self) -> None:
        """While replies wait for the client's window: close the connection once none made
        progress for edge_agent_send_timeout_seconds (the reader then ends it, as for a
        client that stops reading on the framed socket)."""
        with self._cond:
            while self._backlog and not self._closed:
                left = self._sent_at + self.send_timeout - time.monotonic()
                if left <= 0:
                    log.info("closing a gRPC connection (pid %d): the client has not read its "
                             "reply for %g s", self.caller.pid, self.send_timeout)
                    self._shutdown_socket()  # wakes the reader, which closes the connection
                    break
                self._cond.wait(left)
            self._watching = False

    # --- both -----------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self._closed:
            self.sock.sendall(data)

    def go_away(self) -> None:
        """Tell the client to open no more calls; the ones it has open still get answers.
        h2 would refuse to send on open streams after its own close_connection(), so the
        GOAWAY frame is written directly."""
        with self._cond:
            if self._closed:
                return
            self._draining = True
            frame = GoAwayFrame(0, last_stream_id=self.h2.highest_inbound_stream_id,
                                error_code=ErrorCodes.NO_ERROR)
            try:
                self._flush()
                self.sock.sendall(frame.serialize())
            except OSError:
                pass

    def evict(self, reason: str) -> bool:
        """Close this connection if it is idle (no call open, running or still sending): a
        GOAWAY (NO_ERROR, `reason`) and the reader woken; False if it is not idle."""
        with self._cond:
            if self._closed or self._draining or self._calls or self._running or self._backlog:
                return False
            self._draining = True
            self.h2.close_connection(ErrorCodes.NO_ERROR, additional_data=reason.encode())
            try:  # without waiting: the caller holds the server's lock, and a client that
                # stopped reading would hold every new connection back for the send timeout
                self.sock.send(self.h2.data_to_send(), socket.MSG_DONTWAIT)
            except OSError:
                pass  # the GOAWAY is a courtesy; the connection closes either way
        log.info("closing an idle gRPC connection (pid %d) to make room for another user's",
                 self.caller.pid)
        try:
            self.sock.shutdown(socket.SHUT_RD)  # the reader sees the end and closes
        except OSError:
            pass
        return True

    def wait_idle(self, deadline: float) -> None:
        with self._cond:
            while (self._running or self._backlog) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _shutdown_socket(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread
        except OSError:
            pass

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for call in self._calls.values():
                self._release(call)
            self.pending.close()
            self._cond.notify_all()
        self._shutdown_socket()
        self.sock.close()


def _not_one_message(call: _Call) -> Outcome:
    return Outcome(StatusCode.INVALID_ARGUMENT,
                   f"malformed {call.rpc.name} request: a unary call carries exactly one "
                   "gRPC message")


def start(service: AgentService, config: AgentConfig, path: str | None = None,
          pending: PendingBudget | None = None) -> GrpcServer:
    """A started GrpcServer on path (default: edge_agent_grpc_socket_path); stop it with
    .stop(grace). The socket file gets the same mode and group as the framed socket; the
    bytes of requests it receives count against `pending` (default: a budget of its own)."""
    return GrpcServer(service, config, path, pending).start()
