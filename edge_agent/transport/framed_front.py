"""The framed UNIX-socket front: a thin handler on the agent's event loop over
edge_agent.protocol.ServerConnection and edge_agent.api.rpcs.Api.

Each connection is a FramedConnection on the loop (edge_agent.transport.front_core has
accept, the limit and the stop). When its socket is readable it receives once (recvmsg:
descriptors pass with SCM_RIGHTS), then answers the requests that are complete, in order: a
short call inline, a long one on a worker (edge_agent.transport.workers) — while a call runs
off the loop or a reply waits for the client to read, the connection reads nothing more, so
replies keep the requests' order and a client that does not read holds only its own
connection. At most TURN requests per turn, then the other connections' turn; the socket is
read again only once every request received is answered (their bodies are views of the
receive buffer), so a pipelining client's writes wait in its socket, not in the agent's
memory. While nothing is read, the client's hang-up is still seen: the connection closes
and its calls still queued are not run. Framing faults
get an error reply and the connection is closed; everything else (a bad request, an unknown
method, a request frame with a non-zero status, a failed call) gets an error reply and the
connection stays open. docs/PROTOCOL.md states the rules.
"""
from __future__ import annotations

import dataclasses
import logging
import select
import socket
import threading
import time
from collections import deque

from edge_agent.api.caller import Caller
from edge_agent.api.rpcs import BY_METHOD, Api, Method, Outcome
from edge_agent.api.service import AgentService
from edge_agent.config import AgentConfig
from edge_agent.errors import StatusCode
from edge_agent.protocol import (NeedData, ProtocolError, Request, ServerConnection, encode_error,
                                 reply_parts)
from edge_agent.transport.event_loop import READ, WRITE
from edge_agent.transport.front_core import FrontCore, FrontLoop
from edge_agent.transport.pending import PendingBudget
from edge_agent.transport.socket_files import ServerError, peer_credentials
from edge_agent.transport.socket_io import close_fds, receive_with_fds
from edge_agent.transport.inline_predicts import InlinePredicts
from edge_agent.transport.workers import MEASURE_EVERY, NOT_RUN, TURN

log = logging.getLogger(__name__)

__all__ = ["ServerError", "SocketServer", "FramedConnection", "peer_credentials"]

# Receives in one turn while a large body arrives.
RECEIVES_OF_A_BODY = 8
# A connection closing after an error reply gives its client at most this long to take it.
CLOSING_SEND_SECONDS = 1.0
# What the socket waits for while the connection reads nothing: only its hang-up (epoll
# reports EPOLLHUP and EPOLLERR whatever it is asked; EPOLLHUP when the client closed its
# end). Not EPOLLRDHUP: a client that only shut down its sending side still reads replies.
_HANGUP = select.EPOLLHUP
_GONE = select.EPOLLHUP | select.EPOLLERR
_NEVER = float("inf")


class SocketServer:
    """The framed front on `fronts` (the agent's loop; a loop of its own when None)."""

    def __init__(self, service: AgentService, config: AgentConfig,
                 pending: PendingBudget | None = None, fronts: FrontLoop | None = None):
        self.service = service
        self.api = Api(service, service.metrics.call_counter("framed"))
        self.config = config
        self.path = config.edge_agent_socket_path
        self.fronts = fronts or FrontLoop()
        self.loop = self.fronts.loop
        self.workers = self.fronts.workers
        self.core = FrontCore(self.loop, config, self.path, "framed", pending,
                              self._connect, self._refuse)
        self.fronts.add(self.core)
        self.pending = self.core.pending
        service.metrics.watch_connections("framed", self.core.handlers.__len__)
        # The Predicts of models measured fast enough for the loop, answered in one compiled
        # pass over what a receive brought (edge_agent.transport.inline_predicts).
        self.inline = InlinePredicts(service.serving, self.workers.decided, self.api.count,
                                     self.workers.measure, Method.PREDICT, MEASURE_EVERY)

    @property
    def _handlers(self) -> dict:
        """The connections, by socket descriptor."""
        return self.core.handlers

    def bind(self) -> None:
        self.core.bind()
        log.info("serving on %s", self.path)

    def serve_forever(self) -> None:
        """Serve on this front's own loop until shutdown() (the agent runs its FrontLoop)."""
        if self.core.listener is None:
            self.bind()
        self.fronts.run()

    def shutdown(self) -> None:
        self.fronts.stop()

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    def close_listener(self) -> None:
        self.core.close_listener()

    def _connect(self, sock: socket.socket, caller: Caller) -> "FramedConnection":
        return FramedConnection(self, sock, caller)

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        try:
            sock.send(encode_error(StatusCode.RESOURCE_EXHAUSTED, 0, reason))
        except OSError:
            pass
        sock.close()

    def serve(self, method: int, body, caller: Caller) -> Outcome:
        """One request's body in, its outcome out; never raises for a bad request."""
        rpc = BY_METHOD.get(method)
        return self.api.unknown(method) if rpc is None else self.api.serve(rpc, body, caller)

    def inline_failed(self, model, error: Exception) -> Outcome:
        """The outcome of an inline Predict whose run raised `error` (the runtime's fault:
        the pass answers only what it can run), counted as the service counts a failed
        Predict (the model's and the front's counters)."""
        outcome = self.api.failure(BY_METHOD[Method.PREDICT], error)
        model.count_failure(outcome.code)
        self.api.count("Predict", outcome.code)
        return outcome


class FramedConnection:
    """One client: moves bytes and descriptors between the socket and a ServerConnection
    (edge_agent.protocol), which decides everything else.

    Time limits are the loop's timers: between frames the idle timeout, while a frame is
    incomplete the frame timeout (the protocol's receive_timeout, from when the connection
    last went back to waiting), and while a reply waits for the client, the send timeout.
    Descriptors the client passed go to the call in Caller.fds and are closed when its reply
    is ready, whatever happened.
    """

    def __init__(self, server: SocketServer, sock: socket.socket, caller: Caller):
        self.server = server
        self.core = server.core
        self.loop = server.loop
        self.workers = server.workers
        self.serve = server.serve
        self.sock = sock
        self.fd = sock.fileno()
        self.caller = caller
        config = server.config
        # This connection's share of the pending budget (its reserve, then the user's fair
        # part of the rest: edge_agent.transport.pending).
        self.share = server.pending.holder(caller.uid)
        self.protocol = ServerConnection(
            config.edge_agent_max_frame_bytes, self.share,
            config.edge_agent_frame_timeout_seconds, config.edge_agent_idle_timeout_seconds)
        self.send_timeout = config.edge_agent_send_timeout_seconds
        # Waiting for a request, with nothing of one received: what may be closed to make
        # room for another user's client (FrontCore._admit).
        self.idle = True
        self._out: deque = deque()  # what the client has not taken yet
        self._running = False  # a call of this connection runs off the loop
        self._closing = False  # close once what is queued is sent
        self._stopping = False
        self._closed = False
        # While a call runs on a worker, the worker sends its reply (_finish): this lock
        # keeps that send and close() apart.
        self._lock = threading.Lock()
        # What of a worker's reply the socket did not take (or why it failed), for _done.
        self._left: tuple | Exception = ()
        self._waiting_since = time.monotonic()  # went back to waiting for bytes
        self._sent_at = 0.0  # a queued reply last made progress
        # The last event of the protocol was NeedData: the socket is read (and the receive
        # timeouts run) only then. Otherwise the protocol still has requests to hand out, and
        # their bodies are views of its receive buffer.
        self._reading = True
        self._mask = READ
        self.loop.selector.register(sock, READ, self._on_ready)

    # --- the loop's calls -----------------------------------------------------------------

    def _on_ready(self, mask: int) -> None:
        if mask == READ and self._reading and not (self._closed or self._closing
                                                   or self._stopping):
            splitter = self.protocol.steady_splitter()
            if splitter is not None:  # waiting for a request: the common case, compiled
                self._receive_steady(splitter)
                return
        if mask & WRITE:
            self._flush()
        if mask & READ and not self._closed:
            if self._reading:
                self._receive()
            elif self._mask & READ:
                # Bytes came while a call of this connection runs on a worker (the socket
                # stays armed for reading then: a client that waits for its reply sends
                # nothing, and the worker need not arm it again): they wait in the socket,
                # only the hang-up is watched.
                with self._lock:  # (the worker may be arming it: _finish)
                    self._want(_HANGUP)
        if mask & _GONE and not (self._reading or self._closed):
            # The client hung up while a call of its runs or waits (or its requests wait for
            # their turn): the calls still queued are not run (their jobs see it closed).
            log.debug("client connection (pid %d) hung up before its replies",
                      self.caller.pid)
            self.close()

    def deadline(self) -> float | None:
        if self._out:
            return self._sent_at + (CLOSING_SEND_SECONDS if self._closing else self.send_timeout)
        if not self._reading:
            return None
        timeout = self.protocol.receive_timeout
        return self._waiting_since + timeout if timeout else None

    def on_timer(self, now: float) -> None:
        if self._closed:
            return
        if self._out:
            if not self._closing:
                log.info("closing a client connection (pid %d): it has not read its reply "
                         "for %g s", self.caller.pid, self.send_timeout)
            self.close()
            return
        if not self._reading:
            return
        if not self.protocol.frame_in_progress:
            log.info("closing a client connection (pid %d) idle for %g s",
                     self.caller.pid, self.protocol.idle_timeout)
        self.protocol.receive_timed_out()
        self._advance()

    def evict(self, reason: str) -> bool:
        """Close this idle connection, telling its client why."""
        if not self.idle or self._closed or self._closing:
            return False
        log.info("closing an idle client connection (pid %d) to make room for another "
                 "user's", self.caller.pid)
        self._close_with(encode_error(StatusCode.UNAVAILABLE, 0, reason))
        return True

    def begin_stop(self) -> None:
        """The agent stops: an idle connection ends now, a busy one once its call is
        answered."""
        with self._lock:  # a worker replying reads it (_finish)
            self._stopping = True
        if not self._running and not self._out:
            self.close()

    # --- bytes in ---------------------------------------------------------------------------

    def _receive(self) -> None:
        """One receive, and the requests it completed; while the rest of a large body is
        awaited (receive_whole), a few receives at once, each taking what the kernel holds,
        rather than one wait on the loop per socket buffer's worth."""
        protocol = self.protocol
        for _ in range(RECEIVES_OF_A_BODY):
            try:
                n, fds, truncated = receive_with_fds(self.sock, protocol.get_buffer())
            except BlockingIOError:
                return
            except OSError as e:
                log.debug("client connection ended: %s", e)
                self.close()
                return
            if not n:
                close_fds(fds)
                if self._stopping:
                    self.close()
                    return
                protocol.receive_eof()
                self._advance()
                return
            self.idle = False
            now = time.monotonic()
            protocol.buffer_updated(n, now, fds, truncated)
            answered = 0 if fds or self._stopping else self._answer_inline(now)
            self._advance(now, TURN - answered)
            if not (self._reading and protocol.receive_whole) or self._closed:
                return

    def _receive_steady(self, splitter) -> None:
        """The receive of a connection waiting for a request, in one compiled call
        (InlinePredicts.receive): the bytes received, the inline Predicts among them answered
        and their replies sent. When that was all (every frame answered, every reply sent,
        nothing left over) the connection is back where it was, waiting; anything else
        continues the usual way: bytes with descriptors are announced with them, what is left
        over is held and its frames answered by _advance, an unsent rest waits to be sent."""
        protocol = self.protocol
        inline = self.server.inline
        out = bytearray()
        now = time.monotonic()
        try:
            n, fds, truncated, answered, sent = inline.receive(
                self.sock, splitter, protocol.receive_bytes, TURN, out, now)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug("client connection ended: %s", e)
            self.close()
            return
        if not n:
            protocol.receive_eof()
            self._advance()
            return
        self.idle = False
        held, failed = _left_by(inline)
        if fds or truncated:
            protocol.buffer_updated(n, now, fds, truncated)
            self._advance(now)
        elif sent == len(out) and held is None and failed is None and not splitter.pending:
            # Waiting for a request again, as _advance's NeedData leaves it (the loop finds
            # the idle timer's old deadline not due, and looks at the new one).
            self.idle = True
            self._waiting_since = now
            return
        else:
            protocol.taken(now, held)
            answered += self._send_pass(out, sent, failed)
            self._advance(now, TURN - answered)
        if self._reading and protocol.receive_whole and not self._closed:
            self._receive()  # the rest of a large body, as _receive goes on

    def _send_pass(self, out: bytearray, sent: int, failed) -> int:
        """After a pass: its replies from byte `sent` on, with, when a call of the pass
        raised, that call's error reply; 1 if there was one (a request answered), else 0.
        The connection reads again only once _advance finds the protocol needing bytes."""
        extra = 0
        if failed is not None:  # its frame is taken: answered here, in its place
            parts, model, error = failed
            outcome = self.server.inline_failed(model, error)
            message = str(outcome.reply).encode("utf-8", "replace")
            header, message = reply_parts(parts[1], parts[3], outcome.code, message)
            out += header + message
            extra = 1
        self._reading = False
        if sent < len(out):
            self._send(memoryview(out)[sent:])
        return extra

    def _answer_inline(self, now: float) -> int:
        """The inline Predicts at the head of what was received, answered in one pass and
        their replies sent in one sendmsg: how many (of this turn's). The pass hands the first
        frame it does not answer back to the protocol, for _advance."""
        protocol = self.protocol
        splitter = protocol.inline_splitter()
        if splitter is None:
            return 0
        inline = self.server.inline
        out = bytearray()
        answered = inline.answer(splitter, TURN, out, now)
        held, failed = _left_by(inline)
        protocol.give_back(held)
        if answered or failed is not None:
            answered += self._send_pass(out, 0, failed)
        return answered

    def _advance(self, now: float | None = None, turn: int = TURN) -> None:
        """Answer what is complete, in order, until the protocol needs bytes, a call runs
        off the loop, a reply waits for the client, or this turn's requests are done.
        `now`: when the bytes came (the calls answered inline meanwhile are short); `turn`:
        the requests this turn still has."""
        protocol = self.protocol
        if now is None:
            now = time.monotonic()
        while not (self._closed or self._closing or self._running or self._out):
            if self._stopping:
                self.close()
                return
            if not turn:
                # The other connections' turn first; nothing more is read meanwhile.
                self._want(_HANGUP)
                self.loop.soon(self._advance)
                return
            event = protocol.next_event(now)
            kind = event.__class__
            self._reading = kind is NeedData
            if kind is Request:
                turn -= 1
                self.idle = False
                self._dispatch(event)
            elif kind is NeedData:
                self.idle = not protocol.frame_in_progress
                self._waiting_since = now
                timeout = protocol.receive_timeout
                if timeout:
                    self.loop.timer_changed(now + timeout)
                self._want(READ)
                return
            elif kind is ProtocolError:
                if not event.closing:
                    self._send(protocol.send_error(event))
                    continue
                log.info("closing a client connection (pid %d): %s", self.caller.pid,
                         event.message)
                self._close_with(protocol.send_error(event))
                return
            else:  # Closed
                self.close()
                return

    def _dispatch(self, request: Request) -> None:
        method, body, fds = request.method, request.body, request.fds
        caller = self.caller if not fds else dataclasses.replace(self.caller, fds=fds)
        workers = self.workers
        queue, measured = workers.place(method, body, fds)
        if queue is None:
            try:
                outcome = workers.run(measured, self.serve, method, body, caller)
            finally:
                if fds:
                    close_fds(fds)
            self._reply(request, outcome)
            return
        self._running = True
        self.loop.calls_out += 1
        # Nothing more is read while the call runs (its body is in our buffer); a hang-up is
        # still seen. The socket stays armed for reading until bytes come (_on_ready).
        # Decided here, on the loop: whether the worker may put the connection back to
        # reading itself (nothing else received waits behind this request).
        drained = self.protocol.drained

        def job() -> None:
            try:
                if self._closed:  # its client went while it waited: nobody to answer
                    outcome = NOT_RUN
                else:
                    outcome = workers.run(measured, self.serve, method, body, caller)
            except BaseException as e:  # never: Api.serve answers every failure
                outcome = Outcome(StatusCode.INTERNAL, f"internal error: {e}")
            finally:
                if fds:
                    close_fds(fds)
            self._finish(request, outcome, drained)

        queue(job)

    def _finish(self, request: Request, outcome: Outcome, drained: bool) -> None:
        """On the worker, the call done: its reply is sent from here, as far as the socket
        takes it now; what it does not take, and everything else, is the loop's (_done).

        Under the connection's lock, which the loop's close() and _done() take too: the
        descriptor is never closed (let alone reused) under this send, and _done() runs
        after it. _done is queued first, so that the client's next request, which may
        come as soon as the reply is read, finds it waiting on the loop. When nothing else
        received waits behind this request (`drained`), it is queued lazily
        (call_by_threadsafe: the client's next request wakes the loop, not this reply) and,
        the reply sent whole, the socket is armed for reading here; else the loop is woken."""
        loop = self.loop
        with self._lock:
            if self._closed or outcome is NOT_RUN:
                loop.call_soon_threadsafe(self._done)
                return
            lazy = drained and not self._stopping
            if lazy:
                timeout = self.protocol.idle_timeout
                loop.call_by_threadsafe(time.monotonic() + timeout if timeout else _NEVER,
                                        self._done)
            else:
                loop.call_soon_threadsafe(self._done)
            try:
                header, body = self.protocol.reply_parts(request.request_id, request.method,
                                                         outcome.code, outcome.reply)
                parts = (header + body,) if len(body) < 4096 else (header, body)
                try:
                    sent = self.sock.sendmsg(parts)
                except BlockingIOError:
                    sent = 0
                self._left = _unsent(parts, sent)
            except OSError as e:
                log.debug("client connection ended before its reply: %s", e)
                self._left = e
            except Exception as e:  # a fault of ours: the loop closes the connection
                log.exception("replying from a worker failed")
                self._left = e
            if lazy:
                if self._left:
                    loop.wake()
                else:
                    self._want(READ)

    def _done(self) -> None:
        """On the loop: a call handed off has ended and its worker's _finish is over; what
        the socket did not take is sent from here, and the connection reads on (or closes:
        the send failed, stopping)."""
        with self._lock:
            left, self._left = self._left, ()
        self.loop.calls_out -= 1
        self._running = False
        if self._closed:
            return
        if isinstance(left, Exception):
            self.close()
            return
        if left:
            self._send(*left)
        self._advance()

    def _reply(self, request: Request, outcome: Outcome) -> None:
        header, body = self.protocol.reply_parts(request.request_id, request.method,
                                                 outcome.code, outcome.reply)
        if len(body) < 4096:
            self._send(header + body)
        else:
            self._send(header, body)

    # --- bytes out --------------------------------------------------------------------------

    def _send(self, *parts) -> None:
        """Send `parts` as far as the socket takes them now; the rest waits for WRITE."""
        if not self._out:  # the usual case: all of it goes at once
            try:
                sent = self.sock.sendmsg(parts)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                log.debug("client connection ended before its reply: %s", e)
                self.close()
                return
            self._out.extend(_unsent(parts, sent))
            if not self._out:
                if self._closing:
                    self.close()
                return
            self._sent_at = time.monotonic()
            self._want(WRITE)
            self.loop.timer_changed(self.deadline())
            return
        self._out.extend(memoryview(part) for part in parts)
        self._flush()

    def _flush(self) -> None:
        out = self._out
        while out:
            try:
                sent = self.sock.sendmsg(list(out)[:16])
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("client connection ended before its reply: %s", e)
                self.close()
                return
            self._sent_at = time.monotonic()
            while sent:
                head = out[0]
                if sent >= len(head):
                    sent -= len(head)
                    out.popleft()
                else:
                    out[0] = head[sent:]
                    sent = 0
        if out:
            self._want(WRITE)
            self.loop.timer_changed(self.deadline())
            return
        if self._closing:
            self.close()
        elif self._mask & WRITE:
            self._want(_HANGUP)
            self._advance()

    def _close_with(self, data: bytes) -> None:
        """Send `data` (an error saying why), then close, giving the client at most
        CLOSING_SEND_SECONDS to take it."""
        self._closing = True
        self._send(data)

    def _want(self, mask: int) -> None:
        """Wait for `mask` on the socket (_HANGUP: only for the client's hang-up)."""
        if mask == self._mask or self._closed:
            return
        selector = self.loop.selector
        if not self._mask:
            selector.register(self.sock, mask, self._on_ready)
        elif not mask:
            selector.unregister(self.sock)
        else:
            selector.modify(self.sock, mask, self._on_ready)
        self._mask = mask

    def close(self) -> None:
        if self._closed:
            return
        with self._lock:  # not while a worker sends on this socket (_finish)
            self._closed = True
            self.core.remove(self.fd, self)
            if self._mask:
                self.loop.selector.unregister(self.sock)
            self.protocol.close()
            self.share.close()
            self.sock.close()


def _unsent(parts, sent: int) -> tuple:
    """What of `parts` a send of `sent` bytes left, as views."""
    rest = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        rest.append(memoryview(part)[sent:])
        sent = 0
    return tuple(rest)


def _left_by(inline) -> tuple:
    """(held, failed) of the pass just made, taken off the pass object: it is the front's,
    not the connection's, and must not keep past the pass a view of this connection's buffer
    (the frame held) or a model and an exception's frames (a failed call)."""
    held, failed = inline.held, inline.failed
    inline.held = inline.failed = None
    return held, failed
