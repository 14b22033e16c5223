"""Where batches go: a folder on disk, or an S3-compatible bucket.

A destination writes a batch's files (manifest.build_batch: payload files first, manifest
last) under the batch's folder. Writing the same batch again overwrites the same names with
the same bytes. A failure raises DeliveryError saying whether trying again may help
(`transient`: the store is unreachable, busy, out of space) or not (refused for good).
"""
from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence

from edge_agent.capture.durable import fsync_directory, make_directories

if TYPE_CHECKING:  # the S3 client (and the fleet commands with it) need no tensor code
    from edge_agent.capture.manifest import BatchFile

# Errors that retrying cannot fix without someone changing the configuration or the disk.
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                     errno.ENAMETOOLONG}


class DeliveryError(Exception):
    def __init__(self, reason: str, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class Destination(Protocol):
    def write_batch(self, folder: str, files: Sequence[BatchFile]) -> None: ...

    def where(self, folder: str) -> str: ...


class DiskDestination:
    """Files under `root`; each written to a temporary name, flushed and renamed, so a
    reader never sees half a file. With `fsync`, every directory created on the way (the
    hour folders too) is flushed with its parent, so a batch recorded as written is still
    there after a power loss. `on_written(folder)` is told each batch folder written (the
    periodic upload's queue)."""

    def __init__(self, root: str, fsync: bool = True,
                 on_written: Optional[Callable[[str], None]] = None):
        self.root = root
        self.fsync = fsync
        self.on_written = on_written

    def where(self, folder: str) -> str:
        return os.path.join(self.root, folder)

    def write_batch(self, folder: str, files: Sequence[BatchFile]) -> None:
        target = self.where(folder)
        try:
            directories = set()
            for file in files:
                path = os.path.join(target, file.name)
                directory = os.path.dirname(path)
                if directory not in directories:
                    make_directories(directory, self.fsync)
                    directories.add(directory)
                self._write(path, file.data)
            if self.fsync:
                for directory in directories:
                    fsync_directory(directory)  # the renames
        except OSError as e:
            raise DeliveryError(f"cannot write {target}: {e.strerror or e}",
                                transient=e.errno not in _PERMANENT_ERRNOS) from None
        if self.on_written is not None:
            self.on_written(folder)

    def _write(self, path: str, data: bytes) -> None:
        temporary = path + ".tmp"
        # A leftover from a crash (or anything planted there, a symlink included: unlink
        # removes the link, never its target) goes first; then the name is created anew and
        # never followed, so the write cannot land anywhere but in the batch folder.
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)


class S3Destination:
    """Objects `<folder>/<name>` in the bucket, through an S3Client (edge_agent.capture.s3)."""

    def __init__(self, client):
        self.client = client

    def where(self, folder: str) -> str:
        return self.client.url_of(folder)

    def write_batch(self, folder: str, files: Sequence[BatchFile]) -> None:
        for file in files:
            self.client.put_object(f"{folder}/{file.name}", file.data)
