"""File descriptors a client passed with a call (SCM_RIGHTS on the framed socket).

A request names them by index: the N-th descriptor that came with its frame (Caller.fds),
in a SharedMemoryHandle's `fd_index` or a LoadModel url `fd:N`. Holding a descriptor is the
client's proof of access, so the agent checks no owner or mode for what it reaches through
one, only what the descriptor itself allows (opened read-only, read-write) and that it is a
regular file. The transport closes the descriptors when the call returns; nothing here keeps
one (shared memory maps a duplicate of its own).
"""
from __future__ import annotations

import fcntl
import os
import re
import stat
from typing import Callable

from edge_agent.errors import AgentError, StatusCode, failed_precondition, invalid_argument
from edge_agent.modelfile import looks_like_tflite

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
    """PERMISSION_DENIED unless the descriptor was opened for what the call does with it."""
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if writable and mode != os.O_RDWR:
        opened = "read-only" if mode == os.O_RDONLY else "write-only"
        raise AgentError(StatusCode.PERMISSION_DENIED,
                         f"{what}: the descriptor was opened {opened}; the agent writes "
                         "outputs only through a descriptor opened read-write (O_RDWR)")
    if not writable and mode == os.O_WRONLY:
        raise AgentError(StatusCode.PERMISSION_DENIED,
                         f"{what}: the descriptor was opened write-only; open it for reading")


def read_passed_model(caller, index: int, what: str, check_size: Callable[[int], None],
                      allow_unsigned: bool) -> bytes:
    """The bytes of a bare .tflite model the client passed as its index-th descriptor.

    The file must be regular (a pipe or device could stream without end) and opened for
    reading; it is read from its start with pread, so the client's file offset is untouched,
    and no more than the size it had when checked against the budget.
    """
    fd = passed_fd(caller, index, what)
    check_access(fd, False, what)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise failed_precondition(f"{what}: descriptor #{index} is not a regular file")
    if not allow_unsigned:
        raise failed_precondition(
            f"{what}: a model passed as a descriptor is an unsigned .tflite file and unsigned "
            "models are not allowed: load a signed package by path, or set "
            "edge_agent_allow_unsigned_models to true")
    check_size(st.st_size)
    chunks, offset = [], 0
    try:
        while offset < st.st_size:
            chunk = os.pread(fd, min(st.st_size - offset, 1 << 20), offset)
            if not chunk:
                break  # truncated since fstat: the identifier check below decides
            chunks.append(chunk)
            offset += len(chunk)
    except OSError as e:
        raise failed_precondition(f"{what}: cannot read descriptor #{index}: {e.strerror}") from None
    content = b"".join(chunks)
    if not looks_like_tflite(content):
        raise failed_precondition(f"{what}: descriptor #{index} is not a TensorFlow Lite model")
    return content
