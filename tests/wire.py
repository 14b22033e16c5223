"""Raw framed-socket helpers the server, gRPC and descriptor-passing tests share: a bare
connection, reply frames read off it, whether the agent closed it, and request frames of any
size. (Test modules import each other only within a level; these serve every level.)"""
from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time

from edge_agent import agent_pb2 as pb
from edge_agent.protocol import FrameDecoder, encode_request
from edge_agent.api.rpcs import Method


def raw_connection(agent) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(agent.socket_path)
    return sock


def read_replies(sock: socket.socket, count: int = 1):
    """Read `count` reply frames, or all there are until the agent closes."""
    decoder, frames = FrameDecoder(1 << 30), []
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            break
        decoder.feed(data)
        frames.extend(decoder.frames())
    return frames


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def assert_serving(agent):
    assert agent.alive(), agent.log()
    with agent.client() as client:
        assert isinstance(client.list_models(), list)


def _unread_by_agent(sock: socket.socket) -> int:
    """Bytes this end sent that the agent has not taken off its socket yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]


def wait_taken(sock: socket.socket, timeout: float = 60.0) -> None:
    """Wait until the agent has read everything sent on `sock` (it then holds the bytes)."""
    deadline = time.monotonic() + timeout
    while _unread_by_agent(sock):
        assert time.monotonic() < deadline, "the agent never read what was sent"
        time.sleep(0.01)


def _list_models_frame(request_id: int, body_bytes: int) -> bytes:
    """A ListModels request of `body_bytes` whose body is one unknown bytes field (field 15):
    a valid ListModelsRequest of any size, which the agent answers OK."""
    for width in range(1, 6):  # the length's varint width, which depends on the length
        length = body_bytes - 1 - width
        if len(_varint(length)) == width:
            payload = b"\x7a" + _varint(length) + bytes(length)
            pb.ListModelsRequest.FromString(payload)
            return encode_request(Method.LIST_MODELS, request_id, payload)
    raise ValueError(body_bytes)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _RawBody:
    """Stands in for a request message with bytes that are not one."""

    def __init__(self, body: bytes):
        self.body = body

    def SerializeToString(self) -> bytes:
        return self.body
