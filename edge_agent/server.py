"""The framed UNIX-socket front: a thin loop over edge_agent.protocol and AgentService.

One thread per connection: a call runs on its client's thread, so a slow, stalled or
half-open client holds only its own thread, and predictions from different clients on
different models run in parallel. Requests pipelined on one connection are answered in
order. Framing faults get an error reply and the connection is closed; everything else
(a bad request, an unknown method, a failed call) gets an error reply and the connection
stays open.
"""
from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import stat
import struct
import threading
import time

from google.protobuf.message import DecodeError

from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import (FrameDecoder, FramingError, Kind, Method, encode_error,
                                 encode_reply)
from edge_agent.service import RPCS, AgentService, Caller
from edge_agent.sockets import receive

log = logging.getLogger(__name__)

RPC_BY_METHOD = {
    Method.PREDICT: RPCS["Predict"],
    Method.LOAD_MODEL: RPCS["LoadModel"],
    Method.UNLOAD_MODEL: RPCS["UnLoadModel"],
    Method.LIST_MODELS: RPCS["ListModels"],
    Method.DESCRIBE_MODEL: RPCS["DescribeModel"],
    Method.CAPTURE_DATA: RPCS["CaptureData"],
    Method.GET_CAPTURE_DATA_STATUS: RPCS["GetCaptureDataStatus"],
    Method.GET_METRICS: RPCS["GetMetrics"],
}

RECV_BYTES = 256 * 1024
# How often the blocked accept() looks up to notice a shutdown.
POLL_SECONDS = 0.5
_PEERCRED = struct.Struct("3i")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux's value; Python may lack it
_PEERGROUPS_BYTES = 1024  # the most CPython's getsockopt takes: 256 gids
_TIMEVAL = struct.Struct("ll")


class ServerError(RuntimeError):
    """The server cannot start; the message says why."""


def peer_credentials(sock: socket.socket) -> Caller:
    """The peer's pid, uid, gid and supplementary groups, as they were when it connected.

    Read once per connection: the shared-memory permission check then needs no file read
    per call, and a pid reused later cannot lend its groups to this connection."""
    pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return Caller(pid, uid, gid, _peer_groups(sock, pid))


def _peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    """SO_PEERGROUPS (Linux 4.13+), or the Groups: line of /proc/<pid>/status where the
    kernel lacks it or the peer has more groups than getsockopt's 1024-byte buffer holds."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BYTES)
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()  # unknown: the caller is credited with its primary gid only


def _claim_socket_path(path: str) -> None:
    """Remove a stale socket file at path; refuse if an agent answers there or it is no socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a leftover of an agent that died
        return
    except OSError as e:
        raise ServerError(f"cannot tell whether an agent serves on {path}: {e}") from None
    finally:
        probe.close()
    raise ServerError(f"another agent is already serving on {path}")


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ServerError(f"edge_agent_socket_group: no group named {group!r}") from None


def restrict_socket_file(path: str, config: AgentConfig) -> None:
    """Give a socket file the configured mode and group (who may connect)."""
    os.chmod(path, config.socket_mode)
    if config.edge_agent_socket_group:
        os.chown(path, -1, _group_id(config.edge_agent_socket_group))


def bind_socket(config: AgentConfig) -> socket.socket:
    """A listening socket at the configured path, with the configured mode and group."""
    path = config.edge_agent_socket_path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _claim_socket_path(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind() creates the file; the umask makes it born with the configured mode, no window.
    old_umask = os.umask(0o777 & ~config.socket_mode)
    try:
        listener.bind(path)
    except OSError as e:
        listener.close()
        raise ServerError(f"cannot bind {path}: {e.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        restrict_socket_file(path, config)
    except (OSError, ServerError):
        listener.close()
        os.unlink(path)
        raise
    listener.listen(128)
    return listener


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return _TIMEVAL.pack(whole, int((seconds - whole) * 1e6))


class SocketServer:
    def __init__(self, service: AgentService, config: AgentConfig):
        self.service = service
        self.config = config
        self.path = config.edge_agent_socket_path
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        service.metrics.watch_connections("framed", self._connections.__len__)
        self._count_call = service.metrics.call_counter("framed")

    def bind(self) -> None:
        self._listener = bind_socket(self.config)
        self._listener.settimeout(POLL_SECONDS)
        self._inode = os.stat(self.path).st_ino

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        log.info("serving on %s", self.path)
        try:
            while not self._stopping.is_set():
                try:
                    conn, _ = self._listener.accept()
                except socket.timeout:
                    continue
                except OSError as e:
                    if self._stopping.is_set():
                        break
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.error("cannot accept a client: %s", e)
                        time.sleep(POLL_SECONDS)
                        continue
                    raise
                self._start_connection(conn)
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
            try:
                # Only our own socket file: another agent may have replaced it since.
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _start_connection(self, conn: socket.socket) -> None:
        conn.settimeout(None)  # accepted sockets inherit the listener's poll timeout
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
        reply = self._answer(method, request_id, body, caller)
        # Counted here, the one place every reply passes: its status is header bytes 6-7.
        rpc = RPC_BY_METHOD.get(method)
        self._count_call(rpc.name if rpc else "unknown", reply[6] | reply[7] << 8)
        return reply

    def _answer(self, method: int, request_id: int, body: bytes, caller: Caller) -> bytes:
        rpc = RPC_BY_METHOD.get(method)
        if rpc is None:
            return encode_error(StatusCode.UNIMPLEMENTED, request_id,
                                f"unknown method {method}", method)
        try:
            request = rpc.request_type.FromString(body)
        except DecodeError:
            return encode_error(StatusCode.INVALID_ARGUMENT, request_id,
                                f"malformed {rpc.name} request: the body is not a "
                                f"{rpc.request_type.__name__} message", method)
        try:
            response = self.service.handler(rpc)(request, caller)
        except AgentError as e:
            log.debug("%s failed: %s", rpc.name, e)
            return encode_error(e.code, request_id, e.message, method)
        except Exception as e:  # a fault of ours: report it, keep serving
            log.exception("%s failed with an internal error", rpc.name)
            return encode_error(StatusCode.INTERNAL, request_id,
                                f"internal error in {rpc.name}: {type(e).__name__}: {e}", method)
        return encode_reply(method, request_id, response.SerializeToString())


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


def _send_quietly(conn: socket.socket, data: bytes) -> None:
    """Best effort: the peer may already be gone."""
    try:
        conn.settimeout(1.0)
        conn.sendall(data)
    except OSError:
        pass
