"""Safe unpacking of `.tar.gz` model packages into the agent's own work directory.

An archive is untrusted until its signature is checked, and that needs it unpacked, so the
unpacking itself must be harmless whatever the archive holds:

- the archive must be a regular file (a FIFO or device is refused, never read: it could
  block the loading thread for ever);
- it streams the archive once (no seeking, nothing read twice) into a fresh 0700 directory
  `<edge_agent_state_dir>/packages/unpack-<pid>-<random>` that only the agent writes;
- member names must be relative paths of plain components (no `..`, no absolute path, no
  odd characters); links, devices, FIFOs and sparse files are refused, so nothing created
  can point outside, and every file is created O_EXCL | O_NOFOLLOW;
- the number of entries, the bytes of the files and the bytes decompressed in all are
  bounded (edge_agent_max_package_files / edge_agent_max_package_bytes), as are the extended
  headers that tarfile would otherwise read into memory whole: a gzip bomb stops at the limit;
- on any refusal or error the directory is removed: a hostile archive leaves nothing behind.
"""
from __future__ import annotations

import errno
import gzip
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Callable, Iterator, Protocol

from edge_agent.errors import AgentError, failed_precondition, resource_exhausted
from edge_agent.models.model_files import open_regular

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
COPY_CHUNK = 1024 * 1024
# pax and GNU long-name headers are read into memory by tarfile; real ones are tiny.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
TAR_BLOCK = 512
UNPACK_PREFIX = "unpack-"

# One path component of a package file: a conservative portable charset, never '.' or '..'.
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
_MAX_PATH = 255

Progress = Callable[[str, int, int], None]  # (what, bytes done, bytes in all)


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # the files' bytes, in all
    max_files: int  # entries (files and directories)


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The components of a package-relative path, None if it is not a safe one.

    Leading './' is dropped (what `tar -C dir .` writes); '' means the package's top.
    """
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name in ("", "."):
        return ()
    if len(name) > _MAX_PATH:
        return None
    parts = tuple(name.split("/"))
    if all(_COMPONENT.fullmatch(part) for part in parts):
        return parts
    return None


def is_gzip(path: str) -> bool:
    """Whether `path` starts like a gzip stream; FAILED_PRECONDITION if it is no regular file."""
    with open_regular(path) as f:
        return f.read(2) == GZIP_MAGIC


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _BoundedReader:
    """A read-only stream that fails once more than `limit` bytes came out of it."""

    def __init__(self, raw: _Readable, limit: int, refuse: Callable[[str], AgentError]):
        self._raw = raw
        self._left = limit
        self._refuse = refuse

    def read(self, size: int = -1) -> bytes:
        # Never ask for more than one byte past the limit, so a bomb is never inflated.
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._raw.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise self._refuse("it decompresses to more than edge_agent_max_package_bytes allows")
        return data


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses huge pax / GNU long-name headers before tarfile reads them."""

    def _proc_member(self, tarfile_):
        if (self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                          tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
                and self.size > MAX_EXTENDED_HEADER_BYTES):
            raise _HeaderTooLarge(self.size)
        return super()._proc_member(tarfile_)


class _HeaderTooLarge(Exception):
    pass


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to '{member.linkname}')"
    if member.islnk():
        return f"a hard link (to '{member.linkname}')"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    return f"an entry of tar type {member.type!r}"


class _Unpacker:
    """Writes one archive's members under `root`, enforcing the rules above."""

    def __init__(self, root: str, limits: Limits, refuse: Callable[[str], AgentError],
                 progress: Progress | None):
        self.root = root
        self.limits = limits
        self.refuse = refuse
        self.progress = progress
        self.entries = 0
        self.file_bytes = 0

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise self.refuse(f"it has more than {self.limits.max_files} entries "
                              "(edge_agent_max_package_files)")
        if member.name.startswith("/"):
            raise self.refuse(f"'{member.name}' is an absolute path")
        parts = safe_parts(member.name)
        if parts is None:
            raise self.refuse(f"'{member.name}' is not a plain relative path (no '..', no "
                              "special characters)")
        if member.isdir():
            if parts:
                os.makedirs(os.path.join(self.root, *parts), mode=0o700, exist_ok=True)
            return
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
            raise self.refuse(f"'{member.name}' is {_kind(member)}; a package holds only "
                              "regular files and directories")
        if not parts:
            raise self.refuse(f"'{member.name}' is a file without a name")
        self.file_bytes += member.size
        if self.file_bytes > self.limits.max_bytes:
            raise self.refuse(f"its files hold more than {self.limits.max_bytes} bytes "
                              "(edge_agent_max_package_bytes)")
        source = tar.extractfile(member)
        if source is None:  # only for what is not a regular file, refused above
            raise self.refuse(f"'{member.name}' has no contents to read")
        self._write(source, parts, member.size, member.name)

    def _write(self, source: IO[bytes], parts: tuple[str, ...], size: int, name: str) -> None:
        if len(parts) > 1:
            os.makedirs(os.path.join(self.root, *parts[:-1]), mode=0o700, exist_ok=True)
        try:
            fd = os.open(os.path.join(self.root, *parts),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise self.refuse(f"'{name}' appears more than once") from None
        with os.fdopen(fd, "wb") as out:
            done = 0
            while chunk := source.read(COPY_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if self.progress:
                    self.progress(f"unpacking {name}", done, size)


def _make_unpack_dir(work_dir: str) -> str:
    os.makedirs(work_dir, mode=0o700, exist_ok=True)
    remove_stale(work_dir)
    return tempfile.mkdtemp(prefix=f"{UNPACK_PREFIX}{os.getpid()}-", dir=work_dir)


def remove_stale(work_dir: str) -> None:
    """Remove unpack directories left by agents that died while unpacking."""
    for entry in os.scandir(work_dir):
        match = re.fullmatch(rf"{UNPACK_PREFIX}(\d+)-.*", entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.kill(int(match[1]), 0)
            continue  # its agent is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # another user's live process, or not a pid: leave it alone
        log.info("removing stale unpack directory %s", entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)


def _extract(archive_path: str, root: str, limits: Limits, label: str,
             progress: Progress | None) -> None:
    def refuse(reason: str) -> AgentError:
        return failed_precondition(f"package archive '{label}' refused: {reason}")

    # The decompressed stream carries, besides the files, a header block per entry, its
    # padding, pax headers and the end-of-archive blocks.
    stream_limit = (limits.max_bytes
                    + (limits.max_files + 2) * (2 * TAR_BLOCK + MAX_EXTENDED_HEADER_BYTES)
                    + 20 * TAR_BLOCK)
    unpacker = _Unpacker(root, limits, refuse, progress)
    try:
        with open_regular(archive_path, name=label, refuse=refuse) as raw, \
                gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            bounded = _BoundedReader(gz, stream_limit, refuse)
            # Stream mode ("r|") only reads; typeshed's fileobj protocol also asks for write
            # and seek, which a bounded reader must not have.
            with tarfile.open(fileobj=bounded, mode="r|",  # type: ignore[call-overload]
                              tarinfo=_BoundedTarInfo) as tar:
                for member in tar:
                    unpacker.member(tar, member)
    except AgentError:
        raise
    except _HeaderTooLarge as e:
        raise refuse(f"it has an extended header of {e.args[0]} bytes") from None
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error, RecursionError) as e:
        raise refuse(f"it is not a valid .tar.gz ({e or type(e).__name__})") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # no fault of the archive's
            raise resource_exhausted(f"package archive '{label}' cannot be unpacked: "
                                     f"{e.strerror or e}") from None
        raise refuse(f"unpacking failed: {e.strerror or e}") from None
    if unpacker.entries == 0:
        raise refuse("it is empty")


@contextmanager
def unpacked(archive_path: str, work_dir: str, limits: Limits, *, label: str | None = None,
             progress: Progress | None = None) -> Iterator[str]:
    """Unpack the archive into a fresh directory under `work_dir`; yield its path.

    The directory is removed on leaving the block, and at once if unpacking fails
    (FAILED_PRECONDITION saying why). `label` names the archive in messages.
    """
    root = _make_unpack_dir(work_dir)
    try:
        _extract(archive_path, root, limits, label or archive_path, progress)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
