"""The UNIX socket files both fronts serve on, and who is at the other end of a connection.

Binding (with the configured mode and group, claiming a stale file only when no agent
answers on it; the listener non-blocking, for the event loop), and the peer's credentials
read once per connection: both fronts (edge_agent.transport.front_core) share these, so the
two know their callers in exactly the same way.
"""
from __future__ import annotations

import grp
import os
import socket
import stat
import struct

from edge_agent.config import AgentConfig
from edge_agent.api.caller import Caller

_PEERCRED = struct.Struct("3i")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux's value; Python may lack it
_PEERGROUPS_BYTES = 1024  # the most CPython's getsockopt takes: 256 gids


class ServerError(RuntimeError):
    """The server cannot start; the message says why."""


def peer_credentials(sock: socket.socket) -> Caller:
    """The peer's pid, uid, gid and supplementary groups, as they were when it connected.

    Read once per connection: the shared-memory permission check then needs no file read
    per call, and a pid reused later cannot lend its groups to this connection."""
    pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return Caller(pid, uid, gid, _peer_groups(sock, pid))


def _peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    """SO_PEERGROUPS (Linux 4.13+), or the Groups: line of /proc/<pid>/status where the
    kernel lacks it or the peer has more groups than getsockopt's 1024-byte buffer holds."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BYTES)
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()  # unknown: the caller is credited with its primary gid only


def claim_socket_path(path: str) -> None:
    """Remove a stale socket file at path; refuse if an agent answers there or it is no socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a leftover of an agent that died
        return
    except OSError as e:
        raise ServerError(f"cannot tell whether an agent serves on {path}: {e}") from None
    finally:
        probe.close()
    raise ServerError(f"another agent is already serving on {path}")


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ServerError(f"edge_agent_socket_group: no group named {group!r}") from None


def restrict_socket_file(path: str, config: AgentConfig) -> None:
    """Give a socket file the configured mode and group (who may connect)."""
    os.chmod(path, config.socket_mode)
    if config.edge_agent_socket_group:
        os.chown(path, -1, _group_id(config.edge_agent_socket_group))


def bind_socket(path: str, config: AgentConfig) -> socket.socket:
    """A listening socket at path, with the configured mode and group."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    claim_socket_path(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind() creates the file; the umask makes it born with the configured mode, no window.
    old_umask = os.umask(0o777 & ~config.socket_mode)
    try:
        listener.bind(path)
    except OSError as e:
        listener.close()
        raise ServerError(f"cannot bind {path}: {e.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        restrict_socket_file(path, config)
    except (OSError, ServerError):
        listener.close()
        os.unlink(path)
        raise
    listener.listen(128)
    listener.setblocking(False)  # accepted on the event loop
    return listener


def remove_socket_file(path: str, inode: int) -> None:
    """Unlink path only if it is still our socket file: another agent may have replaced it."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
