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
import tempfile
from typing import Callable

from edge_agent.errors import AgentError, StatusCode, failed_precondition, invalid_argument
from edge_agent.modelfile import looks_like_tflite

FD_URL = re.compile(r"fd:([0-9]{1,9})")
_CHUNK = 1 << 20


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


def read_passed_model(caller, index: int, what: str, config, check_size: Callable[[int], None],
                      read_package: Callable[[str], bytes]) -> bytes:
    """The model bytes of the file the client passed as its index-th descriptor: a bare
    .tflite model (when edge_agent_allow_unsigned_models), or a signed .tar.gz package, which
    is copied to a private file under the state directory and verified by `read_package(path)`
    as a package given by path is.

    The file must be regular (a pipe or device could stream without end) and opened for
    reading; it is read with pread, so the client's file offset is untouched, and no more than
    the size it had when it was checked against the limits.
    """
    from edge_agent.archive import GZIP_MAGIC  # tarfile and gzip: only once a model comes

    fd = passed_fd(caller, index, what)
    check_access(fd, False, what)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise failed_precondition(f"{what}: descriptor #{index} is not a regular file")
    if _pread_all(fd, min(st.st_size, 2), index, what) == GZIP_MAGIC:
        return _read_passed_package(fd, st.st_size, index, what, config, read_package)
    if not config.edge_agent_allow_unsigned_models:
        raise failed_precondition(
            f"{what}: descriptor #{index} is no signed package (.tar.gz), and unsigned .tflite "
            "models are not allowed: pass a signed package, or set "
            "edge_agent_allow_unsigned_models to true")
    check_size(st.st_size)
    content = _pread_all(fd, st.st_size, index, what)
    if not looks_like_tflite(content):
        raise failed_precondition(f"{what}: descriptor #{index} is not a TensorFlow Lite model "
                                  "nor a model package (.tar.gz)")
    return content


def _read_passed_package(fd: int, size: int, index: int, what: str, config,
                         read_package: Callable[[str], bytes]) -> bytes:
    limit = config.edge_agent_max_package_bytes
    if size > limit:
        raise failed_precondition(f"{what}: the package passed as descriptor #{index} is "
                                  f"{size} bytes, more than edge_agent_max_package_bytes ({limit})")
    spool = os.path.join(config.edge_agent_state_dir, "passed")
    os.makedirs(spool, mode=0o700, exist_ok=True)
    copy_fd, copy = tempfile.mkstemp(prefix="package-", suffix=".tar.gz", dir=spool)
    try:
        with os.fdopen(copy_fd, "wb") as out:
            offset = 0
            while offset < size:
                chunk = _pread_all(fd, min(size - offset, _CHUNK), index, what, offset)
                if not chunk:
                    break  # truncated meanwhile: verification refuses what is left
                out.write(chunk)
                offset += len(chunk)
        return read_package(copy)
    finally:
        os.unlink(copy)


def _pread_all(fd: int, size: int, index: int, what: str, offset: int = 0) -> bytes:
    """Up to `size` bytes from `offset` (fewer only at end of file)."""
    chunks, done = [], 0
    try:
        while done < size:
            chunk = os.pread(fd, min(size - done, _CHUNK), offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
    except OSError as e:
        raise failed_precondition(f"{what}: cannot read descriptor #{index}: {e.strerror}") from None
    return b"".join(chunks)
