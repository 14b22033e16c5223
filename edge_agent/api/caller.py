"""Who calls (Caller) and what a model may be named: what the service, the capture package and
the transports all need, in a module that imports nothing of theirs."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from edge_agent.errors import invalid_argument, shown

MODEL_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the transport knows it (SO_PEERCRED on the UNIX socket).

    `groups`: the supplementary groups, read once when the connection was accepted
    (SO_PEERGROUPS); empty for a caller whose groups are unknown, who then gets only `gid`.
    `fds`: the file descriptors the client passed with this call (SCM_RIGHTS on the framed
    socket), in the order sent; requests name them by index (SharedMemoryHandle.fd_index,
    LoadModel url `fd:N`). The transport closes them when the call returns.
    """
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    fds: tuple[int, ...] = ()


IN_PROCESS = Caller(os.getpid(), os.getuid(), os.getgid(), frozenset(os.getgroups()))


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise invalid_argument(
            f"model name {shown(name)!r} is not valid: use letters, digits and single or repeated "
            "dashes between them (^[a-zA-Z0-9](-*[a-zA-Z0-9])*$)")
