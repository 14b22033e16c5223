"""The framed UNIX-socket front: a thin loop over edge_agent.protocol and AgentService.

One thread per connection: a call runs on its client's thread, so a slow, stalled or
half-open client holds only its own thread, and predictions from different clients on
different models run in parallel. Requests pipelined on one connection are answered in
order. Framing faults get an error reply and the connection is closed; everything else
(a bad request, an unknown method, a failed call) gets an error reply and the connection
stays open.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from edge_agent.api import BY_METHOD, Api, unknown_method
from edge_agent.config import AgentConfig
from edge_agent.errors import StatusCode
from edge_agent.protocol import FrameDecoder, FramingError, Kind, encode_error, encode_reply
from edge_agent.service import AgentService, Caller
from edge_agent.sockets import receive
from edge_agent.unix_socket import (ServerError, accept_until, bind_socket, peer_credentials,
                                    remove_socket_file)
from edge_agent.unix_socket import send_quietly as _send_quietly
from edge_agent.unix_socket import timeval as _timeval

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024

__all__ = ["ServerError", "SocketServer", "Connection", "peer_credentials"]


class SocketServer:
    def __init__(self, service: AgentService, config: AgentConfig):
        self.service = service
        self.api = Api(service)
        self.config = config
        self.path = config.edge_agent_socket_path
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

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
        code, reply = unknown_method(method) if rpc is None else self.api.invoke(rpc, body, caller)
        if code != StatusCode.OK:
            return encode_error(code, request_id, reply, method)
        return encode_reply(method, request_id, reply)


class Connection:
    """One client: read frames, answer each in order, close on a framing fault.

    The socket stays in blocking mode (a Python-level timeout costs a poll() per call); the
    kernel enforces the time limits instead: SO_SNDTIMEO for a client that stops reading,
    SO_RCVTIMEO, set only while a frame is incomplete, for one that stops mid-frame.
    """

    def __init__(self, server: SocketServer, conn: socket.socket, caller: Caller):
        self.server = server
        self.conn = conn
        self.caller = caller
        self.frame_timeout = server.config.edge_agent_frame_timeout_seconds
        self.decoder = FrameDecoder(server.config.edge_agent_max_frame_bytes)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        _timeval(server.config.edge_agent_send_timeout_seconds))

    def run(self) -> None:
        conn, decoder, dispatch, caller = self.conn, self.decoder, self.server.dispatch, self.caller
        # One receive buffer for the connection's life: recv(n) would allocate n bytes a call.
        buffer = bytearray(RECV_BYTES)
        frame_started = None  # when the incomplete frame in the decoder began to arrive
        spin = self.server.config.edge_agent_busy_poll_us / 1e6
        try:
            while True:
                try:
                    data = receive(conn, buffer, decoder.needed_bytes, spin)
                except BlockingIOError:  # SO_RCVTIMEO: the client stopped mid-frame
                    self._fail_stalled()
                    return
                if not data:
                    if not self.server._stopping.is_set():
                        decoder.end_of_stream()
                    return
                decoder.feed(data)
                for frame in decoder.frames():
                    if frame.kind != Kind.REQUEST:
                        raise FramingError(StatusCode.INVALID_ARGUMENT,
                                           f"expected a request frame, got kind {frame.kind}",
                                           frame.request_id)
                    conn.sendall(dispatch(frame.method, frame.request_id, frame.body, caller))
                frame_started = self._watch_partial_frame(frame_started)
        except FramingError as e:
            log.info("closing a client connection (pid %d): %s", caller.pid, e.message)
            self._fail(e.code, e.message, e.request_id)

    def _watch_partial_frame(self, frame_started: float | None) -> float | None:
        """Arm the receive timeout while a frame is incomplete, disarm it when none is."""
        if not self.decoder.pending_bytes:
            if frame_started is not None:
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0))
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

    def _fail(self, code: int, message: str, request_id: int = 0) -> None:
        _send_quietly(self.conn, encode_error(code, request_id, message))
