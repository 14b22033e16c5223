"""The pure-Python twin of cext/_inline_predicts.pyx (its docstring says what the pass does
and where it stops): a change there is made here too; tests/integration/test_inline_predicts.py
runs both."""
from __future__ import annotations

import time
from typing import Any, Callable

from edge_agent.errors import FramingError
from edge_agent.protocol.frames import HEADER, MAGIC, VERSION, Kind
from edge_agent.transport.socket_io import receive_with_fds
from edge_agent.transport.workers import predict_model_name

_REQUEST = int(Kind.REQUEST)
_REPLY = int(Kind.REPLY)
# The pass stops answering once its replies reach this (the compiled one's OUT_BYTES says why).
OUT_BYTES = 256 * 1024


class InlinePredicts:
    """One front's pass; the compiled one's docstring says what each argument is."""

    def __init__(self, models: dict, decided: dict, count: Callable[[str, int], None],
                 measure: Callable[[str, float], None], method: int, measure_every: int):
        self._models = models
        self._decided = decided
        self._count = count
        self._measure = measure
        self._method = method
        self._measure_every = measure_every
        self._calls = 0
        self.held: Any = None
        self.failed: Any = None

    def answer(self, splitter: Any, turn: int, out: bytearray, now: float) -> int:
        """Answer up to `turn` frames at the head of `splitter`, their reply frames appended
        to `out` until it holds OUT_BYTES: how many. Then `held` and `failed` say where it
        stopped."""
        answered = 0
        self.held = self.failed = None
        while answered < turn and len(out) < OUT_BYTES:
            try:
                parts = splitter.next_view()
            except FramingError as e:
                self.held = e
                break
            if parts is None:
                break
            kind, method, status, request_id, body = parts
            if kind != _REQUEST or status or method != self._method:
                self.held = parts
                break
            name = predict_model_name(body)
            if name is None or self._decided.get(name) is not False:
                self.held = parts
                break
            model = self._models.get(name)
            if model is None:
                self.held = parts
                break
            self._calls += 1
            timed = self._calls % self._measure_every == 0
            started = time.monotonic()
            try:
                reply = model.plain_call.answer(body, now)
            except Exception as e:
                self.failed = (parts, model, e)
                break
            if reply is None:
                self.held = parts
                break
            if timed:
                self._measure(name, time.monotonic() - started)
            out += HEADER.pack(MAGIC, VERSION, _REPLY, method, 0, request_id, len(reply))
            out += reply
            answered += 1
            self._count("Predict", 0)
        return answered

    def receive(self, sock: Any, splitter: Any, offer: int, turn: int, out: bytearray,
                now: float) -> tuple[int, tuple, bool, int, int]:
        """One receive into splitter.get_buffer(offer), the pass over it and the replies sent:
        (nbytes, fds, truncated, answered, sent), as the compiled one's docstring says."""
        view = splitter.get_buffer(offer)
        try:
            received, fds, truncated = receive_with_fds(sock, view)
        except OSError:
            splitter.buffer_updated(0)  # the view released
            raise
        if fds or truncated or not received:
            return received, fds, truncated, 0, 0
        splitter.buffer_updated(received)
        answered = self.answer(splitter, turn, out, now)
        sent = 0
        if answered and self.failed is None:
            try:
                sent = sock.send(out)
            except OSError:  # the caller's send sees the error, or waits to write the rest
                sent = 0
        return received, (), False, answered, sent
