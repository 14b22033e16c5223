"""Socket helpers shared by the server loop and the client (the only I/O outside them)."""
from __future__ import annotations

import array
import socket
import time

from edge_agent.protocol.receiving import MAX_FDS, close_fds  # noqa: F401  (the fronts use them)


_DONTWAIT = socket.MSG_DONTWAIT
_FD_SIZE = array.array("i").itemsize
_ANCILLARY_BYTES = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
# Received descriptors are close-on-exec from the start: a model probe or helper the agent
# starts must never inherit a client's file.
_CLOEXEC = socket.MSG_CMSG_CLOEXEC
_NO_FDS: tuple[int, ...] = ()
# A plain int: `flags & MSG_CTRUNC` on the enum member runs enum's Python __and__, once a
# request.
_CTRUNC = int(socket.MSG_CTRUNC)


def receive_into(sock: socket.socket, view: memoryview, wait_all: bool,
                 spin_seconds: float) -> int:
    """Receive the next bytes of a frame stream into `view` (a connection object's buffer):
    how many arrived, 0 at end of stream.

    `wait_all`: the view is the rest of a large body; it is read in one MSG_WAITALL receive,
    one system call instead of one per chunk the kernel happens to deliver.
    """
    if wait_all:
        return sock.recv_into(view, len(view), socket.MSG_WAITALL)
    return recv_into_polling(sock, view, spin_seconds)


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


def receive_into_with_fds(sock: socket.socket, view: memoryview, wait_all: bool,
                          spin_seconds: float):
    """receive_into(), but with recvmsg: → (nbytes, fds, truncated).

    `fds`: the descriptors that came with these bytes (usually none: an empty tuple), already
    close-on-exec and now the caller's to close. `truncated`: the client sent more than
    MAX_FDS with one message; the kernel has closed the ones that did not fit, the caller must
    close the rest and refuse. The kernel never delivers the descriptors of two sendmsg calls
    in one receive, and delivers a call's descriptors with that call's first byte (the read
    stops after the message that carried them).
    """
    if wait_all:
        n, ancillary, flags, _ = sock.recvmsg_into(
            [view], _ANCILLARY_BYTES, socket.MSG_WAITALL | _CLOEXEC)
    elif spin_seconds > 0:
        n, ancillary, flags = _recvmsg_polling(sock, view, spin_seconds)
    else:  # the common case, kept short: this runs once per request
        n, ancillary, flags, _ = sock.recvmsg_into([view], _ANCILLARY_BYTES, _CLOEXEC)
    if ancillary or flags & _CTRUNC:
        return n, _descriptors(ancillary), bool(flags & _CTRUNC)
    return n, _NO_FDS, False


def receive_with_fds(sock: socket.socket, view: memoryview):
    """receive_into_with_fds() for a non-blocking socket on the event loop (one receive of
    whatever is there, no spin): → (nbytes, fds, truncated); BlockingIOError if nothing is."""
    n, ancillary, flags, _ = sock.recvmsg_into([view], _ANCILLARY_BYTES, _CLOEXEC)
    if ancillary or flags & _CTRUNC:
        return n, _descriptors(ancillary), bool(flags & _CTRUNC)
    return n, _NO_FDS, False


def _recvmsg_polling(sock: socket.socket, buffer, spin_seconds: float):
    """recv_into_polling, as recvmsg: the spin is the same, ancillary data comes along."""
    deadline = time.perf_counter() + spin_seconds
    while True:
        try:
            return sock.recvmsg_into([buffer], _ANCILLARY_BYTES, _DONTWAIT | _CLOEXEC)[:3]
        except BlockingIOError:
            if time.perf_counter() >= deadline:
                break
    return sock.recvmsg_into([buffer], _ANCILLARY_BYTES, _CLOEXEC)[:3]


def _descriptors(ancillary) -> tuple[int, ...]:
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % _FD_SIZE])
    return tuple(fds)


# Below this many body bytes, joining header and body costs less than sendmsg's gather list.
_GATHER_BYTES = 4096


def send_parts(sock: socket.socket, header: bytes, body) -> None:
    """sendall(header + body) without the join for a large body: one sendmsg of both (the
    body is not copied behind the header), continued after a partial send (SO_SNDTIMEO, a
    signal)."""
    size = len(body)
    if size < _GATHER_BYTES:
        sock.sendall(header + body)
        return
    sent = sock.sendmsg([header, body])
    if sent < len(header):
        sock.sendall(memoryview(header)[sent:])
        sent = len(header)
    sent -= len(header)
    if sent < size:
        sock.sendall(memoryview(body)[sent:])


def send_with_fds(sock: socket.socket, data: bytes, fds) -> None:
    """sendall(data), the descriptors going with its first byte (one sendmsg), so the agent
    takes them as belonging to the frame `data` begins with."""
    if not fds:
        sock.sendall(data)
        return
    sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
