"""The kernel's permission decision for a caller that is not the agent: who may read, write
or search an object, by its owner, group and mode.

Used wherever the agent acts for a client on something the client names (a shared-memory
segment, a model file and the directories on its path), so that the agent never reads for a
client what the client could not read itself. POSIX ACLs and capabilities other than root's
are not evaluated: an object an ACL opens to the caller is refused, never the reverse.
"""
from __future__ import annotations

from typing import Iterable

READ, WRITE, SEARCH = 4, 2, 1  # permission bits, as in a mode's rwx triplets


def may_access(caller, owners: Iterable[int], groups: Iterable[int], mode: int,
               want: int) -> bool:
    """generic_permission() for `want` (READ, WRITE or SEARCH) by `caller` (uid, gid, groups).

    An owner (`owners`: the owner, and for SysV segments the creator) gets the owner bits, a
    member of one of `groups` the group bits, anyone else the other bits. uid 0 is allowed
    everything, as the kernel allows root (CAP_DAC_OVERRIDE, CAP_IPC_OWNER): the agent
    refuses nothing root could take. The caller's groups are its primary gid and
    `caller.groups`, taken when the connection was accepted (SO_PEERGROUPS): nothing is read
    per call, and a pid reused since then cannot lend its groups.
    """
    if caller.uid == 0:
        return True
    if caller.uid in owners:
        return bool((mode >> 6) & want)
    in_group = any(g == caller.gid or g in caller.groups for g in groups)
    return bool((mode >> 3) & want if in_group else mode & want)
