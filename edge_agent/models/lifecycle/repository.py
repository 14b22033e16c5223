"""The model repository: a folder of signed packages, `<repository>/<name>/<any file name>`,
each a package directory or a `.tar.gz`, as a source of versions.

Only complete entries are read: names starting with a dot and the temporary names of tools
that write then rename (`*.partial-*`, `*.tmp`, `*~`) are skipped, so a package copied in
elsewhere on the same file system and moved in with `mv` (a rename) is never seen half
written. Each entry is named by an identity that changes with its bytes (an archive's
sha256; a directory's manifest, signature and file sizes and times), so a package that
failed is tried again only once it changed.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass

from edge_agent.api.caller import MODEL_NAME
from edge_agent.errors import AgentError, failed_precondition
from edge_agent.models.lifecycle.store import walk

log = logging.getLogger(__name__)

REPOSITORY_KEY = "edge_agent_model_repository"
_TEMPORARY_SUFFIXES = (".tmp", "~", ".part", ".partial")


@dataclass(frozen=True)
class Entry:
    """One complete package in the repository."""
    name: str  # its folder's name: the model it must be
    path: str
    identity: str  # sha256 of what it is made of (see the module's docstring)

    @property
    def label(self) -> str:
        return os.path.join(self.name, os.path.basename(self.path))


def check_repository(path: str) -> None:
    """FAILED_PRECONDITION when others than root and the agent's user may write the
    repository (anyone could then put a package in; its signature would still be checked,
    but they could remove or swap what serves)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise failed_precondition(f"{REPOSITORY_KEY} '{path}' cannot be read: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise failed_precondition(f"{REPOSITORY_KEY} '{path}' is not a directory")
    _check_owner(path, st)
    # Above the repository as named (where a link to it lives) and as it resolves.
    above = dict.fromkeys([*_ancestors(os.path.abspath(path)),
                           *_ancestors(os.path.realpath(path))])
    for directory in above:
        _check_above(directory, path)


def _ancestors(path: str):
    """'/a/b/c' -> '/a/b', '/a', '/'."""
    while path != "/":
        path = os.path.dirname(path)
        yield path


def _check_above(directory: str, repository: str) -> None:
    """Whoever may rename entries in a directory above the repository could swap it for
    one of their own: each must belong to root or the agent's user and not be writable by
    group or others, unless sticky (/tmp), where only an entry's owner may rename it."""
    st = os.stat(directory)
    if st.st_uid not in (0, os.geteuid()):
        raise failed_precondition(
            f"{REPOSITORY_KEY} '{repository}' lies under '{directory}', which belongs to uid "
            f"{st.st_uid}, who could swap it: every directory above the repository must "
            f"belong to root or to the agent's user (uid {os.geteuid()})")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise failed_precondition(
            f"{REPOSITORY_KEY} '{repository}' lies under '{directory}', which group or others "
            f"may write (mode {stat.S_IMODE(st.st_mode):04o}), so anyone could swap it: run "
            f"chmod go-w '{directory}', or move the repository elsewhere")


def _check_owner(path: str, st: os.stat_result) -> None:
    if st.st_uid not in (0, os.geteuid()):
        raise failed_precondition(
            f"{REPOSITORY_KEY} '{path}' belongs to uid {st.st_uid}: the repository and its "
            f"folders must belong to root or to the agent's user (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise failed_precondition(
            f"{REPOSITORY_KEY} '{path}' may be written by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): run chmod go-w '{path}'")


def complete(file_name: str) -> bool:
    """Whether a repository entry's name is one a finished copy has."""
    if file_name.startswith("."):
        return False
    if file_name.endswith(_TEMPORARY_SUFFIXES) or ".partial-" in file_name:
        return False
    return True


def _open_regular(path: str):
    """A binary file object on `path` if it is a regular file, not through a link; OSError
    otherwise, at once (a FIFO would make a plain open() wait for a writer for ever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _directory_identity(path: str) -> str:
    digest = hashlib.sha256()
    try:
        for directory, dirs, files in walk(path):
            _add_directory(digest, path, directory, dirs, files)
    except ValueError as e:  # nested too deep: its copy is refused, saying so
        digest.update(f"{e}".encode())
    return digest.hexdigest()


def _add_directory(digest, path: str, directory: str, dirs: list, files: list) -> None:
    """What one folder of a package directory adds to its identity."""
    dirs.sort()  # a fixed order of visits: the same tree, the same identity
    for name in sorted(files):
        file_path = os.path.join(directory, name)
        st = os.lstat(file_path)
        digest.update(f"{os.path.relpath(file_path, path)}\0{st.st_size}\0"
                      f"{st.st_mtime_ns}\0{st.st_ino}\0".encode(errors="surrogateescape"))
        if name in ("manifest.json", "manifest.sig") and directory == path \
                and stat.S_ISREG(st.st_mode):
            try:
                with _open_regular(file_path) as f:
                    digest.update(f.read(1 << 20))
            except OSError:
                pass  # replaced meanwhile: its copy is refused, or the next scan reads it


def _file_identity(path: str) -> str:
    digest = hashlib.sha256()
    with _open_regular(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Repository:
    """The repository folder as a source: scan() lists its complete entries, with their
    identities computed once per change of an entry's size, times or inode."""

    def __init__(self, path: str):
        self.path = path
        self._identities: dict[str, tuple[tuple, str]] = {}  # path -> (stat key, identity)
        self.problems: dict[str, str] = {}  # name -> why its folder is not read

    def scan(self) -> list[Entry]:
        entries: list[Entry] = []
        seen: set[str] = set()
        problems: dict[str, str] = {}
        try:
            folders = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot read %s '%s': %s", REPOSITORY_KEY, self.path, e.strerror)
            return []
        for folder in folders:
            if folder.name.startswith(".") or not folder.is_dir(follow_symlinks=False):
                continue
            if not MODEL_NAME.fullmatch(folder.name):
                problems[folder.name] = ("not a model name (letters, digits and dashes "
                                         "between them)")
                continue
            try:
                _check_owner(folder.path, folder.stat(follow_symlinks=False))
                children = sorted(os.scandir(folder.path), key=lambda e: e.name)
            except OSError as e:
                problems[folder.name] = f"cannot be read: {e.strerror}"
                continue
            except AgentError as e:  # the owner check
                problems[folder.name] = e.message
                continue
            for child in children:
                if not complete(child.name):
                    continue
                try:
                    st = child.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        key: tuple = ("d", st.st_ino, st.st_mtime_ns,
                                      _directory_identity(child.path))
                    elif stat.S_ISREG(st.st_mode):
                        key = ("f", st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    else:
                        continue  # links and special files are not packages
                    known = self._identities.get(child.path)
                    if known is not None and known[0] == key:
                        identity = known[1]
                    else:
                        identity = key[3] if key[0] == "d" else _file_identity(child.path)
                        self._identities[child.path] = (key, identity)
                except OSError:
                    continue  # removed while scanned
                seen.add(child.path)
                entries.append(Entry(folder.name, child.path, identity))
        for path in set(self._identities) - seen:
            del self._identities[path]
        self.problems = problems
        return entries
