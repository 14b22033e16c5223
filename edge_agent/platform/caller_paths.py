"""Opening a path the way the kernel would open it for the caller, not for the agent.

The agent often runs with more rights than its clients (root, or a user that may read every
model on the board). A path a client names is therefore walked one component at a time,
each directory held open by descriptor, and the caller's right to search every directory
and to read what the path ends in is checked on the very objects opened (fstat of the
descriptor, permissions.may_access), so nothing can be swapped in between a check and a use.
Symbolic links are followed as the kernel follows them (at most MAX_LINKS), each step
checked the same way.

Whatever the caller may not reach or read is reported exactly as a path that does not exist
(Hidden, like ENOENT): a reply must not tell a client whether a path it cannot see exists.
"""
from __future__ import annotations

import errno
import os
import stat

from edge_agent.platform.permissions import READ, SEARCH, may_access

MAX_LINKS = 40  # the kernel's MAXSYMLINKS
PATH_MAX = 4096  # the kernel's limit on a path given to it, terminating NUL included
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class Hidden(FileNotFoundError):
    """The path does not exist, or the caller may not see or read what it names."""

    def __init__(self, path: str):
        super().__init__(errno.ENOENT, os.strerror(errno.ENOENT), path)


def trusted(caller) -> bool:
    """Root and the agent's own user are refused nothing the agent itself could open."""
    return caller.uid in (0, os.geteuid())


def _allowed(caller, st: os.stat_result, want: int) -> bool:
    return may_access(caller, (st.st_uid,), (st.st_gid,), stat.S_IMODE(st.st_mode), want)


def may_read(caller, st: os.stat_result) -> bool:
    """Whether `caller` may read the object `st` describes (list it, for a directory)."""
    want = READ | SEARCH if stat.S_ISDIR(st.st_mode) else READ
    return trusted(caller) or _allowed(caller, st, want)


def open_as(caller, path: str) -> int:
    """A descriptor of `path` opened for reading (O_NONBLOCK: a FIFO does not block), as
    the kernel would open it for `caller`; the caller closes it.

    Hidden where the caller could not open it (missing, a directory on the way it may not
    search, a file it may not read); other OSErrors (ENOTDIR, ELOOP...) as the kernel says.
    """
    if not path:
        raise Hidden(path)
    if len(path.encode()) >= PATH_MAX:  # as the kernel refuses it, before any walking
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
    check = not trusted(caller)
    pending = path.split("/")
    current = os.open("/" if path.startswith("/") else ".", _DIR_FLAGS)
    links = 0
    try:
        while True:
            name = pending.pop(0)
            if name in ("", "."):
                if pending:
                    continue
                name = "."  # "dir/" and "." name the directory itself
            if check and not _allowed(caller, os.fstat(current), SEARCH):
                raise Hidden(path)
            last = not pending
            try:
                fd = os.open(name, _OPEN_FLAGS if last else _DIR_FLAGS | os.O_NOFOLLOW,
                             dir_fd=current)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    raise Hidden(path) from None
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # Perhaps a symbolic link (O_NOFOLLOW): read it and walk its target.
                try:
                    target = os.readlink(name, dir_fd=current)
                except OSError:
                    raise e from None  # not a link: a file where a directory was named
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from None
                pending[:0] = target.split("/")
                if target.startswith("/"):
                    os.close(current)
                    current = os.open("/", _DIR_FLAGS)
                continue
            if last:
                if check and not may_read(caller, os.fstat(fd)):
                    os.close(fd)
                    raise Hidden(path)
                return fd
            os.close(current)
            current = fd
    finally:
        os.close(current)
