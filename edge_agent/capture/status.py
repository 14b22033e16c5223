"""capture_id → status, kept across restarts.

Captures in progress are those the journal holds and no outcome is known for; the journal's
replay reports them. Outcomes (SUCCESS, or FAILURE with its reason) are appended to
`status.log` (records as in records.py) and flushed before the journal forgets the capture,
so a status is never lost and a used capture_id is recognised after a restart. The log keeps
the newest `history` outcomes: it is rewritten (temporary file, fsync, rename) when it holds
twice as many, and older ids are forgotten (NOT_FOUND again).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from collections import OrderedDict
from typing import NamedTuple

from edge_agent import agent_pb2 as pb
from edge_agent.capture import records
from edge_agent.capture.durable import fsync_directory

log = logging.getLogger(__name__)

OUTCOME = 1  # record type: 16-byte capture id, status byte, UTF-8 reason


class Outcome(NamedTuple):
    status: int  # pb.CaptureDataStatus value
    reason: str = ""


IN_PROGRESS = Outcome(pb.IN_PROGRESS)


def _encode(key: bytes, outcome: Outcome) -> bytes:
    return records.encode(OUTCOME, key + bytes((outcome.status,)) + outcome.reason.encode())


class StatusLog:
    def __init__(self, path: str, history: int, fsync: bool = True):
        self.path = path
        self.history = history
        self.fsync = fsync
        self._lock = threading.Lock()
        self._finished: OrderedDict[bytes, Outcome] = OrderedDict()
        self._in_progress: set[bytes] = set()
        self._logged = 0  # records in the file
        self._fd = -1

    def open(self) -> None:
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                good, end, problem = records.read_records(f)
            if problem is not None:
                log.info("capture status log %s: %s at byte %d; cutting the tail", self.path,
                         problem, end)
                os.truncate(self.path, end)
            for payload in records.iter_payloads(good, OUTCOME):
                self._remember(payload[:16], Outcome(payload[16], payload[17:].decode()))
            self._logged = len(good)
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if created and self.fsync:
            fsync_directory(os.path.dirname(self.path))  # the new file's name survives a power loss
        if self._logged > 2 * self.history:
            self._rewrite()

    def _remember(self, key: bytes, outcome: Outcome) -> None:
        self._finished[key] = outcome
        self._finished.move_to_end(key)
        while len(self._finished) > self.history:
            self._finished.popitem(last=False)

    # --- lookups and reservations -----------------------------------------------------------

    def get(self, key: bytes) -> Outcome | None:
        with self._lock:
            if key in self._in_progress:
                return IN_PROGRESS
            return self._finished.get(key)

    def reserve(self, key: bytes) -> Outcome | None:
        """Mark `key` in progress; if it is already known, its status instead (and no change)."""
        with self._lock:
            if key in self._in_progress:
                return IN_PROGRESS
            known = self._finished.get(key)
            if known is None:
                self._in_progress.add(key)
            return known

    def release(self, key: bytes) -> None:
        """A reservation whose capture was not accepted after all."""
        with self._lock:
            self._in_progress.discard(key)

    def finish(self, outcomes: list[tuple[bytes, Outcome]]) -> None:
        """Record the outcomes durably, then report them."""
        data = b"".join(_encode(key, outcome) for key, outcome in outcomes)
        with self._lock:
            if self._fd < 0:  # closed: a delivery thread that outlived the shutdown
                raise OSError(errno.EBADF, f"the capture status log {self.path} is closed")
            os.write(self._fd, data)
            if self.fsync:
                os.fdatasync(self._fd)
            self._logged += len(outcomes)
            for key, outcome in outcomes:
                self._in_progress.discard(key)
                self._remember(key, outcome)
            if self._logged > 2 * self.history:
                self._rewrite()

    def _rewrite(self) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "wb") as f:
            f.write(b"".join(_encode(k, o) for k, o in self._finished.items()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        fsync_directory(os.path.dirname(self.path))
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._logged = len(self._finished)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
