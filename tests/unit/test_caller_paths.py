"""Opening a path with the caller's rights (caller_paths, permissions): the kernel's decision
for a caller that is not the agent, checked on the objects opened, and "may not see" told
exactly as "does not exist"."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edge_agent.platform import caller_paths
from edge_agent.platform import permissions
from edge_agent.api.caller import Caller

STRANGER = Caller(-1, 65534, 65534)
GROUP = 4242  # a group the tree below is given to
MEMBER = Caller(-1, 65534, 65534, frozenset({GROUP}))
ROOT = Caller(-1, 0, 0)


@pytest.fixture
def tree(public_dir) -> Path:
    """public/ (0755) holding: private/ (0700) with model (0600), shared/ (0750, group GROUP)
    with model (0640), open.tflite (0644), closed.tflite (0600), and links into each."""
    root = public_dir
    for name, mode, group in (("private", 0o700, 0), ("shared", 0o750, GROUP)):
        directory = root / name
        directory.mkdir()
        (directory / "model").write_bytes(b"secret")
        os.chown(directory, 0, group)
        os.chown(directory / "model", 0, group)
        os.chmod(directory, mode)
        os.chmod(directory / "model", mode & 0o640)
    (root / "open.tflite").write_bytes(b"open")
    os.chmod(root / "open.tflite", 0o644)
    (root / "closed.tflite").write_bytes(b"closed")
    os.chmod(root / "closed.tflite", 0o600)
    (root / "to-private").symlink_to("private/model")
    (root / "to-open").symlink_to("./private/../open.tflite")
    (root / "loop").symlink_to("loop")
    return root


def read(caller, path) -> bytes:
    fd = caller_paths.open_as(caller, str(path))
    try:
        return os.pread(fd, 100, 0)
    finally:
        os.close(fd)


def hidden(caller, path) -> caller_paths.Hidden:
    with pytest.raises(caller_paths.Hidden) as info:
        read(caller, path)
    assert info.value.errno == errno.ENOENT
    return info.value


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="building the tree needs root (chown)")


@needs_root
def test_a_stranger_sees_only_what_the_kernel_would_let_it(tree):
    assert read(STRANGER, tree / "open.tflite") == b"open"
    for path in ("private/model", "private", "closed.tflite", "shared/model", "to-private",
                 "private/missing", "missing"):
        hidden(STRANGER, tree / path)
    # A link is followed as the kernel follows it: through a directory the caller may not
    # search, nothing; back out of it by "..", the kernel would have refused the same.
    hidden(STRANGER, tree / "to-open")


@needs_root
def test_a_member_of_the_group_reads_by_the_group_bits(tree):
    assert read(MEMBER, tree / "shared" / "model") == b"secret"
    hidden(MEMBER, tree / "private" / "model")
    # Only the primary gid: the same.
    assert read(Caller(-1, 65534, GROUP), tree / "shared" / "model") == b"secret"


@needs_root
def test_root_and_the_agents_own_user_open_everything(tree):
    own = Caller(-1, os.geteuid(), os.getegid())
    for caller in (ROOT, own):
        assert read(caller, tree / "private" / "model") == b"secret"
        assert read(caller, tree / "to-private") == b"secret"
        assert read(caller, tree / "to-open") == b"open"


def test_what_is_missing_is_hidden_for_everyone(tmp_path):
    for caller in (ROOT, STRANGER):
        hidden(caller, tmp_path / "missing")
        hidden(caller, "")


def test_the_kernels_other_errors_are_kept(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "loop").symlink_to("loop")
    own = Caller(-1, os.geteuid(), os.getegid())
    with pytest.raises(NotADirectoryError):
        read(own, tmp_path / "file" / "below")
    with pytest.raises(OSError) as info:
        read(own, tmp_path / "loop")
    assert info.value.errno == errno.ELOOP


def test_a_path_longer_than_the_kernel_takes_is_refused_before_walking():
    with pytest.raises(OSError) as info:
        read(STRANGER, "./" * 1_000_000 + "model.tflite")
    assert info.value.errno == errno.ENAMETOOLONG


def test_relative_paths_and_dots_walk_like_the_kernel(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"f")
    monkeypatch.chdir(tmp_path)
    own = Caller(-1, os.geteuid(), os.getegid())
    assert read(own, "d/f") == b"f"
    assert read(own, "./d/../d//f") == b"f"
    fd = caller_paths.open_as(own, "d/")
    os.close(fd)


def test_a_fifo_opens_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    fd = caller_paths.open_as(Caller(-1, os.geteuid(), os.getegid()), str(tmp_path / "fifo"))
    os.close(fd)  # O_NONBLOCK: no writer needed; the caller then refuses what it is


@pytest.mark.parametrize("mode, caller, want, allowed", [
    (0o600, Caller(-1, 10, 10), permissions.READ, True),      # owner bits
    (0o060, Caller(-1, 10, 10), permissions.READ, False),     # owner: only the owner bits
    (0o040, Caller(-1, 11, 20), permissions.READ, True),      # group bits by gid
    (0o040, Caller(-1, 11, 21, frozenset({20})), permissions.READ, True),  # by groups
    (0o004, Caller(-1, 11, 21), permissions.READ, True),      # other bits
    (0o003, Caller(-1, 11, 21), permissions.READ, False),
    (0o001, Caller(-1, 11, 21), permissions.SEARCH, True),
    (0o000, Caller(-1, 0, 0), permissions.SEARCH, True),      # root
])
def test_may_access_is_the_kernels_decision(mode, caller, want, allowed):
    assert permissions.may_access(caller, (10,), (20,), mode, want) is allowed
