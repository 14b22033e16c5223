"""The gRPC front: `AWS.SageMaker.Edge.Agent` over a UNIX socket the agent owns, for
applications written for the original agent's gRPC API.

A small unary gRPC server on the agent's event loop: edge_agent.transport.front_core binds
and accepts the socket and reads the peer's credentials once per connection, so the service
sees the same Caller as on the framed socket; each connection is a handler over the sans-IO
edge_agent.protocol.grpc_connection.GrpcConnection (h2 and the gRPC rules), which this module
only feeds bytes and the calls' outcomes. Calls run inline or on workers as on the framed
socket (edge_agent.transport.workers); several calls of one HTTP/2 connection, and calls on
different models, run at once. h2 is imported only with this module, i.e. only when the gRPC
front is configured. docs/PROTOCOL.md says why h2 and not grpcio or grpclib.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import deque

from edge_agent.api.caller import Caller
from edge_agent.api.rpcs import BY_GRPC_PATH, Api, Outcome
from edge_agent.api.service import AgentService
from edge_agent.config import AgentConfig
from edge_agent.errors import StatusCode
from edge_agent.protocol.grpc_connection import (Call, GrpcConnection, parse_timeout,
                                                 percent_encode, refusal_connection)
from edge_agent.transport.event_loop import READ, WRITE
from edge_agent.transport.front_core import FrontCore, FrontLoop
from edge_agent.transport.pending import PendingBudget
from edge_agent.transport.workers import NOT_RUN, TURN
from edge_agent.protocol.receiving import RECV_BYTES

__all__ = ["GrpcServer", "start", "parse_timeout", "percent_encode"]

log = logging.getLogger(__name__)

# A connection over edge_agent_max_connections is answered RESOURCE_EXHAUSTED for this long,
# at most MAX_REFUSING at once; beyond, it is closed unanswered.
REFUSAL_SECONDS = 2.0
MAX_REFUSING = 4
# While more than this waits to be sent to a client, nothing more is read from it: a client
# that sends (PINGs, say) and never reads cannot make the agent hold ever more answers.
MAX_UNSENT = 256 * 1024


class GrpcServer:
    """Serves gRPC on path, on `fronts` (the agent's loop; with None, a loop of its own,
    which start() runs on a thread and stop() ends)."""

    def __init__(self, service: AgentService, config: AgentConfig, path: str | None = None,
                 pending: PendingBudget | None = None, fronts: FrontLoop | None = None):
        self.api = Api(service, service.metrics.call_counter("grpc"))
        self.config = config
        self.path = path or config.edge_agent_grpc_socket_path
        self._own_loop = fronts is None
        self.fronts = fronts or FrontLoop()
        self.loop = self.fronts.loop
        self.workers = self.fronts.workers
        self.core = FrontCore(self.loop, config, self.path, "grpc", pending,
                              self._connect, self._refuse)
        self.fronts.add(self.core)
        self.pending = self.core.pending
        self._refusals: set[Refusal] = set()  # connections over the limit being told so
        self.loop.on_stop(self._stop_refusing)
        service.metrics.watch_connections("grpc", self.core.handlers.__len__)

    @property
    def _handlers(self) -> dict:
        """The connections, by socket descriptor."""
        return self.core.handlers

    def start(self) -> "GrpcServer":
        self.core.bind()
        if self._own_loop:
            self.fronts.start()
        log.info("gRPC front serving on unix://%s", self.path)
        return self

    def stop(self, grace: float = 2.0) -> None:
        """GOAWAY to every client, then up to `grace` seconds for calls in progress to be
        answered; then the connections close (the agent's loop: all of it stops)."""
        self.fronts.stop(grace)
        if self._own_loop:
            self.fronts.join()

    def _connect(self, sock: socket.socket, caller: Caller) -> "GrpcHandler":
        return GrpcHandler(self, sock, caller)

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        if len(self._refusals) >= MAX_REFUSING:
            sock.close()  # a flood: no answer for each
            return
        refusal = Refusal(self, sock, reason)
        if not refusal.closed:  # (a client already gone is closed at once: nothing to keep)
            self._refusals.add(refusal)

    def _stop_refusing(self) -> None:
        for refusal in list(self._refusals):
            refusal.close()


class _Sender:
    """Bytes to a non-blocking socket: what it does not take now waits for WRITE; while
    more than MAX_UNSENT waits, nothing is read. `stalled_since`: when what waits last
    made progress (the send timeout's clock; 0.0 while nothing waits)."""

    def __init__(self, server: GrpcServer, sock: socket.socket):
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        self._out: deque[memoryview] = deque()
        self._unsent = 0
        self.stalled_since = 0.0
        self._mask = READ
        self.closed = False
        self.loop.selector.register(sock, READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        waiting = self._unsent
        if data:
            self._out.append(memoryview(data))
            self._unsent += len(data)
        out = self._out
        sent_any = False
        while out and not self.closed:
            try:
                sent = self.sock.send(out[0])
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("gRPC client connection ended: %s", e)
                self.close()
                return
            sent_any = sent_any or sent > 0
            self._unsent -= sent
            if sent < len(out[0]):
                out[0] = out[0][sent:]
            else:
                out.popleft()
        if not out:
            self.stalled_since = 0.0
            self._want(READ)
            return
        if sent_any or not waiting:  # the send timeout's clock starts (again)
            self.stalled_since = time.monotonic()
            self.loop.timer_changed(self.deadline())
        self._want(WRITE if self._unsent > MAX_UNSENT else READ | WRITE)

    @property
    def sending(self) -> bool:
        return bool(self._out)

    @property
    def unsent(self) -> int:
        """Bytes waiting for the client to take them."""
        return self._unsent

    def deadline(self) -> float | None:
        raise NotImplementedError

    def _want(self, mask: int) -> None:
        if mask != self._mask and not self.closed:
            self.loop.selector.modify(self.sock, mask, self._on_ready)
            self._mask = mask

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.selector.unregister(self.sock)
        self.sock.close()


class GrpcHandler(_Sender):
    """One client's HTTP/2 connection on the loop."""

    def __init__(self, server: GrpcServer, sock: socket.socket, caller: Caller):
        config = server.config
        self.caller = caller
        # This connection's share of the pending budget, for all its calls (its reserve,
        # then the user's fair part of the rest: edge_agent.transport.pending).
        self.share = server.pending.holder(caller.uid)
        self.conn = GrpcConnection(
            self.share, BY_GRPC_PATH, config.edge_agent_max_frame_bytes,
            config.edge_agent_frame_timeout_seconds, config.edge_agent_idle_timeout_seconds,
            config.edge_agent_send_timeout_seconds)
        self._queue: deque[Call] = deque()  # calls to run inline, in turns
        self.send_timeout = config.edge_agent_send_timeout_seconds
        self._stopping = False
        super().__init__(server, sock)
        self.conn.initiate(time.monotonic())
        self.write(self.conn.data_to_send())

    @property
    def idle(self) -> bool:
        return not self.conn.busy and not self._queue

    def _on_ready(self, mask: int) -> None:
        if mask & WRITE:
            self.write(b"")
        if mask & READ and not self.closed:
            self._receive()
        if not self.closed:
            self._after()

    def _receive(self) -> None:
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug("gRPC client connection ended: %s", e)
            self.close()
            return
        if not data:
            self.close()
            return
        self._queue.extend(self.conn.receive_data(data, time.monotonic()))
        self._run_calls()

    def _run_calls(self) -> None:
        turn = TURN
        queue = self._queue
        while queue and not self.closed:
            if not turn:
                self.loop.soon(self._continue)
                break
            call = queue.popleft()
            turn -= 1
            self._run(call)
        self.write(self.conn.data_to_send())

    def _continue(self) -> None:
        if not self.closed:
            self._run_calls()
            self._after()

    def _run(self, call: Call) -> None:
        server, conn = self.server, self.conn
        if not conn.wanted(call.stream_id):  # reset by the client: not run, place freed
            conn.reply(call.stream_id, NOT_RUN.code, NOT_RUN.reply, time.monotonic())
            return
        if call.rpc is None:
            outcome = server.api.unknown(call.path)
            conn.reply(call.stream_id, outcome.code, outcome.reply, time.monotonic())
            return
        place, measured = server.workers.place(call.rpc.method, call.body, ())
        if place is None:
            outcome = self._serve(call, measured)
            conn.reply(call.stream_id, outcome.code, outcome.reply, time.monotonic())
            return

        def job() -> None:
            try:
                # A call whose client went (or reset it) while it waited is not run; its
                # answer, dropped, frees its place among the connection's streams.
                outcome = (NOT_RUN if self.closed or not self.conn.wanted(call.stream_id)
                           else self._serve(call, measured))
            except BaseException as e:  # never: Api.serve answers every failure
                outcome = Outcome(StatusCode.INTERNAL, f"internal error: {e}")
            self.loop.call_soon_threadsafe(self._done, call, outcome)

        place(job)

    def _serve(self, call: Call, measured: str | None) -> Outcome:
        if call.deadline is not None and time.monotonic() > call.deadline:
            return Outcome(StatusCode.DEADLINE_EXCEEDED,
                           "the call's deadline passed before it could start")
        return self.server.workers.run(measured, self.server.api.serve, call.rpc, call.body,
                                       self.caller)

    def _done(self, call: Call, outcome: Outcome) -> None:
        self.conn.reply(call.stream_id, outcome.code, outcome.reply, time.monotonic())
        if not self.closed:
            self.write(self.conn.data_to_send())
            self._after()

    def _after(self) -> None:
        """After any change: the connection may be over, and its timer may have moved."""
        if self.closed:
            return
        if self.conn.closed:
            if self.conn.close_reason:
                log.info("closing a gRPC connection (pid %d): %s", self.caller.pid,
                         self.conn.close_reason)
            self.write(self.conn.data_to_send())
            self.close()
        elif self._stopping and not self.conn.busy and not self._queue and not self.sending:
            self.close()
        else:
            self.loop.timer_changed(self.deadline())

    def deadline(self) -> float | None:
        deadline = self.conn.deadline()
        if self.stalled_since:  # what the client has not taken for the send timeout
            stalled = self.stalled_since + self.send_timeout
            return stalled if deadline is None else min(deadline, stalled)
        return deadline

    def on_timer(self, now: float) -> None:
        if self.stalled_since and now - self.stalled_since >= self.send_timeout:
            log.info("closing a gRPC connection (pid %d): it has not read what the agent "
                     "sent for %g s", self.caller.pid, self.send_timeout)
            self.close()
        elif self.conn.check_timers(now) is not None:
            # What is queued (a GOAWAY saying why) goes if the socket takes it now.
            log.info("closing a gRPC connection (pid %d): %s", self.caller.pid,
                     self.conn.close_reason)
            self.write(self.conn.data_to_send())
            self.close()

    def evict(self, reason: str) -> bool:
        if not self.conn.evict(reason):
            return False
        log.info("closing an idle gRPC connection (pid %d) to make room for another user's",
                 self.caller.pid)
        self.write(self.conn.data_to_send())  # the GOAWAY, if the socket takes it now
        self.close()
        return True

    def begin_stop(self) -> None:
        """GOAWAY: the calls open are answered, no new one starts; closed once done."""
        self._stopping = True
        self.conn.go_away()
        self.write(self.conn.data_to_send())
        self._after()

    def close(self) -> None:
        if self.closed:
            return
        self.server.core.remove(self.fd, self)
        self.conn.close()
        self.share.close()
        super().close()


class Refusal(_Sender):
    """A connection over the limit, answered RESOURCE_EXHAUSTED with the reason for at most
    REFUSAL_SECONDS (edge_agent.protocol.grpc_connection.refusal_connection), then closed."""

    caller = None
    idle = False

    def __init__(self, server: GrpcServer, sock: socket.socket, reason: str):
        self._feed = refusal_connection(reason)
        self._deadline = time.monotonic() + REFUSAL_SECONDS
        super().__init__(server, sock)
        server.loop.add_timed(self)
        out, _ = self._feed(b"")
        self.write(out)

    def _on_ready(self, mask: int) -> None:
        if mask & WRITE:
            self.write(b"")
        if not mask & READ or self.closed:
            return
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            out, answered = self._feed(data)
        except Exception:  # it spoke no HTTP/2: closing is all that is left
            self.close()
            return
        self.write(out)
        if answered:
            self.close()

    def deadline(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.server._refusals.discard(self)
        self.loop.remove_timed(self)
        super().close()


def start(service: AgentService, config: AgentConfig, path: str | None = None,
          pending: PendingBudget | None = None, fronts: FrontLoop | None = None) -> GrpcServer:
    """A started GrpcServer on path (default: edge_agent_grpc_socket_path); stop it with
    .stop(grace). The socket file gets the same mode and group as the framed socket; the
    bytes of requests it receives count against `pending` (default: a budget of its own);
    it serves on `fronts`, the agent's loop (default: a loop of its own)."""
    return GrpcServer(service, config, path, pending, fronts).start()
