"""Socket helpers shared by the server loop and the client (the only I/O outside them)."""
from __future__ import annotations

import os
import socket
import time

_DONTWAIT = socket.MSG_DONTWAIT


def default_busy_poll_us() -> int:
    """Spin before sleeping on multi-core machines only: on one core it would starve the peer."""
    return 50 if (os.cpu_count() or 1) > 1 else 0


def receive(sock: socket.socket, buffer: bytearray, needed: int, spin_seconds: float):
    """The next bytes of a frame stream: a view of what arrived, empty at end of stream.

    When the frame in progress still needs more than `buffer` holds, its rest is read in one
    MSG_WAITALL receive into a buffer of its own: one system call instead of one per chunk
    the kernel happens to deliver.
    """
    if needed > len(buffer):
        rest = bytearray(needed)
        return memoryview(rest)[:sock.recv_into(rest, needed, socket.MSG_WAITALL)]
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
