"""Wire helpers the tests share: raw framed-socket helpers (a bare connection, reply frames
read off it, whether the agent closed it, request frames of any size), frames split as the agent
splits them, and protobuf tensors built from arrays. (Test modules import each other only within
a level; these serve every level.) The agent sends a reply as header and body (reply_parts) and
the client builds its tensors through its own path (client._wire_inputs): encode_reply,
add_array and add_shm_tensor serve only the tests, so they live here, not in edge_agent."""
from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from typing import NamedTuple

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.api.rpcs import Method
from edge_agent.errors import StatusCode
from edge_agent.protocol import FrameSplitter, encode_request, reply_parts
from edge_agent.protocol.tensors import add_tensor, data_type_of


class Frame(NamedTuple):
    kind: int
    method: int
    status: int
    request_id: int
    body: bytes


def split_frames(splitter, data=b"") -> list[Frame]:
    """Hand `data` to `splitter` (a FrameSplitter, compiled or its twin) as a receive would,
    then take every whole frame it holds, each body copied out of the splitter's buffer."""
    if len(data):
        splitter.get_buffer(len(data))[:] = data
        splitter.buffer_updated(len(data))
    frames = []
    while (parts := splitter.next_view()) is not None:
        kind, method, status, request_id, body = parts
        frames.append(Frame(kind, method, status, request_id, bytes(body)))
    return frames


def encode_reply(method: int, request_id: int, body: bytes,
                 status: int = StatusCode.OK) -> bytes:
    """A whole reply frame, as a fake agent sends it."""
    return b"".join(reply_parts(method, request_id, status, body))


def add_array(tensors, name: str, array: np.ndarray) -> pb.Tensor:
    """Append a byte_data Tensor holding `array` (C order) with full metadata to `tensors`
    (a repeated Tensor field)."""
    data_type = data_type_of(array.dtype)
    if data_type is None:
        raise TypeError(f"tensor {name!r}: dtype {array.dtype} has no wire DataType")
    return add_tensor(tensors, name.encode(), data_type, array.shape, array.tobytes())


def add_shm_tensor(tensors, name: str, tensor, fd_index: int | None = None) -> pb.Tensor:
    """Append a Tensor carrying a ShmTensor's handle and full metadata to `tensors`."""
    data_type = data_type_of(tensor.dtype)
    if data_type is None:
        raise TypeError(f"tensor {name!r}: dtype {tensor.dtype} has no wire DataType")
    return add_tensor(tensors, name.encode(), data_type, tensor.shape,
                      tensor.wire_handle(fd_index))


def connect_to(path: str, timeout: float = 10) -> socket.socket:
    """A blocking connection to the framed socket at `path`, its calls bounded by `timeout`
    seconds (a bound for a hang, never a measurement)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def raw_connection(agent) -> socket.socket:
    return connect_to(agent.socket_path)


def read_replies(sock: socket.socket, count: int = 1):
    """Read `count` reply frames, or all there are until the agent closes."""
    splitter, frames = FrameSplitter(1 << 30), []
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            break
        frames.extend(split_frames(splitter, data))
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
