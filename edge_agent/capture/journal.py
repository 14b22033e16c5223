"""The capture journal: append-only segment files with group commit, replay and compaction.

Files `seg-00000001.log`, `seg-00000002.log`, ... in the journal directory hold records in
the format of `records.py`. Appends go to the newest segment; every start appends to a new
one, so a torn tail left by a crash is cut once and never written after.

Durability (the policy docs/CAPTURE.md states): `append` returns only once its record is
on disk — written with os.write and flushed with fdatasync. Appends from several threads
share flushes (group commit): while one thread waits for fdatasync, the others write their
records, and the next flush covers them all. With fsync off, records reach the page cache
only: they survive the agent being killed, not the board losing power.

Segments are pinned by the records in them that are still needed; `unpin` deletes the oldest
segments once nothing pins them (in order, so replay never sees a hole).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import NamedTuple

from edge_agent.capture import records

log = logging.getLogger(__name__)

SEGMENT = re.compile(r"seg-(\d{8})\.log")


class Location(NamedTuple):
    segment: int
    offset: int
    size: int  # header + payload


def fsync_directory(path: str) -> None:
    """Make a new or renamed file's directory entry durable, not just its bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, directory: str, segment_bytes: int, fsync: bool = True):
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()  # the write position; taken after _sync_lock if both
        self._sync_lock = threading.Lock()  # one flush at a time; rotation holds it too
        self._sizes: dict[int, int] = {}  # every segment on disk → its size
        self._pins: dict[int, int] = {}
        self._readers: dict[int, int] = {}  # segment → read-only fd
        self._fd = -1
        self._current = 0
        self._written = 0  # appends written, and
        self._synced = 0  # of them, those known to be on disk

    # --- start ------------------------------------------------------------------------------

    def open(self) -> list[tuple[int, records.Record]]:
        """Replay: every good record as (segment, record), oldest first; then open for appends."""
        os.makedirs(self.directory, exist_ok=True)
        segments = sorted(int(m.group(1)) for m in map(SEGMENT.fullmatch, os.listdir(self.directory)) if m)
        replayed = []
        for segment in segments:
            path = self._path(segment)
            with open(path, "rb") as f:
                good, end, problem = records.read_records(f)
            if problem is not None:
                # Only an unacknowledged tail can be torn: a crash mid-append. Elsewhere it is
                # damage on disk, and the records after it are lost; say so loudly.
                last = segment == segments[-1]
                (log.info if last else log.error)(
                    "capture journal %s: %s at byte %d; %s", path, problem, end,
                    "cutting the unacknowledged tail" if last else "records after it are lost")
                os.truncate(path, end)
            self._sizes[segment] = end
            self._pins[segment] = 0
            replayed.extend((segment, r) for r in good)
        self._new_segment((segments[-1] if segments else 0) + 1)
        return replayed

    def _path(self, segment: int) -> str:
        return os.path.join(self.directory, f"seg-{segment:08d}.log")

    def _new_segment(self, segment: int) -> None:
        self._fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_directory(self.directory)
        self._current = segment
        self._sizes[segment] = 0
        self._pins[segment] = 0

    # --- appends ----------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def append(self, record_type: int, payload: bytes, pin: bool = True) -> Location:
        """Write one record and return once it is durable; `pin` keeps its segment."""
        data = records.encode(record_type, payload)
        with self._lock:
            os.write(self._fd, data)  # O_APPEND: one write, one record, never interleaved
            location = Location(self._current, self._sizes[self._current], len(data))
            self._sizes[self._current] += len(data)
            if pin:
                self._pins[self._current] += 1
            self._written += 1
            sequence = self._written
        self._sync(sequence)
        if location.offset + location.size >= self.segment_bytes:
            self._rotate_if_full()
        return location

    def _sync(self, sequence: int) -> None:
        if not self.fsync:
            return
        with self._sync_lock:
            if self._synced >= sequence:
                return  # another thread's flush covered this record
            with self._lock:
                target = self._written
            os.fdatasync(self._fd)  # rotation needs _sync_lock, so the fd stays open
            self._synced = target

    def _rotate_if_full(self) -> None:
        with self._sync_lock, self._lock:
            if self._sizes[self._current] < self.segment_bytes:
                return  # another thread rotated already
            self._rotate_locked()

    def _rotate_locked(self) -> None:
        os.fdatasync(self._fd)  # the old segment is complete on disk before the next begins
        self._synced = self._written
        os.close(self._fd)
        self._new_segment(self._current + 1)
        self._delete_unpinned_locked()

    # --- reads and compaction ---------------------------------------------------------------

    def read(self, location: Location) -> bytes:
        """The payload of the record at `location`."""
        with self._lock:
            fd = self._readers.get(location.segment)
            if fd is None:
                fd = self._readers[location.segment] = os.open(self._path(location.segment), os.O_RDONLY)
            data = os.pread(fd, location.size, location.offset)
        return data[records.HEADER.size:]  # its CRC was checked when it was written or replayed

    def unpin(self, segments: list[int]) -> None:
        """The records these segments were pinned for are no longer needed."""
        with self._sync_lock, self._lock:
            for segment in segments:
                self._pins[segment] -= 1
            if all(n == 0 for n in self._pins.values()) and \
                    self._sizes[self._current] >= self.segment_bytes // 4:
                self._rotate_locked()  # all delivered: start afresh rather than keep dead bytes
            else:
                self._delete_unpinned_locked()

    def _delete_unpinned_locked(self) -> None:
        deleted = False
        for segment in sorted(self._sizes):
            if segment == self._current or self._pins[segment]:
                break
            fd = self._readers.pop(segment, None)
            if fd is not None:
                os.close(fd)
            os.unlink(self._path(segment))
            del self._sizes[segment], self._pins[segment]
            deleted = True
        if deleted:
            fsync_directory(self.directory)

    def pin_replayed(self, segment: int) -> None:
        """Replay found a record in `segment` that is still needed."""
        with self._lock:
            self._pins[segment] += 1

    def compact_after_replay(self) -> None:
        with self._sync_lock, self._lock:
            self._delete_unpinned_locked()

    def close(self) -> None:
        with self._sync_lock, self._lock:
            if self._fd >= 0:
                if self.fsync:
                    os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()
