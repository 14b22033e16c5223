"""Socket helpers shared by the server loop and the client (the only I/O outside them)."""
from __future__ import annotations

import socket
import time

_DONTWAIT = socket.MSG_DONTWAIT
WAITALL_BYTES = 4 * 1024 * 1024


def receive(sock: socket.socket, buffer: bytearray, needed: int, spin_seconds: float):
    """The next bytes of a frame stream: a view of what arrived, empty at end of stream.

    When the frame in progress still needs more than `buffer` holds, it is read in
    MSG_WAITALL receives of up to WAITALL_BYTES into a buffer of their own: one system call
    instead of one per chunk the kernel happens to deliver. The cap bounds what a header
    alone (a client that announces a large body and sends nothing) makes the agent allocate.
    """
    if needed > len(buffer):
        rest = bytearray(min(needed, WAITALL_BYTES))
        return memoryview(rest)[:sock.recv_into(rest, len(rest), socket.MSG_WAITALL)]
    return memoryview(buffer)[:recv_into_polling(sock, buffer, spin_seconds)]


def recv_into_polling(sock: socket.socket, buffer, spin_seconds: float) -> int:
    """recv_into, but first spin for up to spin_seconds on a non-blocking receive.

    A reply or the next pipelined request usually arrives within microseconds; sleeping in
    the kernel and being woken costs tens of microseconds on small boards and VMs, more than
    the call itself. The spin is bounded, so an idle peer costs at most spin_seconds of CPU.
    """
    if spin_seconds > 0:
        deadline = time.perf_counter() + spin_seconds
        while True:
            try:
                return sock.recv_into(buffer, 0, _DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() >= deadline:
                    break
    return sock.recv_into(buffer)
