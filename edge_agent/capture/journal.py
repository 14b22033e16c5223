"""The capture journal: append-only segment files with group commit, replay and compaction.

Files `seg-00000001.log`, `seg-00000002.log`, ... in the journal directory hold records in
the format of `records.py`. Appends go to the newest segment; every start appends to a new
one, so a torn tail left by a crash is cut once and never written after.

Durability (the policy docs/CAPTURE.md states): `append` returns only once its record is
on disk — written with os.write and flushed with fdatasync. Appends from several threads
share flushes (group commit): while one thread waits for fdatasync, the others write their
records, and the next flush covers them all. With fsync off, records reach the page cache
only: they survive the agent being killed, not the board losing power.

A flush that fails fails every append it covered (NotDurable, with the record's location):
after a failed fdatasync the kernel may have dropped those pages, and a later fdatasync can
report success without them, so none of them may be acknowledged. The record was written, so
it may or may not be there after a restart: the caller decides what it means (CaptureService
appends an ABORT for it; the Batcher seals the captures anew).

Segments are pinned by the records in them that are still needed; `unpin` deletes the oldest
segments once nothing pins them (in order, so replay never sees a hole).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import threading
from typing import NamedTuple

from edge_agent.capture import records
from edge_agent.capture.durable import fsync_directory, make_directories

log = logging.getLogger(__name__)

SEGMENT = re.compile(r"seg-(\d{8})\.log")


class Location(NamedTuple):
    segment: int
    offset: int
    size: int  # header + payload


__all__ = ["Journal", "Location", "NotDurable", "fsync_directory"]


class NotDurable(OSError):
    """The record was written but its flush failed: it may or may not survive a crash."""

    def __init__(self, error: OSError, location: Location):
        super().__init__(error.errno, f"flushing the journal failed: {error.strerror or error}")
        self.location = location


class _Flush:
    """The appends one fdatasync covers (group commit): its outcome, shared by all of them."""
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: OSError | None = None


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
        self._flush = _Flush()  # the appends written and not yet flushed join this one

    # --- start ------------------------------------------------------------------------------

    def open(self) -> list[tuple[int, records.Record]]:
        """Replay: every good record as (segment, record), oldest first; then open for appends."""
        make_directories(self.directory, self.fsync)
        segments = sorted(int(m.group(1)) for m in map(SEGMENT.fullmatch, os.listdir(self.directory)) if m)
        replayed: list[tuple[int, records.Record]] = []
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
        fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        old, self._fd = self._fd, fd  # the old one stays usable if the new one cannot be made
        if old >= 0:
            os.close(old)
        self._current = segment
        self._sizes[segment] = 0
        self._pins[segment] = 0
        if self.fsync:
            fsync_directory(self.directory)  # the new segment's name survives a power loss

    # --- appends ----------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def append(self, record_type: int, payload: bytes, pin: bool = True) -> Location:
        """Write one record and return once it is durable; `pin` keeps its segment.
        OSError if it was not written; NotDurable (an OSError) if it was written but not
        flushed (then it is not pinned)."""
        data = records.encode(record_type, payload)
        with self._lock:
            self._check_open()
            self._write_locked(data)
            location = Location(self._current, self._sizes[self._current], len(data))
            self._sizes[self._current] += len(data)
            if pin:
                self._pins[self._current] += 1
            flush = self._flush
        try:
            self._sync(flush)
        except OSError as e:
            if pin:
                self.unpin([location.segment])
            raise NotDurable(e, location) from None
        if location.offset + location.size >= self.segment_bytes:
            self._rotate_if_full()
        return location

    def _write_locked(self, data: bytes) -> None:
        """O_APPEND: one write, one record, never interleaved. A short write (the disk filled
        up) is cut off again: a torn record before later ones would hide them from replay."""
        written = os.write(self._fd, data)
        if written < len(data):
            os.ftruncate(self._fd, self._sizes[self._current])
            raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes could be "
                          f"written to the capture journal {self.directory}")

    def _check_open(self) -> None:
        if self._fd < 0:  # closed: a delivery thread that outlived the shutdown
            raise OSError(errno.EBADF, f"the capture journal {self.directory} is closed")

    def _sync(self, flush: _Flush) -> None:
        if not self.fsync:
            return
        with self._sync_lock:
            if not flush.done:  # else another thread's fdatasync covered this record
                with self._lock:
                    self._check_open()
                    covered, self._flush = self._flush, _Flush()  # later appends: the next one
                # Without _lock: others append meanwhile (group commit). Rotation and close
                # need _sync_lock, so the fd stays open.
                self._fdatasync(covered)
        if flush.error is not None:
            raise flush.error

    def _fdatasync(self, covered: _Flush) -> None:
        """Flush the current segment; the outcome is that of every append `covered` holds."""
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            covered.error = e
        finally:
            covered.done = True

    def _flush_locked(self) -> None:
        """Flush with both locks held (rotation, close); OSError if it failed."""
        covered, self._flush = self._flush, _Flush()
        self._fdatasync(covered)
        if covered.error is not None:
            raise covered.error

    def _rotate_if_full(self) -> None:
        with self._sync_lock, self._lock:
            if self._fd < 0 or self._sizes[self._current] < self.segment_bytes:
                return  # another thread rotated already, or closed
            try:
                self._rotate_locked()
            except OSError as e:  # the record is durable; rotation is tried at the next append
                log.warning("capture journal %s: cannot start a new segment: %s", self.directory,
                            e.strerror or e)

    def _rotate_locked(self) -> None:
        if self.fsync:
            self._flush_locked()  # the old segment is complete on disk before the next begins
        self._new_segment(self._current + 1)
        self._delete_unpinned_locked()

    # --- reads and compaction ---------------------------------------------------------------

    def read(self, location: Location) -> bytes:
        """The payload of the record at `location`."""
        with self._lock:
            self._check_open()
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
            if self._fd < 0:
                return  # closed: the next start compacts
            # Never raises once the pins are released: a caller retrying would release twice.
            try:
                if all(n == 0 for n in self._pins.values()) and \
                        self._sizes[self._current] >= self.segment_bytes // 4:
                    self._rotate_locked()  # all delivered: start afresh, drop the dead bytes
                else:
                    self._delete_unpinned_locked()
            except OSError as e:
                log.warning("capture journal %s: cannot drop delivered segments yet: %s",
                            self.directory, e.strerror or e)

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
                try:
                    if self.fsync:
                        self._flush_locked()
                finally:
                    os.close(self._fd)
                    self._fd = -1
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()
