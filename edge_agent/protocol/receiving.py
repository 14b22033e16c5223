"""How much a connection receives next: the one rule both connection objects follow, and the
descriptors one frame may bring (a receive's ancillary buffer holds that many)."""
from __future__ import annotations

import os

# The receive buffer every connection has for its life (a larger frame grows it for as long
# as it is incomplete), on both fronts and the client.
RECV_BYTES = 256 * 1024
# The most one receive of a large body asks for (a buffer set aside for it grows by at most
# this much at a time).
WAITALL_BYTES = 4 * 1024 * 1024


def next_receive(needed: int, pending: int, base: int) -> tuple[int, bool]:
    """(bytes to offer, whole) for a frame still `needed` bytes short with `pending` bytes
    buffered, over a fixed buffer of `base` bytes.

    Up to `base`, the fixed buffer takes whatever arrives (whole=False: one ordinary receive).
    Beyond it, a large body is received into space set aside for it (whole=True: the loop may
    wait for all of it in one receive), growing with what arrived: up to the next
    power-of-two multiple of `base`, so never more than doubling what is pending, and at most
    WAITALL_BYTES at a time. A header alone thus never makes a connection set aside more than
    the fixed buffer, and the steps a large body takes (base, 2 base, 4 base, ...) do not
    depend on how the kernel happened to cut the first bytes."""
    if not pending:
        return base, False
    boundary = base << (pending // base).bit_length()  # the next multiple past `pending`
    size = min(needed, WAITALL_BYTES, boundary - pending)
    if size > base:
        return size, True
    return max(size, base - pending), False


# Descriptors a client may pass with one frame (SCM_RIGHTS). The framed front's ancillary
# buffer holds this many; the kernel closes any beyond it and flags the receive MSG_CTRUNC.
MAX_FDS = 16


def close_fds(fds) -> None:
    """Close descriptors a client passed; each exactly once, whatever fails."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
