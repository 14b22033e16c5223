"""File descriptors a client passed with a call (SCM_RIGHTS on the framed socket).

A request names them by index: the N-th descriptor that came with its frame (Caller.fds),
in a SharedMemoryHandle's `fd_index` or a LoadModel url `fd:N` (loading.open_model reads a
passed model as it reads one opened by path). Holding a descriptor is the
client's proof of access, so the agent checks no owner or mode for what it reaches through
one, only what the descriptor itself allows (opened read-only, read-write) and that it is a
regular file. The transport closes the descriptors when the call returns; nothing here keeps
one (shared memory maps a duplicate of its own). These are files of this machine the agent
reads, checks and copies, so they live here, not in the sans-IO protocol that carries them.
"""
from __future__ import annotations

import fcntl
import os
import re
import tempfile

from edge_agent.errors import AgentError, StatusCode, invalid_argument

FD_URL = re.compile(r"fd:([0-9]{1,9})")
def fd_url_index(url: str) -> int | None:
    """N for a LoadModel url `fd:N`, None for any other url."""
    match = FD_URL.fullmatch(url)
    return int(match.group(1)) if match else None


def passed_fd(caller, index: int, what: str) -> int:
    """The index-th descriptor passed with the call; INVALID_ARGUMENT if there is none."""
    fds = caller.fds
    if index < len(fds):
        return fds[index]
    if not fds:
        raise invalid_argument(
            f"{what}: names passed descriptor #{index}, but no file descriptor came with the "
            "request (descriptors are passed with SCM_RIGHTS on the framed socket only)")
    raise invalid_argument(f"{what}: names passed descriptor #{index}, but only {len(fds)} "
                           f"came with the request (#0..#{len(fds) - 1})")


def check_access(fd: int, writable: bool, what: str) -> None:
    """PERMISSION_DENIED unless the descriptor was opened for what the call does with it.

    An O_PATH descriptor proves nothing (it is had without any right to the file's content,
    and would have the agent reopen the file with its own rights): refused."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & getattr(os, "O_PATH", 0):
        raise AgentError(StatusCode.PERMISSION_DENIED,
                         f"{what}: the descriptor was opened with O_PATH, which grants no "
                         "access to the content; open the file for reading")
    mode = flags & os.O_ACCMODE
    if writable and mode != os.O_RDWR:
        opened = "read-only" if mode == os.O_RDONLY else "write-only"
        raise AgentError(StatusCode.PERMISSION_DENIED,
                         f"{what}: the descriptor was opened {opened}; the agent writes "
                         "outputs only through a descriptor opened read-write (O_RDWR)")
    if not writable and mode == os.O_WRONLY:
        raise AgentError(StatusCode.PERMISSION_DENIED,
                         f"{what}: the descriptor was opened write-only; open it for reading")


def is_shared_memory(fd: int) -> bool:
    """Whether a passed descriptor is memory (a memfd, or a file of a tmpfs such as /dev/shm),
    which a page fault cannot make wait: a file on a network or FUSE file system could, while
    the model's lock is held, so such files are not taken as segments."""
    try:
        fcntl.fcntl(fd, fcntl.F_GET_SEALS)  # only shared memory (memfd, tmpfs) answers
        return True
    except OSError:
        pass
    try:
        return os.fstat(fd).st_dev == os.stat("/dev/shm").st_dev
    except OSError:
        return False


def copy_to_private_file(fd: int, size: int, directory: str) -> str:
    """A copy of the first `size` bytes of the passed file, in a new 0600 file in `directory`
    (the caller removes it): code that takes paths then reads the copy with the agent's own
    rights, never the client's file reopened (which the agent's user may not open)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    copy_fd, path = tempfile.mkstemp(prefix="passed-", suffix=".tar.gz", dir=directory)
    try:
        with os.fdopen(copy_fd, "wb") as out:
            offset = 0
            while offset < size:
                chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
                if not chunk:
                    break  # shortened meanwhile: verification refuses what is left
                out.write(chunk)
                offset += len(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path
