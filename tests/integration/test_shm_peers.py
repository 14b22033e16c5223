"""Whose groups the shared-memory permission check uses: those read off the connection when it
was accepted (SO_PEERGROUPS, else /proc), never the caller's pid looked up later; with real
child processes in chosen supplementary groups and a real UNIX socket (moved from
tests/unit/test_shm.py, which starts no process)."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from edge_agent.api.caller import IN_PROCESS, Caller
from edge_agent.shm import _shm
from edge_agent.shm import segments as shm
from edge_agent.transport import socket_files as unix_socket

GROUP = 4242  # a supplementary group no test user has


def _stat(mode, uid=1000, gid=1000, cuid=None, cgid=None):
    return _shm.SegmentStat(64, uid, gid, uid if cuid is None else cuid,
                            gid if cgid is None else cgid, mode, (1, 2, 3), False, 0)


@pytest.fixture
def process_in_group():
    """A live process whose supplementary groups are exactly [GROUP]."""
    child = subprocess.Popen(["sleep", "600"], extra_groups=[GROUP])
    yield child
    child.kill()
    child.wait()


def test_supplementary_groups_are_the_callers_never_read_from_proc(process_in_group):
    # The caller's pid is in GROUP now, but the groups taken at accept do not include it:
    # only Caller.groups counts, whatever a process with that pid looks like today.
    st = _stat(0o040, uid=1000, gid=GROUP)
    assert not shm.may_access(Caller(process_in_group.pid, 7, 8), st, shm.READ)
    assert shm.may_access(Caller(process_in_group.pid, 7, 8, frozenset({GROUP})), st, shm.READ)
    assert shm.may_access(Caller(-1, 7, 8, frozenset({5, GROUP})), _stat(0o040, cgid=GROUP),
                          shm.READ)  # the creator's group counts too
    assert IN_PROCESS.groups == frozenset(os.getgroups())


def _peer_of_a_child_in_groups(tmp_path, groups) -> tuple[Caller, int]:
    """Caller that peer_credentials reads off a connection from a child in `groups`."""
    path = str(tmp_path / "peer.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    child = subprocess.Popen(
        ["python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX); "
         f"s.connect({path!r}); sys.stdin.read()"],
        stdin=subprocess.PIPE, extra_groups=list(groups))
    try:
        conn, _ = listener.accept()
        with conn:
            return unix_socket.peer_credentials(conn), child.pid
    finally:
        child.stdin.close()  # the child exits
        child.wait()
        listener.close()


def test_peer_credentials_carry_the_groups_read_at_accept(tmp_path):
    caller, pid = _peer_of_a_child_in_groups(tmp_path, [GROUP, GROUP + 1])
    assert (caller.pid, caller.uid) == (pid, os.getuid())
    assert caller.groups == {GROUP, GROUP + 1}


def test_peer_groups_fall_back_to_proc_without_so_peergroups(tmp_path, monkeypatch):
    monkeypatch.setattr(unix_socket, "SO_PEERGROUPS", -1)  # as on a kernel before 4.13: ENOPROTOOPT
    caller, _ = _peer_of_a_child_in_groups(tmp_path, [GROUP])
    assert caller.groups == {GROUP}
