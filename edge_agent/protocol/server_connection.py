"""The agent's side of one framed connection, sans-IO.

The handler that owns the socket on the agent's event loop
(edge_agent.transport.framed_front.FramedConnection) does only this:

    while True:
        event = conn.next_event(now)
        Request        → answer it (on the loop or a worker), send conn.reply_parts(...)
                         (header and body, in one sendmsg), close event.fds
        ProtocolError  → send conn.send_error(event); stop if event.closing
        NeedData       → wait until the socket is readable, receive into conn.get_buffer(),
                         then conn.buffer_updated(n, now, fds) (conn.receive_eof() at end of
                         stream, conn.receive_timed_out() when conn.receive_timeout passed
                         with nothing received)
        Closed         → stop
    finally: conn.close()

Everything else is decided here: which frames are requests, which descriptors belong to
which frame, what a frame cut short or a stalled or idle client gets, and how many bytes
of incomplete frames this connection holds against the agent's pending budget. Time comes
in as an argument; nothing here reads a clock or touches a socket, so every rule is tested
on plain bytes (tests/unit/test_protocol_connection.py).
"""
from __future__ import annotations

from collections import deque

from edge_agent.errors import StatusCode
from edge_agent.protocol.events import CLOSED, NEED_DATA, ProtocolError, Request
from edge_agent.protocol.frames import (HEADER, FrameSplitter, FramingError, Kind,
                                        encode_error, reply_parts)
from edge_agent.protocol.receiving import RECV_BYTES, next_receive
from edge_agent.protocol.receiving import MAX_FDS, close_fds


_REQUEST = int(Kind.REQUEST)  # a plain int: compared once a request, faster than the enum

# Stands for the descriptors of a frame that came with more than MAX_FDS: already closed,
# the frame is answered INVALID_ARGUMENT.
_TOO_MANY_FDS = (-1,)


class ServerConnection:
    """One client's framed stream. `budget`: the agent's PendingBudget (change(held, wanted)
    → bool, refusal() → str), shared by all connections and both fronts.

    Pending budget: the bytes of an incomplete frame, and the space set aside to receive the
    rest of a large body, are held while they are buffered; a whole frame is released before
    its Request is handed out, and close() gives back whatever is still held.

    Descriptors (SCM_RIGHTS) belong to the last frame that begins in the bytes they arrived
    with (docs/PROTOCOL.md); until then this object owns them and closes those it refuses.
    """

    def __init__(self, max_body_bytes: int, budget, frame_timeout: float,
                 idle_timeout: float, receive_bytes: int = RECV_BYTES,
                 splitter: type = FrameSplitter):
        # `splitter`: the tests pass each implementation in turn.
        self._splitter = splitter(max_body_bytes, receive_bytes)
        self._budget = budget
        self._held = 0
        self._receive_bytes = receive_bytes
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self._offer = receive_bytes
        # True when get_buffer() offers exactly the rest of a large body: the loop may have
        # the kernel fill it in one receive (MSG_WAITALL).
        self.receive_whole = False
        self._now = 0.0  # the time the last bytes arrived, as the loop said
        self._frame_started: float | None = None  # when the incomplete frame began to arrive
        self._queue: deque = deque()  # frames split early to place descriptors, and theirs
        self._carried = None  # descriptors of the incomplete frame they arrived with
        self._failure: ProtocolError | None = None  # a closing error still to hand out
        self._eof = False
        self._closed = False
        self._awaiting: int | None = None  # the request id of the Request being answered

    # --- bytes in ---------------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where to receive the next bytes (after next_event() said NEED_DATA). `sizehint` is
        not used: the size is what the frame in progress and the budget allow.

        Raises RuntimeError while requests split early (those that came with descriptors)
        still wait to be handed out: their bodies are views of the buffer, which receiving
        would move or overwrite."""
        if self._queue:
            raise RuntimeError(
                f"get_buffer() with {len(self._queue)} request(s) still to hand out (their "
                "bodies are views of the receive buffer): receive only after next_event() "
                "said NEED_DATA")
        return self._splitter.get_buffer(self._offer)

    def buffer_updated(self, nbytes: int, now: float, fds=(), fds_truncated: bool = False) -> None:
        """`nbytes` (> 0) arrived in the view get_buffer() gave, at monotonic time `now`, with
        the descriptors `fds`; `fds_truncated`: the kernel closed some that did not fit
        (MSG_CTRUNC), the frame they came with is refused and `fds` closed here."""
        splitter = self._splitter
        before = splitter.pending
        splitter.buffer_updated(nbytes)
        self._now = now
        if not self._hold(before + nbytes):
            close_fds(fds)  # refused with the bytes they came with
            self._failure = self._refused()
            return
        if fds or fds_truncated or self._carried is not None:
            self._split_with_fds(before, nbytes, fds, fds_truncated)

    def receive_eof(self) -> None:
        """The client closed its side: a frame cut short is an error, else the end."""
        self._eof = True

    def receive_timed_out(self) -> None:
        """Nothing arrived within receive_timeout: the idle client is told and let go, one
        that stopped in the middle of a frame is told it stalled."""
        if self._frame_started is None:
            self._failure = self._closing(
                StatusCode.UNAVAILABLE,
                f"connection closed after {self.idle_timeout:g} s without a request "
                "(edge_agent_idle_timeout_seconds); connect again")
        else:
            self._failure = self._closing(StatusCode.DEADLINE_EXCEEDED, self._stalled())

    @property
    def frame_in_progress(self) -> bool:
        return self._frame_started is not None

    @property
    def drained(self) -> bool:
        """Nothing received is left to hand out after the last Request (no byte of another
        frame, no end of stream, no error): the next event can only be NEED_DATA, so the
        connection's next step is to wait for the client."""
        return not (self._queue or self._splitter.pending or self._eof
                    or self._failure is not None or self._closed)

    @property
    def receive_timeout(self) -> float:
        """The receive timeout for the state the connection is in (0: wait for ever): the
        frame timeout while a frame is incomplete, the idle timeout between frames."""
        return self.idle_timeout if self._frame_started is None else self.frame_timeout

    # --- events out -------------------------------------------------------------------------

    def next_event(self, now: float | None = None):
        """The next event. `now`: the loop's monotonic time, when it has been busy since the
        last buffer_updated (answering a request): an incomplete frame that arrived behind
        that request starts its clock now, not when its bytes came, so time the agent spent
        answering is not the client's."""
        if now is not None:
            self._now = now
        if self._queue:
            return self._from_queue()
        if self._closed:
            return CLOSED
        if self._failure is not None:
            return self._fail(self._failure)
        splitter = self._splitter
        try:
            parts = splitter.next_view()
        except FramingError as e:
            return self._fail(self._closing(e.code, e.message, e.request_id))
        if parts is not None:
            self._hold(splitter.pending)  # a whole frame is pending no more (never refused)
            return self._event(parts, None)
        pending = splitter.pending
        if self._eof:
            if pending:
                return self._fail(self._closing(
                    StatusCode.INVALID_ARGUMENT,
                    f"connection closed in the middle of a frame ({pending} bytes pending)"))
            self.close()
            return CLOSED
        if not pending:
            self._frame_started = None
        elif self._frame_started is None:
            self._frame_started = self._now
        elif self._now - self._frame_started > self.frame_timeout:
            # A trickle of bytes must not hold a frame open for ever either.
            return self._fail(self._closing(StatusCode.DEADLINE_EXCEEDED, self._stalled()))
        return self._need_data(pending)

    def _need_data(self, pending: int):
        # The space set aside for a large body is held against the budget before any of it
        # arrives (receiving.next_receive says how much).
        self._offer, self.receive_whole = next_receive(self._splitter.needed, pending,
                                                       self._receive_bytes)
        if self.receive_whole and not self._hold(pending + self._offer):
            return self._fail(self._closing(StatusCode.RESOURCE_EXHAUSTED,
                                            self._budget.refusal()))
        return NEED_DATA

    def _event(self, parts, fds):
        kind, method, status, request_id, body = parts
        if kind != _REQUEST:
            if fds is not None:
                self._discard(fds)
            return self._fail(self._closing(
                StatusCode.INVALID_ARGUMENT, f"expected a request frame, got kind {kind}",
                request_id))
        if status:
            if fds is not None:
                self._discard(fds)
            return ProtocolError(StatusCode.INVALID_ARGUMENT,
                                 f"a request frame carries status 0, got {status}",
                                 request_id, method, closing=False)
        if fds is _TOO_MANY_FDS:
            return ProtocolError(
                StatusCode.INVALID_ARGUMENT,
                f"more than {MAX_FDS} file descriptors came with one frame; all were closed",
                request_id, method, closing=False)
        self._awaiting = request_id
        return Request(method, request_id, body, fds or ())

    def _from_queue(self):
        parts, fds = self._queue.popleft()
        self._hold(self._splitter.pending)
        return self._event(parts, fds)

    # --- requests answered by the caller directly -------------------------------------------

    def inline_splitter(self):
        """The splitter, when the whole frames at its head may be taken by the caller's own
        pass (edge_agent.transport.inline_predicts): nothing split early waits, no closing
        error, no descriptors wait for their frame, the connection open; else None. After
        the pass, give_back() what it did not answer."""
        if self._queue or self._failure is not None or self._carried is not None \
                or self._closed:
            return None
        return self._splitter

    def steady_splitter(self):
        """The splitter, when the connection waits for the first bytes of a frame (nothing of
        one received, nothing held against the budget) and inline_splitter() would give it:
        the caller may then receive receive_bytes into it, announce them to it and run its own
        pass in one go (InlinePredicts.receive), then call taken(); else None, and the caller
        receives the usual way (get_buffer, buffer_updated)."""
        if self._held or self._eof or self._splitter.pending:
            return None
        return self.inline_splitter()

    @property
    def receive_bytes(self) -> int:
        """What a receive offers between frames (get_buffer's size then)."""
        return self._receive_bytes

    def taken(self, now: float, held) -> None:
        """After the caller received into steady_splitter() at monotonic time `now`, announced
        the bytes to it and took the frames it answered: what is left is held against the
        pending budget (refused as buffer_updated refuses: the connection's closing error),
        and `held` given back (give_back)."""
        self._now = now
        if not self._hold(self._splitter.pending):
            self._failure = self._refused()
            return
        self.give_back(held)

    def give_back(self, held) -> None:
        """After the caller's pass over inline_splitter(): `held`, the frame it took but did not
        answer (next_view's parts: the next event hands it out, as next_event would have)
        or the FramingError the splitter raised (the next event is that closing error), or
        None; the frames it answered are released from the pending budget."""
        self._hold(self._splitter.pending)
        if held is None:
            return
        if isinstance(held, FramingError):
            self._failure = self._closing(held.code, held.message, held.request_id)
        else:
            self._queue.append((held, None))

    # --- bytes out --------------------------------------------------------------------------

    def reply_parts(self, request_id: int, method: int, code: int,
                    body_or_message) -> tuple[bytes, bytes]:
        """The reply frame to the Request last handed out, as (header, body): the serialized
        response when `code` is OK, else the error message. Not joined: the loop sends both
        in one sendmsg, so a large response is not copied once more behind its header."""
        if request_id != self._awaiting:
            raise RuntimeError(f"reply to request {request_id}, but {self._awaiting} is the "
                               "one being answered")
        self._awaiting = None
        if code == 0:  # OK
            return reply_parts(method, request_id, 0, body_or_message)
        return reply_parts(method, request_id, code,
                           body_or_message.encode("utf-8", "replace"))

    @staticmethod
    def send_error(event: ProtocolError) -> bytes:
        return encode_error(event.code, event.request_id, event.message, event.method)

    def close(self) -> None:
        """The connection is over, however it ended: the budget share is given back and the
        descriptors not handed out are closed. Idempotent."""
        self._closed = True
        self._queue_discard()
        if self._carried is not None:
            self._discard(self._carried)
            self._carried = None
        self._hold(0)

    # --- the rules --------------------------------------------------------------------------

    def _hold(self, nbytes: int) -> bool:
        """Hold `nbytes` against the pending budget (growing or shrinking this share)."""
        if nbytes != self._held:
            if not self._budget.change(self._held, nbytes):
                return False
            self._held = nbytes
        return True

    def _refused(self) -> ProtocolError:
        """The closing error for bytes the pending budget refused."""
        return self._header_fault() or self._closing(StatusCode.RESOURCE_EXHAUSTED,
                                                     self._budget.refusal())

    def _header_fault(self) -> ProtocolError | None:
        """What the splitter says of bytes the budget refused: a frame refused anyway (a bad
        or oversized header) is refused for that reason, which is the client's to fix. The
        connection closes either way, so frames found here are never answered."""
        try:
            while self._splitter.next_view() is not None:
                pass
        except FramingError as e:
            return self._closing(e.code, e.message, e.request_id)
        return None

    def _split_with_fds(self, before: int, length: int, fds, truncated: bool) -> None:
        """Split the frames of the `length` bytes just received (`before` bytes of an
        incomplete frame were buffered already), giving descriptors to the frame they belong
        to; the frames wait in the queue, their bodies views of the buffer, which is not
        touched again until the queue is empty."""
        frames, failure = [], None
        try:
            while (parts := self._splitter.next_view()) is not None:
                frames.append(parts)
        except FramingError as e:
            failure = self._closing(e.code, e.message, e.request_id)
        passed: list = [None] * len(frames)
        if self._carried is not None and frames:
            passed[0], self._carried = self._carried, None  # its frame is whole now
        if fds or truncated:
            if truncated:
                close_fds(fds)
                fds = _TOO_MANY_FDS
            owner, start = None, -before  # where each frame begins in the new bytes
            for i, parts in enumerate(frames):
                if start >= 0:
                    owner = i
                start += HEADER.size + len(parts[4])
            pending = self._splitter.pending
            if failure is None and 0 < pending <= length:
                self._carried = fds  # the frame they begin with is not whole yet
            elif owner is not None:
                passed[owner] = fds
            else:  # no frame begins here: they came in the middle of one, which is refused
                self._discard(fds)
                for given in passed:
                    if given is not None:
                        self._discard(given)
                self._failure = failure or self._closing(
                    StatusCode.INVALID_ARGUMENT,
                    "file descriptors arrived in the middle of a frame: send them with the "
                    "first byte of the frame they belong to",
                    frames[0][3] if frames else 0)
                return
        self._queue.extend(zip(frames, passed))
        self._failure = failure

    def _closing(self, code: int, message: str, request_id: int = 0) -> ProtocolError:
        return ProtocolError(code, message, request_id)

    def _fail(self, error: ProtocolError) -> ProtocolError:
        """Hand out a closing error: nothing after it is interpreted."""
        self._failure = None
        self.close()
        return error

    def _stalled(self) -> str:
        return f"frame not completed within {self.frame_timeout:g} s"

    def _queue_discard(self) -> None:
        while self._queue:  # frames after a fault are never answered
            _, fds = self._queue.popleft()
            if fds is not None:
                self._discard(fds)

    @staticmethod
    def _discard(fds) -> None:
        if fds is not _TOO_MANY_FDS:
            close_fds(fds)
