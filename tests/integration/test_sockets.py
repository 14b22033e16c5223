"""edge_agent.transport.socket_io.send_parts: header and body arrive whole and in order, whether the
kernel takes them in one sendmsg or sendmsg stops short (a send timeout or a signal after
some bytes), on a real socketpair."""
from __future__ import annotations

import socket
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.protocol import reply_parts
from edge_agent.api.rpcs import Method
from edge_agent.transport.socket_io import send_parts


class ShortSends:
    """A socket whose sendmsg stops after at most `limit` bytes, as the kernel's may: the
    bytes it does send go through the real socket."""

    def __init__(self, sock: socket.socket, limit: int):
        self.sock = sock
        self.limit = limit
        self.sendmsg_calls = 0

    def sendmsg(self, buffers):
        self.sendmsg_calls += 1
        joined = b"".join(bytes(b) for b in buffers)[:self.limit]
        return self.sock.sendmsg([joined])

    def sendall(self, data):
        self.sock.sendall(data)


def received(sock: socket.socket, nbytes: int) -> bytes:
    chunks, got = [], 0
    while got < nbytes:
        chunk = sock.recv(nbytes - got)
        assert chunk, "the stream ended early"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([0, 1, 4095, 4096, 70000, 300000]), cut=st.integers(0, 400000),
       seed=st.integers(0, 255))
def test_a_reply_sent_in_parts_arrives_whole_however_sendmsg_stops(size, cut, seed):
    body = bytes((seed + i) % 251 for i in range(size))
    header, body = reply_parts(Method.PREDICT, 7, 0, body)
    sender, receiver = socket.socketpair()
    try:
        out: list = []
        reader = threading.Thread(target=lambda: out.append(
            received(receiver, len(header) + len(body))))
        reader.start()
        short = ShortSends(sender, cut)
        send_parts(short, header, body)
        reader.join()
        assert out == [header + body]
        # A body under the gather size is joined to its header and sent whole (sendall).
        assert short.sendmsg_calls == (0 if size < 4096 else 1)
    finally:
        sender.close()
        receiver.close()


def test_a_large_reply_goes_in_one_sendmsg_on_a_real_socket():
    body = b"\x01" * (1 << 20)
    header, body = reply_parts(Method.PREDICT, 1, 0, body)
    sender, receiver = socket.socketpair()
    try:
        out: list = []
        reader = threading.Thread(target=lambda: out.append(received(receiver, 16 + len(body))))
        reader.start()
        send_parts(sender, header, body)
        reader.join()
        assert out[0][:16] == header and out[0][16:] == body
    finally:
        sender.close()
        receiver.close()
