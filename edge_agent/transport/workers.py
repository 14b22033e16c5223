"""Where a call runs: inline on the loop, on its model's worker, or in the small pool.

- Predict runs inline while its model's measured time per call (the least of the last
  SAMPLES successful calls: time spent waiting for the GIL or a core, when threads compete, only ever
  adds to a call's time, so the least is the model's own cost) is under INLINE_SECONDS: a
  tiny model costs less to run than a hand-off to another thread. A model measured slower
  gets a worker thread of its own (its invoke releases the GIL, so two compute-bound models
  keep two cores), up to MAX_MODEL_WORKERS models; a model not yet measured, or a Predict
  that brings descriptors (shared memory to map), runs in the pool. (A SysV segment named in
  the request is attached once and cached: its cost shows in one measured call.)
- Calls that may block — loading a model and its check, capture (its journal syncs),
  metrics, unloading (it waits for the model's calls), a capture's status (it may read the
  disk), the model repository's calls — run in the pool; ListModels and DescribeModel read
  memory and run inline.

A call handed off is answered from the thread that ran it: on the framed front that thread
sends the reply itself and leaves the rest to the loop (FramedConnection._finish); the gRPC
front's results come back to the loop through call_soon_threadsafe().
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from edge_agent.api.rpcs import Method, Outcome
from edge_agent.errors import StatusCode

log = logging.getLogger(__name__)

# Requests (framed) or calls (gRPC) one connection may have answered in one turn of the loop
# before the other connections'.
TURN = 8
# What a call queued here answers when its connection closed before it ran (its client
# left, or the agent stopped): nothing is run, the descriptors it brought are closed.
NOT_RUN = Outcome(StatusCode.UNAVAILABLE, "the connection closed before the call ran")
Queue = Callable[[Callable[[], None]], object]  # queues a job on the thread that runs it
INLINE_SECONDS = 50e-6
SAMPLES = 16
MEASURE_EVERY = 16
MAX_MODEL_WORKERS = 32
# Model names with a decision kept, and names being measured (each beyond: the least
# recently measured is forgotten, and measured again when it comes back).
MAX_MEASURED = 256
POOL_THREADS = 4
# Read-only, in memory: never worth a hand-off.
INLINE_METHODS = frozenset({Method.LIST_MODELS, Method.DESCRIBE_MODEL})


def predict_model_name(body) -> str | None:
    """The model name of a serialized PredictRequest (field 1, a string), read without
    decoding the message; None when it is not where the encoders put it (first)."""
    if len(body) < 2 or body[0] != 0x0A:
        return None
    length, at = 0, 1
    for shift in (0, 7):
        if at >= len(body):  # the body ends inside the name's length
            return None
        byte = body[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        return None
    name = body[at:at + length]
    return bytes(name).decode("utf-8", "replace") if len(name) == length else None


class _ModelWorker:
    """One thread running one model's calls in order."""

    def __init__(self, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                         name=f"edge-agent-model-{name[:20]}")
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            job()

    def stop(self, deadline: float) -> bool:
        """End after the calls queued; False if still running at `deadline`."""
        self._queue.put(None)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()


class Workers:
    """The threads calls are handed to, and the per-model timings that decide."""

    def __init__(self, pool_threads: int = POOL_THREADS, inline_seconds: float = INLINE_SECONDS):
        self.inline_seconds = inline_seconds
        self._pool = ThreadPoolExecutor(pool_threads, thread_name_prefix="edge-agent-call")
        self._models: dict[str, _ModelWorker] = {}
        self._samples: OrderedDict[str, list[float]] = OrderedDict()
        # model → measured slower than inline_seconds (least recently measured first)
        self._slow: OrderedDict[str, bool] = OrderedDict()
        self._lock = threading.Lock()  # samples come from the loop and the workers
        self._calls = 0  # Predicts placed: every MEASURE_EVERY-th of a decided model is timed

    def place(self, method: int, body, fds) -> tuple[Queue | None, str | None]:
        """(None: run it inline, else the function that queues a job where it runs; the
        model whose time this call should be measured for, or None). A model not yet decided
        is measured on every call, a decided one on one call in MEASURE_EVERY (its cost may
        change: another version under the same name)."""
        if method != Method.PREDICT:
            return (None if method in INLINE_METHODS else self._pool.submit), None
        name = predict_model_name(body)
        if name is None:
            return self._pool.submit, None
        slow = self._slow.get(name)
        self._calls += 1
        measured = name if slow is None or not self._calls % MEASURE_EVERY else None
        if fds:
            return self._pool.submit, measured
        if slow is False:
            return None, measured
        if slow:
            worker = self._models.get(name)
            if worker is None and len(self._models) < MAX_MODEL_WORKERS:
                worker = self._models[name] = _ModelWorker(name)
            if worker is not None:
                return worker.submit, measured
        return self._pool.submit, measured

    @property
    def decided(self) -> OrderedDict[str, bool]:
        """Model name → measured slower than inline_seconds, for the models decided: the
        live dictionary, read without the lock (one dict read) by the framed front's inline
        pass."""
        return self._slow

    def measure(self, name: str, seconds: float) -> None:
        """One successful Predict's time (wherever it ran): every SAMPLES, the least of them
        decides. Beyond MAX_MEASURED names, the least recently measured is forgotten: names
        measured once each (never decided) push out only each other, not the decisions."""
        with self._lock:
            pending = self._samples
            samples = pending.get(name)
            if samples is None:
                if len(pending) >= MAX_MEASURED:
                    pending.popitem(last=False)
                samples = pending[name] = []
            else:
                pending.move_to_end(name)
            samples.append(seconds)
            if len(samples) >= SAMPLES:
                decided = self._slow
                decided[name] = min(samples) > self.inline_seconds
                decided.move_to_end(name)
                if len(decided) > MAX_MEASURED:
                    decided.popitem(last=False)
                samples.clear()

    def run(self, measured: str | None, call: Callable[..., Outcome], *args) -> Outcome:
        """call(*args), timed for the model `measured` (place() said which, if any) when it
        succeeds: a failure (a malformed request, a wrong shape) may return before the model
        runs, and says nothing of its cost."""
        if measured is None:
            return call(*args)
        started = time.perf_counter()
        outcome = call(*args)
        if outcome.code == StatusCode.OK:
            self.measure(measured, time.perf_counter() - started)
        return outcome

    def stop(self, timeout: float = 2.0) -> bool:
        """Calls running get up to `timeout` seconds to end (a call stuck in a model must not
        hold the agent's stop for ever). Jobs not started still run, after them: the fronts
        closed every connection first, so each answers NOT_RUN at once and closes the
        descriptors it brought (dropped unrun, they would leak). False if some are still
        running at the deadline: their threads end when they return."""
        deadline = time.monotonic() + timeout
        self._pool.shutdown(wait=False)
        ended = True
        for thread in list(getattr(self._pool, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))
            ended = ended and not thread.is_alive()
        for worker in list(self._models.values()):
            ended = worker.stop(deadline) and ended
        self._models.clear()
        return ended
