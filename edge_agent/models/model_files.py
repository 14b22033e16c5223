"""What a bare TensorFlow Lite model file is, told from its first bytes, and how every file on
the load path is opened.

Kept apart from packages.py so the load path can tell a bare model from a package without
importing the signature machinery (PyNaCl) until a package is actually loaded.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO, Callable

from edge_agent.errors import AgentError, failed_precondition

TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4..8

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def not_regular(label: str, mode: int) -> str:
    """What to say of a file that should be a regular one and is not."""
    return f"'{label}' is not a regular file (it is {_kind(mode)})"


def open_regular(path: str, *, name: str | None = None, follow_symlinks: bool = True,
                 refuse: Callable[[str], AgentError] = failed_precondition) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file.

    Anything else is refused with `refuse("'<name>' is not a regular file (it is a FIFO)")`
    (`name` defaults to the path): a FIFO would block the reading thread for ever, waiting
    for a writer, and a device could stream without end. The check is an fstat of the opened
    descriptor, so nothing can be swapped in between a check and the open; the open itself is
    O_NONBLOCK so that opening a FIFO returns at once. With follow_symlinks=False a symbolic
    link is refused too (O_NOFOLLOW), for files inside a package. Other failures (missing,
    unreadable) raise OSError, for the caller to word.
    """
    label = name or path
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise refuse(f"'{label}' is not a regular file (it is a symbolic link)") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(not_regular(label, mode))
        os.set_blocking(fd, True)  # no effect on a regular file's reads; plain from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_at_most(fd: int, size: int) -> bytes:
    """The first `size` bytes of the file open at fd (fewer only if it ends sooner), read with
    pread: the descriptor's offset, which a client that passed it may share, is untouched."""
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, min(size - done, 1 << 24), done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def looks_like_tflite(data: bytes) -> bool:
    return data[4:8] == TFLITE_IDENTIFIER


def is_bare_model(path: str) -> bool:
    """Whether `path` is a file holding a bare .tflite model (not a package).

    A directory is not (it may be a package); anything else that is no regular file is
    refused (FAILED_PRECONDITION), as is a file that cannot be read.
    """
    if os.path.isdir(path):
        return False  # open_regular refuses whatever it is by the time it is opened
    try:
        with open_regular(path) as f:
            return looks_like_tflite(f.read(8))
    except OSError as e:
        raise failed_precondition(f"cannot read '{path}': {e.strerror}") from None
