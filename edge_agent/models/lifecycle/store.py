"""The agent's own copies of the packages it serves, and the durable record of what serves.

Under `<edge_agent_state_dir>/models`:

    state.json                      what serves (name -> version), pins, failures, history
    proofs.json                     models that passed the model check: sha256 -> bytes it cost
    <name>/<version>~<digest16>/    a verified copy of one package (manifest.json,
                                    manifest.sig, the files the manifest lists)
    .staging/                       copies in progress; whatever is there at start is removed
    .tmp-*                          a record being written (likewise)

A copy gets its final name only once every file and directory of it is synced (rename, then a
sync of the parent), so an interruption leaves either no copy or a whole one; a copy is
recorded as serving only after that. JSON records are replaced atomically (temporary file,
fsync, rename, fsync of the directory).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edge_agent.packaging.archive import Limits, unpacked
from edge_agent.capture.durable import fsync_directory, make_directories
from edge_agent.errors import AgentError, failed_precondition, resource_exhausted, shown

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
STATE_FORMAT = 1  # state.json's "format"
PROOFS_NAME = "proofs.json"
STAGING = ".staging"
TEMPORARY_PREFIX = ".tmp-"  # a record being written; removed at start if left
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DIGEST_SHOWN = 16  # characters of the manifest's sha256 in a copy's directory name

# A crash point: called with the phase's name where a test may stop the agent dead.
CrashPoint = Callable[[str], None]


def _no_crash(phase: str) -> None:
    pass


@dataclass(frozen=True)
class StoredVersion:
    """One verified package copy in the store."""
    name: str
    version: str  # as the signed manifest writes it
    digest: str  # sha256 of manifest.json, which holds every file's sha256: names the bytes
    path: str
    key_id: str = ""

    @property
    def short(self) -> str:
        return self.digest[:DIGEST_SHOWN]


def write_json_atomic(path: str, value: Any) -> None:
    """Replace the JSON file at `path` whole or not at all, durably."""
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def read_json(path: str) -> dict:
    """The JSON object in `path`, {} when there is none; one that does not parse is set
    aside (renamed .corrupt) and reported, never loaded half."""
    try:
        with open(path) as f:
            value = json.load(f)
        if isinstance(value, dict):
            return value
        raise ValueError("not a JSON object")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.error("%s cannot be read (%s); set aside as %s.corrupt", path, e, path)
        try:
            os.replace(path, path + ".corrupt")
        except OSError:
            pass
        return {}


# How deep a package's folders may nest (its manifest's file names are paths inside it; a
# real package has a folder or two). os.walk recurses: a tree thousands of folders deep
# would end it with RecursionError, and with it every scan of the repository.
MAX_PACKAGE_DEPTH = 32


def walk(root: str, max_depth: int = MAX_PACKAGE_DEPTH):
    """os.walk(root) top-down without recursion and without following links: (directory,
    its sub-directories, its other entries' names) per directory. Pruning the list of
    sub-directories prunes the walk. ValueError for a folder deeper than `max_depth`."""
    pending = [(root, 0)]
    while pending:
        directory, depth = pending.pop()
        if depth > max_depth:
            raise ValueError(f"its folders nest deeper than {max_depth}")
        dirs: list[str] = []
        files: list[str] = []
        for entry in os.scandir(directory):
            (dirs if entry.is_dir(follow_symlinks=False) else files).append(entry.name)
        yield directory, dirs, files
        pending.extend((os.path.join(directory, d), depth + 1) for d in reversed(dirs))


def _sync_tree(root: str) -> None:
    """fsync every file and directory under `root` (each directory after what it holds)."""
    try:
        directories = [(directory, files) for directory, _dirs, files in walk(root)]
    except ValueError as e:
        raise failed_precondition(str(e)) from None
    for directory, files in reversed(directories):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(directory)


def _copy_package_directory(source: str, target: str, limits: Limits,
                            crash: CrashPoint) -> None:
    """Copy the regular files of a package directory (links and special files are left out:
    the verification then finds them missing and refuses the package)."""
    total, count = 0, 0
    tree = walk(source)
    while True:
        try:
            directory, dirs, files = next(tree)
        except StopIteration:
            break
        except ValueError as e:  # nested too deep
            raise failed_precondition(str(e)) from None
        relative = os.path.relpath(directory, source)
        into = target if relative == "." else os.path.join(target, relative)
        count += len(dirs)  # folders count as files: a million empty ones is no package
        if count > limits.max_files:
            raise failed_precondition(f"it holds more than {limits.max_files} files "
                                      "(edge_agent_max_package_files)")
        for name in dirs:
            os.mkdir(os.path.join(into, name), 0o755)
        for name in files:
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # a link or unreadable: the verification names it missing
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    continue
                count += 1
                if count > limits.max_files:
                    raise failed_precondition(f"it holds more than {limits.max_files} files "
                                              "(edge_agent_max_package_files)")
                with open(os.path.join(into, name), "xb") as out:
                    while chunk := f.read(1 << 20):
                        total += len(chunk)
                        if total > limits.max_bytes:
                            raise failed_precondition(
                                f"its files are larger than {limits.max_bytes} bytes "
                                "(edge_agent_max_package_bytes)")
                        out.write(chunk)
            crash("copying")


def manifest_digest(directory: str) -> str:
    with open(os.path.join(directory, MANIFEST), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _key_id(directory: str) -> str:
    """The signing key's id a copy's signature names (shown, not trusted: every load
    verifies the signature again)."""
    try:
        with open(os.path.join(directory, SIGNATURE), "rb") as f:
            ident = json.loads(f.read(4096)).get("key_id", "")
        return ident if isinstance(ident, str) else ""
    except (OSError, ValueError, AttributeError):
        return ""


class Store:
    """The copies and records of one agent, under `root`."""

    def __init__(self, root: str, limits: Limits, crash: CrashPoint = _no_crash):
        self.root = root
        self.limits = limits
        self._crash = crash
        self.staging = os.path.join(root, STAGING)

    def prepare(self) -> None:
        """Make the store's directories; remove copies an interruption left half made."""
        make_directories(self.root, mode=0o700)
        if os.path.isdir(self.staging):
            shutil.rmtree(self.staging, ignore_errors=True)
        os.makedirs(self.staging, mode=0o700, exist_ok=True)
        for entry in os.scandir(self.root):  # a record's temporary file (write_json_atomic)
            if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        for name in self._names():
            for entry in os.scandir(os.path.join(self.root, name)):
                if entry.name.startswith("."):  # a rename target never starts with a dot
                    shutil.rmtree(entry.path, ignore_errors=True)

    def _names(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self.root)
                      if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))

    # --- the copies ---------------------------------------------------------------------------

    def versions(self) -> dict[str, list[StoredVersion]]:
        """Every whole copy, by name."""
        found: dict[str, list[StoredVersion]] = {}
        for name in self._names():
            for entry in os.scandir(os.path.join(self.root, name)):
                version, tilde, short = entry.name.rpartition("~")
                if not tilde or entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    digest = manifest_digest(entry.path)
                except OSError:
                    continue
                if not digest.startswith(short):
                    log.warning("%s does not hold the manifest its name says; ignored", entry.path)
                    continue
                found.setdefault(name, []).append(
                    StoredVersion(name, version, digest, entry.path, _key_id(entry.path)))
        return found

    def stage(self, source: str, label: str) -> str:
        """Copy (a directory) or unpack (a .tar.gz) `source` into a new staging directory,
        synced; its path. FAILED_PRECONDITION naming `label` when it cannot be."""
        work = tempfile.mkdtemp(prefix="copy-", dir=self.staging)
        target = os.path.join(work, "package")
        try:
            if os.path.isdir(source):
                os.mkdir(target, 0o755)
                try:
                    _copy_package_directory(source, target, self.limits, self._crash)
                except AgentError as e:
                    raise failed_precondition(f"package '{shown(label)}': {e.message}") from None
            else:
                with unpacked(source, work, self.limits, label=label) as root:
                    self._crash("unpacking")
                    os.rename(root, target)
            _sync_tree(target)
        except OSError as e:
            shutil.rmtree(work, ignore_errors=True)
            # A full disk is no fault of the package's: RESOURCE_EXHAUSTED, tried again.
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            raise (resource_exhausted if full else failed_precondition)(
                f"package '{shown(label)}' cannot be copied into the agent's state directory: "
                f"{e.strerror or e}") from None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return target

    def keep(self, staged: str, name: str, version: str, key_id: str) -> StoredVersion:
        """Give a verified staged copy its final name (or drop it when the same bytes are
        there already); the StoredVersion."""
        digest = manifest_digest(staged)
        directory = os.path.join(self.root, name)
        make_directories(directory, mode=0o700)
        final = os.path.join(directory, f"{version}~{digest[:DIGEST_SHOWN]}")
        work = os.path.dirname(staged)
        if os.path.isdir(final):
            shutil.rmtree(work, ignore_errors=True)
        else:
            os.rename(staged, final)
            fsync_directory(directory)
            shutil.rmtree(work, ignore_errors=True)
        return StoredVersion(name, version, digest, final, key_id)

    def free_bytes(self) -> int:
        """What the store's file system has free for the agent."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def discard_staged(self, staged: str) -> None:
        shutil.rmtree(os.path.dirname(staged), ignore_errors=True)

    def remove(self, version: StoredVersion) -> None:
        """Delete a copy: renamed to a dot-name first, so an interruption never leaves a
        half-deleted copy under a name that looks whole."""
        doomed = os.path.join(os.path.dirname(version.path), f".deleting-{os.path.basename(version.path)}")
        try:
            os.rename(version.path, doomed)
        except FileNotFoundError:
            return
        fsync_directory(os.path.dirname(version.path))
        shutil.rmtree(doomed, ignore_errors=True)

    # --- the records --------------------------------------------------------------------------

    def read_state(self) -> dict:
        return read_json(os.path.join(self.root, STATE_NAME))

    def write_state(self, state: Mapping[str, Any]) -> None:
        write_json_atomic(os.path.join(self.root, STATE_NAME), dict(state, format=STATE_FORMAT))

    def read_proofs(self) -> dict[str, int]:
        proofs = read_json(os.path.join(self.root, PROOFS_NAME))
        return {k: v for k, v in proofs.items() if isinstance(v, int) and not isinstance(v, bool)}

    def write_proofs(self, proofs: Mapping[str, int]) -> None:
        write_json_atomic(os.path.join(self.root, PROOFS_NAME), dict(proofs))
