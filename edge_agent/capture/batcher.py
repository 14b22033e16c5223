"""The background delivery thread: seal batches, write them, record outcomes.

Captures wait (as journal locations, not in memory) until `batch_size` of them are pending
or the oldest has waited `push_period` seconds; then a batch is sealed — its composition
journaled first — and written. One batch is in flight at a time, oldest first. While the
store is unreachable the batch is retried with exponential backoff and full jitter; nothing
is dropped and the statuses stay IN_PROGRESS. A batch the store refuses for good
(`max_attempts` times) ends in FAILURE, with the store's answer as the reason. A finished
batch gets a DONE record in the journal (after its outcome is in status.log): that is what
tells the next start it is delivered.

The thread never dies of a disk error (or a fault of ours): whatever it was doing — sealing
a batch, writing it, recording its outcome — is put back at the front and tried again after
a backoff. Every step is safe to repeat: a batch is rewritten under the same keys, a seal
whose flush failed is superseded by the next one (entries.py).
"""
from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Callable, NamedTuple

from edge_agent import agent_pb2 as pb
from edge_agent.capture import entries
from edge_agent.capture.destinations import DeliveryError, Destination
from edge_agent.capture.journal import Journal, Location
from edge_agent.capture.manifest import batch_folder, build_batch
from edge_agent.capture.status import Outcome, StatusLog

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.2


class Waiting(NamedTuple):
    key: bytes
    location: Location
    since: float  # time.monotonic() when it was accepted (or replayed)


class Batch(NamedTuple):
    sealed: entries.SealedBatch
    locations: list[Location]
    record: Location  # the BATCH record itself


class BatchSettings(NamedTuple):
    batch_size: int
    push_period: float
    prefix: str
    device_name: str
    fleet_name: str
    embed_limit: int
    max_attempts: int
    retry_max_seconds: float


class Batcher:
    def __init__(self, journal: Journal, statuses: StatusLog, destination: Callable[[], Destination],
                 settings: BatchSettings, on_finished: Callable[[int, int], None]):
        """`destination()` returns the Destination (built on first use, in this thread);
        `on_finished(count, status)`: a batch of `count` captures ended in `status`."""
        self.journal = journal
        self.statuses = statuses
        self._destination_factory = destination
        self._destination: Destination | None = None
        self.settings = settings
        self.on_finished = on_finished
        self._waiting: collections.deque[Waiting] = collections.deque()
        self._sealed: collections.deque[Batch] = collections.deque()  # replayed, not yet written
        self._cond = threading.Condition()
        self._stopping = False
        self._deadline = float("inf")
        # (time.time(), reason) of the last failed write or journal step, for the metrics;
        # replaced whole, so a reader on another thread sees one or the other.
        self.last_error: tuple[float, str] | None = None
        self._thread = threading.Thread(target=self._run, name="edge-agent-capture", daemon=True)

    # --- called from other threads ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def add(self, key: bytes, location: Location) -> None:
        with self._cond:
            self._waiting.append(Waiting(key, location, time.monotonic()))
            # Wake the thread for the first capture (its push period starts) and a full batch.
            if len(self._waiting) in (1, self.settings.batch_size):
                self._cond.notify()

    def resume(self, batch: Batch) -> None:
        with self._cond:
            self._sealed.append(batch)

    def stop(self, flush_seconds: float) -> bool:
        """Deliver what is pending for up to flush_seconds, then stop; the rest stays journaled.
        Returns at the deadline even if a write is still in flight (an S3 PUT can take its
        whole timeout): False then, and the thread, a daemon, finds the journal closed when
        the write returns, so it records nothing and that batch is rewritten at the next
        start."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + flush_seconds
            self._cond.notify()
        self._thread.join(max(0.0, flush_seconds))
        return not self._thread.is_alive()

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0  # in a row
        while True:
            work = self._next_work()
            if work is None:
                return
            batch = work if isinstance(work, Batch) else None
            try:
                batch = work if isinstance(work, Batch) else self._seal(work)
                self._deliver(batch)
                failures = 0
                continue
            except OSError as e:  # the journal or the status log: a full or failing disk
                what = f"cannot journal capture batch {batch.sealed.batch_id if batch else ''}"
                reason = e.strerror or str(e)
                trace = False
            except Exception as e:  # a fault of ours
                what, reason, trace = "capture delivery failed unexpectedly", str(e), True
            self._put_back(work if batch is None else batch)
            self.last_error = (time.time(), f"{what}: {reason}")
            if self._stopping:
                log.info("%s (%s); it stays in the journal for the next start", what, reason)
                return
            failures += 1
            log.error("%s (will retry): %s", what, reason, exc_info=trace)
            if self._wait(self._backoff(failures)):
                return

    def _put_back(self, work) -> None:
        """Undo _next_work: the batch or the captures go back to the front, in order."""
        with self._cond:
            if isinstance(work, Batch):
                self._sealed.appendleft(work)
            else:
                self._waiting.extendleft(reversed(work))

    def _backoff(self, tries: int) -> float:
        """Exponential backoff with full jitter, at most retry_max_seconds."""
        return random.uniform(0, min(self.settings.retry_max_seconds,
                                     BACKOFF_BASE_SECONDS * 2 ** min(tries, 20)))

    def _next_work(self) -> Batch | list[Waiting] | None:
        """A replayed batch, the captures to seal into the next one, or None: stop."""
        with self._cond:
            while True:
                if self._stopping and time.monotonic() >= self._deadline:
                    return None
                if self._sealed:
                    return self._sealed.popleft()
                if self._waiting:
                    age = time.monotonic() - self._waiting[0].since
                    if self._stopping or len(self._waiting) >= self.settings.batch_size \
                            or age >= self.settings.push_period:
                        return [self._waiting.popleft()
                                for _ in range(min(self.settings.batch_size, len(self._waiting)))]
                    self._cond.wait(self.settings.push_period - age)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()

    def _seal(self, taken: list[Waiting]) -> Batch:
        """Journal the batch's composition before its first write (OSError: not sealed)."""
        sealed = entries.SealedBatch(time.time_ns(), [w.key for w in taken])
        record = self.journal.append(entries.BATCH, entries.encode_batch(sealed))
        return Batch(sealed, [w.location for w in taken], record)

    def _wait(self, seconds: float) -> bool:
        """Sleep, unless stopping; True when the thread should give up (stopping)."""
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)
            return self._stopping

    def _deliver(self, batch: Batch) -> None:
        sealed = batch.sealed
        folder = batch_folder(self.settings.prefix, sealed.created_ns, sealed.batch_id)
        refusals = 0
        tries = 0
        while True:
            tries += 1
            try:
                if self._destination is None:
                    self._destination = self._destination_factory()
                captures = [entries.decode_accept(self.journal.read(loc)) for loc in batch.locations]
                files = build_batch(sealed.batch_id, captures, self.settings.device_name,
                                    self.settings.fleet_name, self.settings.embed_limit)
                self._destination.write_batch(folder, files)
            except DeliveryError as e:
                self.last_error = (time.time(), f"capture batch {sealed.batch_id}: {e.reason}")
                if not e.transient:
                    refusals += 1
                    if refusals >= self.settings.max_attempts:
                        log.error("capture batch %s (%d captures) failed for good after %d "
                                  "tries: %s", sealed.batch_id, len(sealed.keys), tries, e.reason)
                        self._finish(batch, Outcome(pb.FAILURE, e.reason))
                        return
                log.warning("capture batch %s not written (try %d, will retry): %s",
                            sealed.batch_id, tries, e.reason)
                if self._stopping:
                    return  # stays journaled; the next start delivers it
                if self._wait(self._backoff(tries)):
                    return
                continue
            log.debug("capture batch %s: %d captures written to %s", sealed.batch_id,
                      len(sealed.keys), folder)
            self._finish(batch, Outcome(pb.SUCCESS))
            return

    def _finish(self, batch: Batch, outcome: Outcome) -> None:
        """Outcomes are durable before the journal says DONE, and DONE before the journal may
        forget the captures. An OSError here is retried by _run from the write on: all of it
        is safe to repeat."""
        self.statuses.finish([(key, outcome) for key in batch.sealed.keys])
        self.journal.append(entries.DONE, entries.encode_reference(batch.record.segment,
                                                                   batch.record.offset), pin=False)
        self.journal.unpin([loc.segment for loc in batch.locations] + [batch.record.segment])
        self.on_finished(len(batch.sealed.keys), outcome.status)
