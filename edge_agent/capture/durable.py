"""Making new names durable: a file's or directory's entry lives in its parent directory, so
after creating (or renaming) one, the parent must be flushed too or a power loss can forget
it even though its bytes were flushed."""
from __future__ import annotations

import errno
import os


def fsync_directory(path: str) -> None:
    """Make a new or renamed entry of the directory `path` durable, not just its bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(path: str, fsync: bool = True, mode: int = 0o777) -> list[str]:
    """os.makedirs(path, exist_ok=True), and with `fsync` every directory it created is
    flushed together with its parent (deepest first), so the whole chain survives a power
    loss. The directories created, outermost first."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):  # as os.makedirs: a file in the way is not a directory
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # made by someone else meanwhile: theirs to flush
        created.append(directory)
    if fsync and created:
        # Each created directory holds the next one's entry; the first one's entry is in
        # the directory that existed already.
        for directory in reversed(created):
            fsync_directory(directory)
        fsync_directory(os.path.dirname(created[0]))
    return created
