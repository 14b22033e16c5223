"""The framed UNIX-socket front: a thin loop over edge_agent.protocol.ServerConnection and
edge_agent.api.rpcs.Api.

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
from collections import Counter

from edge_agent.api.rpcs import BY_METHOD, Api, Outcome
from edge_agent.config import AgentConfig
from edge_agent.errors import StatusCode
from edge_agent.transport.pending import PendingBudget, connection_slot
from edge_agent.protocol import NeedData, ProtocolError, Request, ServerConnection, encode_error
from edge_agent.api.service import AgentService
from edge_agent.api.caller import Caller
from edge_agent.transport.socket_io import close_fds, receive_into_with_fds, send_parts
from edge_agent.transport.socket_files import (ServerError, accept_until, bind_socket, peer_credentials,
                                    remove_socket_file)
from edge_agent.transport.socket_files import send_quietly as _send_quietly
from edge_agent.transport.socket_files import timeval as _timeval

log = logging.getLogger(__name__)

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
        self._threads: set[threading.Thread] = set()  # one per connection, until it ends
        self._handlers: dict[socket.socket, Connection] = {}  # the connections, by socket
        self._lock = threading.Lock()
        # Shared with the gRPC front when the agent runs both (cli); else this front's own.
        self.pending = pending or PendingBudget(
            config.pending_budget_bytes, config.edge_agent_connection_reserve_bytes)
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

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _wake_connections(self) -> None:
        """Connection threads block in recv(); shutting the receiving side of their sockets
        down wakes them (end of stream), while a call in progress can still send its reply."""
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def wait_for_connections(self, timeout: float) -> bool:
        """After serve_forever returned: wait up to `timeout` seconds for the calls in progress
        to be answered and their threads to end (so the service is not closed under them).
        False if some are still running then."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            remove_socket_file(self.path, self._inode)

    def _start_connection(self, conn: socket.socket) -> None:
        limit = self.config.edge_agent_max_connections
        try:
            caller = peer_credentials(conn)
        except OSError as e:  # the client left before we could ask who it is
            log.debug("client connection ended at once: %s", e)
            conn.close()
            return
        uid = caller.uid
        victim = None
        with self._lock:
            slots = self._slots_by_user()
            admitted, owner = connection_slot(uid, slots, limit)
            if owner is not None:
                # Under its guarantee: an idle client of the user with the most slots makes
                # room (told so), as it would have at its idle timeout.
                victim = self._idle_client_of(owner)
                admitted = victim is not None
            if admitted:
                try:
                    handler = Connection(self, conn, caller)
                except OSError as e:  # the client left (setsockopt on a dead socket)
                    log.debug("client connection ended at once: %s", e)
                    conn.close()
                    return
                self._connections.add(conn)
                self._handlers[conn] = handler
        if victim is not None:
            victim.evict(f"closed to make room for another user's client "
                         f"(edge_agent_max_connections is {limit}, shared fairly by the "
                         f"users connected); connect again")
        if not admitted:
            if len(self._connections) >= limit:
                reason = f"too many clients (edge_agent_max_connections is {limit}); try again later"
            else:
                reason = (f"this user's clients hold {slots.get(uid, 0)} of the "
                          f"{limit} connections (edge_agent_max_connections), and the rest "
                          "are kept for other users; try again later")
            _send_quietly(conn, encode_error(StatusCode.RESOURCE_EXHAUSTED, 0, reason))
            conn.close()
            return
        thread = threading.Thread(target=self._serve_connection, args=(conn, handler),
                                  daemon=True, name="edge-agent-conn")
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _slots_by_user(self) -> Counter[int]:
        """(Under the lock.) How many connections each user holds: the fair share's input."""
        return Counter(handler.caller.uid for handler in self._handlers.values())

    def _idle_client_of(self, owner: int) -> "Connection | None":
        """(Under the lock.) An idle connection of the user `owner`, not already evicted."""
        for handler in self._handlers.values():
            if handler.caller.uid == owner and handler.idle and handler.evicted is None:
                return handler
        return None

    def _serve_connection(self, conn: socket.socket, handler: "Connection") -> None:
        try:
            handler.run()
        except OSError as e:
            log.debug("client connection ended: %s", e)
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._handlers.pop(conn, None)
                self._threads.discard(threading.current_thread())
            conn.close()

    def serve(self, method: int, body, caller: Caller) -> Outcome:
        """One request's body in, its outcome out; never raises for a bad request."""
        rpc = BY_METHOD.get(method)
        return self.api.unknown(method) if rpc is None else self.api.serve(rpc, body, caller)


class Connection:
    """One client: a thin loop moving bytes and descriptors between the socket and a
    ServerConnection (edge_agent.protocol), which decides everything else; requests are
    answered in order, a closing protocol error ends the connection.

    The socket stays in blocking mode (a Python-level timeout costs a poll() per call); the
    kernel enforces the time limits instead: SO_SNDTIMEO for a client that stops reading, and
    SO_RCVTIMEO, set to the protocol's receive_timeout only when it changes (the idle timeout
    between frames, the frame timeout while one is incomplete), never per call.

    Descriptors the client passed go to the call in Caller.fds and are closed when its reply
    is ready, whatever happened.
    """

    def __init__(self, server: SocketServer, conn: socket.socket, caller: Caller):
        self.server = server
        self.conn = conn
        self.caller = caller
        config = server.config
        # This connection's share of the pending budget (its reserve, then the user's fair
        # part of the rest: edge_agent.transport.pending).
        self.share = server.pending.holder(caller.uid)
        self.protocol = ServerConnection(
            config.edge_agent_max_frame_bytes, self.share,
            config.edge_agent_frame_timeout_seconds, config.edge_agent_idle_timeout_seconds)
        # Waiting for a request, with nothing of one received: what may be closed to make
        # room for another user's client (SocketServer._idle_client_to_evict).
        self.idle = False
        self.evicted: str | None = None
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            _timeval(config.edge_agent_send_timeout_seconds))
            self._timeout = self.protocol.idle_timeout  # the SO_RCVTIMEO in force
            if self._timeout:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self._timeout))
        except OSError:
            self.share.close()
            raise

    def run(self) -> None:
        conn, protocol, answer = self.conn, self.protocol, self._answer
        spin = self.server.config.edge_agent_busy_poll_us / 1e6
        clock = time.monotonic
        try:
            while True:
                event = protocol.next_event(clock())
                kind = event.__class__
                if kind is Request:
                    send_parts(conn, *answer(event))
                elif kind is NeedData:
                    if protocol.receive_timeout != self._timeout:
                        self._timeout = protocol.receive_timeout
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                        _timeval(self._timeout))  # 0: wait for ever
                    self.idle = not protocol.frame_in_progress
                    try:
                        n, fds, truncated = receive_into_with_fds(
                            conn, protocol.get_buffer(), protocol.receive_whole, spin)
                    except BlockingIOError:  # SO_RCVTIMEO
                        if not protocol.frame_in_progress:
                            log.info("closing a client connection (pid %d) idle for %g s",
                                     self.caller.pid, protocol.idle_timeout)
                        protocol.receive_timed_out()
                        continue
                    self.idle = False
                    if not n:
                        close_fds(fds)
                        if self.evicted is not None:
                            log.info("closing an idle client connection (pid %d) to make room "
                                     "for another user's", self.caller.pid)
                            _send_quietly(conn, encode_error(StatusCode.UNAVAILABLE, 0,
                                                             self.evicted))
                            return
                        if self.server.stopping:
                            return
                        protocol.receive_eof()
                    else:
                        protocol.buffer_updated(n, clock(), fds, truncated)
                elif kind is ProtocolError:
                    if not event.closing:
                        conn.sendall(protocol.send_error(event))
                        continue
                    log.info("closing a client connection (pid %d): %s", self.caller.pid,
                             event.message)
                    _send_quietly(conn, protocol.send_error(event))
                    return
                else:  # Closed
                    return
        finally:
            protocol.close()
            self.share.close()

    def evict(self, reason: str) -> None:
        """Wake the idle connection (end of stream on its side) to be closed with `reason`."""
        self.evicted = reason
        try:
            self.conn.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _answer(self, request: Request) -> tuple[bytes, bytes]:
        """The reply frame to one request, as (header, body); its descriptors are closed once
        it is ready."""
        fds = request.fds
        if not fds:
            code, reply = self.server.serve(request.method, request.body, self.caller)
        else:
            try:
                code, reply = self.server.serve(request.method, request.body,
                                                dataclasses.replace(self.caller, fds=fds))
            finally:
                close_fds(fds)
        return self.protocol.reply_parts(request.request_id, request.method, code, reply)
