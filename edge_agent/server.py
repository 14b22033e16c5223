"""The framed UNIX-socket front: a thin loop over edge_agent.protocol and AgentService.

One thread per connection: a call runs on its client's thread, so a slow, stalled or
half-open client holds only its own thread, and predictions from different clients on
different models run in parallel. Requests pipelined on one connection are answered in
order. Framing faults get an error reply and the connection is closed; everything else
(a bad request, an unknown method, a request frame with a non-zero status, a failed call)
gets an error reply and the connection stays open. docs/PROTOCOL.md states the rules.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time

from edge_agent.api import BY_METHOD, Api
from edge_agent.config import AgentConfig
from edge_agent.errors import StatusCode
from edge_agent.pending import PendingBudget
from edge_agent.protocol import HEADER, FrameDecoder, FramingError, Kind, encode_error, encode_reply
from edge_agent.service import AgentService, Caller
from edge_agent.sockets import MAX_FDS, WAITALL_BYTES, close_fds, receive_with_fds
from edge_agent.unix_socket import (ServerError, accept_until, bind_socket, peer_credentials,
                                    remove_socket_file)
from edge_agent.unix_socket import send_quietly as _send_quietly
from edge_agent.unix_socket import timeval as _timeval

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024

__all__ = ["ServerError", "SocketServer", "Connection", "peer_credentials"]


class SocketServer:
    def __init__(self, service: AgentService, config: AgentConfig,
                 pending: PendingBudget | None = None):
        self.service = service
        self.api = Api(service, service.metrics.call_counter("framed"))
        self.config = config
        self.path = config.edge_agent_socket_path
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        # Shared with the gRPC front when the agent runs both (cli); else this front's own.
        self.pending = pending or PendingBudget(config.pending_budget_bytes)
        service.metrics.watch_connections("framed", self._connections.__len__)

    def bind(self) -> None:
        self._listener = bind_socket(self.path, self.config)
        self._inode = os.stat(self.path).st_ino

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        log.info("serving on %s", self.path)
        try:
            accept_until(self._listener, self._stopping, self._start_connection)
        finally:
            self._close_listener()
            self._wake_connections()

    def shutdown(self) -> None:
        self._stopping.set()

    def _wake_connections(self) -> None:
        """Connection threads block in recv(); shutting their sockets down wakes them."""
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            remove_socket_file(self.path, self._inode)

    def _start_connection(self, conn: socket.socket) -> None:
        limit = self.config.edge_agent_max_connections
        with self._lock:
            full = len(self._connections) >= limit
            if not full:
                self._connections.add(conn)
        if full:
            _send_quietly(conn, encode_error(
                StatusCode.RESOURCE_EXHAUSTED, 0,
                f"too many clients (edge_agent_max_connections is {limit}); try again later"))
            conn.close()
            return
        threading.Thread(target=self._serve_connection, args=(conn,), daemon=True,
                         name="edge-agent-conn").start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            Connection(self, conn, peer_credentials(conn)).run()
        except OSError as e:
            log.debug("client connection ended: %s", e)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def dispatch(self, method: int, request_id: int, body: bytes, caller: Caller) -> bytes:
        """One request frame's body in, one reply frame out; never raises for a bad request."""
        rpc = BY_METHOD.get(method)
        code, reply = self.api.unknown(method) if rpc is None else self.api.invoke(rpc, body, caller)
        if code != StatusCode.OK:
            return encode_error(code, request_id, reply, method)
        return encode_reply(method, request_id, reply)


# Stands for the descriptors of a frame that came with more than MAX_FDS: already closed,
# the frame is answered INVALID_ARGUMENT.
_TOO_MANY_FDS = object()


class Connection:
    """One client: read frames, answer each in order, close on a framing fault.

    The socket stays in blocking mode (a Python-level timeout costs a poll() per call); the
    kernel enforces the time limits instead: SO_SNDTIMEO for a client that stops reading, and
    SO_RCVTIMEO for one that sends nothing: edge_agent_idle_timeout_seconds between frames,
    edge_agent_frame_timeout_seconds while a frame is incomplete. The option is set only when
    the connection passes from one state to the other, never per call.

    The bytes of an incomplete frame (and the buffer set aside for the rest of a large body)
    are held against the server's PendingBudget while they are buffered, and given back as the
    frame completes or the connection ends.

    Descriptors a client passes (SCM_RIGHTS) belong to the last frame that begins in the bytes
    they arrived with (docs/PROTOCOL.md); they go to the call in Caller.fds and are closed when
    its reply is ready, whatever happened.
    """

    def __init__(self, server: SocketServer, conn: socket.socket, caller: Caller):
        self.server = server
        self.conn = conn
        self.caller = caller
        config = server.config
        self.frame_timeout = config.edge_agent_frame_timeout_seconds
        self.idle_timeout = config.edge_agent_idle_timeout_seconds
        self.decoder = FrameDecoder(config.edge_agent_max_frame_bytes)
        self.pending = server.pending
        self.held = 0  # bytes held against the pending budget
        self.carried = None  # descriptors of the incomplete frame they arrived with
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        _timeval(config.edge_agent_send_timeout_seconds))
        if self.idle_timeout:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.idle_timeout))

    def run(self) -> None:
        conn, decoder, dispatch, caller = self.conn, self.decoder, self.server.dispatch, self.caller
        hold = self._hold
        # One receive buffer for the connection's life: recv(n) would allocate n bytes a call.
        buffer = bytearray(RECV_BYTES)
        frame_started = None  # when the incomplete frame in the decoder began to arrive
        spin = self.server.config.edge_agent_busy_poll_us / 1e6
        try:
            while True:
                # A large body is received into a buffer set aside for it, held against the
                # budget; it grows with what arrived (at most doubling it), so a header alone
                # cannot make the agent set aside more than the fixed buffer.
                needed = min(decoder.needed_bytes, WAITALL_BYTES,
                             max(RECV_BYTES, decoder.pending_bytes))
                if needed > RECV_BYTES:
                    hold(decoder.pending_bytes + needed)
                try:
                    data, fds, truncated = receive_with_fds(conn, buffer, needed, spin)
                except BlockingIOError:  # SO_RCVTIMEO
                    if frame_started is None:
                        self._close_idle()
                    else:
                        self._fail_stalled()  # the client stopped mid-frame
                    return
                if not data:
                    close_fds(fds)
                    if not self.server._stopping.is_set():
                        decoder.end_of_stream()
                    return
                before = decoder.pending_bytes
                try:
                    hold(before + len(data))
                except FramingError as refusal:
                    close_fds(fds)  # refused with the bytes they came with
                    raise self._header_fault(data) or refusal
                decoder.feed(data)
                if fds or truncated or self.carried is not None:
                    self._answer_with_fds(before, len(data), fds, truncated)
                else:
                    for frame in decoder.frames():
                        hold(decoder.pending_bytes)  # a whole frame is pending no more
                        if frame.kind == Kind.REQUEST and not frame.status:
                            conn.sendall(dispatch(frame.method, frame.request_id, frame.body,
                                                  caller))
                        else:
                            self._refuse(frame)
                hold(decoder.pending_bytes)
                frame_started = self._watch_partial_frame(frame_started)
        except FramingError as e:
            log.info("closing a client connection (pid %d): %s", caller.pid, e.message)
            self._fail(e.code, e.message, e.request_id)
        finally:
            self.pending.change(self.held, 0)
            self.held = 0
            if self.carried is not None:
                self._discard(self.carried)
                self.carried = None

    def _hold(self, nbytes: int) -> None:
        """Hold `nbytes` against the pending budget (growing or shrinking this share)."""
        if nbytes != self.held:
            if not self.pending.change(self.held, nbytes):
                raise FramingError(StatusCode.RESOURCE_EXHAUSTED, self.pending.refusal())
            self.held = nbytes

    def _header_fault(self, data) -> FramingError | None:
        """What the decoder says of bytes the budget refused: a frame refused anyway (a bad
        or oversized header) is refused for that reason, which is the client's to fix. The
        connection closes either way, so frames found here are never answered."""
        try:
            self.decoder.feed(data)
            for _ in self.decoder.frames():
                pass
        except FramingError as e:
            return e
        return None

    def _refuse(self, frame) -> None:
        """A frame that is no well-formed request: a reply closes the connection (the peer is
        not speaking this protocol), a non-zero status is refused and the connection stays."""
        if frame.kind != Kind.REQUEST:
            raise FramingError(StatusCode.INVALID_ARGUMENT,
                               f"expected a request frame, got kind {frame.kind}",
                               frame.request_id)
        self.conn.sendall(encode_error(
            StatusCode.INVALID_ARGUMENT, frame.request_id,
            f"a request frame carries status 0, got {frame.status}", frame.method))

    def _answer_with_fds(self, before: int, length: int, fds, truncated: bool) -> None:
        """Answer the frames of the `length` bytes just fed (`before` bytes of an incomplete
        frame were buffered already), giving descriptors to the frame they belong to."""
        frames, failure = [], None
        try:
            frames.extend(self.decoder.frames())
        except FramingError as e:
            failure = e
        passed: list = [None] * len(frames)
        if self.carried is not None and frames:
            passed[0], self.carried = self.carried, None  # its frame is whole now
        if fds or truncated:
            if truncated:
                close_fds(fds)
                fds = _TOO_MANY_FDS
            owner, start = None, -before  # where each frame begins in the new bytes
            for i, frame in enumerate(frames):
                if start >= 0:
                    owner = i
                start += HEADER.size + len(frame.body)
            pending = self.decoder.pending_bytes
            if failure is None and 0 < pending <= length:
                self.carried = fds  # the frame they begin with is not whole yet
            elif owner is not None:
                passed[owner] = fds
            else:  # no frame begins here: they came in the middle of one, which is refused
                self._discard(fds)
                for fds in passed:
                    if fds is not None:
                        self._discard(fds)
                raise failure or FramingError(
                    StatusCode.INVALID_ARGUMENT,
                    "file descriptors arrived in the middle of a frame: send them with the "
                    "first byte of the frame they belong to",
                    frames[0].request_id if frames else 0)
        try:
            for i, frame in enumerate(frames):
                self._hold(self.decoder.pending_bytes)
                fds, passed[i] = passed[i], None
                self._answer(frame, fds)
        finally:
            for fds in passed:  # the frames after a fault are never answered
                if fds is not None:
                    self._discard(fds)
        if failure is not None:
            raise failure

    def _answer(self, frame, fds) -> None:
        if fds is None:
            if frame.kind == Kind.REQUEST and not frame.status:
                self.conn.sendall(self.server.dispatch(frame.method, frame.request_id,
                                                       frame.body, self.caller))
            else:
                self._refuse(frame)
            return
        if fds is _TOO_MANY_FDS:
            if frame.kind != Kind.REQUEST or frame.status:
                self._refuse(frame)
                return
            self.conn.sendall(encode_error(
                StatusCode.INVALID_ARGUMENT, frame.request_id,
                f"more than {MAX_FDS} file descriptors came with one frame; all were closed",
                frame.method))
            return
        try:
            if frame.kind != Kind.REQUEST or frame.status:
                self._refuse(frame)
                return
            reply = self.server.dispatch(frame.method, frame.request_id, frame.body,
                                         dataclasses.replace(self.caller, fds=fds))
        finally:
            close_fds(fds)
        self.conn.sendall(reply)

    @staticmethod
    def _discard(fds) -> None:
        if fds is not _TOO_MANY_FDS:
            close_fds(fds)

    def _watch_partial_frame(self, frame_started: float | None) -> float | None:
        """Arm the frame timeout while a frame is incomplete, the idle timeout when none is."""
        if not self.decoder.pending_bytes:
            if frame_started is not None:
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                     _timeval(self.idle_timeout))  # 0: wait for ever
            return None
        now = time.monotonic()
        if frame_started is None:
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 _timeval(self.frame_timeout))
            return now
        if now - frame_started > self.frame_timeout:
            # A trickle of bytes must not hold a frame open for ever either.
            raise FramingError(StatusCode.DEADLINE_EXCEEDED, self._stalled_message())
        return frame_started

    def _stalled_message(self) -> str:
        return f"frame not completed within {self.frame_timeout:g} s"

    def _fail_stalled(self) -> None:
        self._fail(StatusCode.DEADLINE_EXCEEDED, self._stalled_message())

    def _close_idle(self) -> None:
        log.info("closing a client connection (pid %d) idle for %g s", self.caller.pid,
                 self.idle_timeout)
        self._fail(StatusCode.UNAVAILABLE,
                   f"connection closed after {self.idle_timeout:g} s without a request "
                   "(edge_agent_idle_timeout_seconds); connect again")

    def _fail(self, code: int, message: str, request_id: int = 0) -> None:
        _send_quietly(self.conn, encode_error(code, request_id, message))
