"""Connection with descriptors, as a property: whatever frames a client sends, with however
many descriptors at whatever point of a frame, cut however, every descriptor the connection
received is closed by the time it ends, it answers only with well-formed replies, and nothing
escapes it but the end of the connection.

A real FramedConnection over a socketpair in this process, served by the front's event loop
on a thread of the test against an in-process agent core, so the descriptors it holds are
counted in this process's /proc/self/fd.
"""
from __future__ import annotations

import array
import os
import socket
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import agent_pb2 as pb
from edge_agent.config import from_mapping
from edge_agent.errors import StatusCode
from edge_agent.protocol import HEADER, FrameSplitter, Kind, encode_request
from edge_agent.api.rpcs import Method
from edge_agent.transport.framed_front import FramedConnection, SocketServer
from edge_agent.api.service import AgentService
from edge_agent.api.caller import Caller
from edge_agent.transport.socket_io import MAX_FDS
from edge_agent.tools import model_builder
from wire import split_frames


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("connection-fds")
    config = from_mapping({"edge_agent_state_dir": str(directory / "state"),
                           "edge_agent_allow_unsigned_models": True,
                           "edge_agent_num_threads": 1,
                           "edge_agent_max_frame_bytes": 1 << 20,
                           "edge_agent_frame_timeout_seconds": 30.0})
    service = AgentService(config)
    model = model_builder.add_model().write(directory / "add.tflite")
    service.load_model(pb.LoadModelRequest(name="add", url=str(model)))
    server = SocketServer(service, config)
    yield server
    server.workers.stop()
    server.loop.close()
    service.close()


def _predict_by_fd() -> bytes:
    request = pb.PredictRequest(name="add")
    request.tensors.add().shared_memory_handle.fd_index = 0
    request.tensors.add().shared_memory_handle.CopyFrom(pb.SharedMemoryHandle(fd_index=1,
                                                                              offset=16))
    request.output_handles.add(fd_index=0, offset=64)
    return request.SerializeToString()


FRAMES = {
    "list": encode_request(Method.LIST_MODELS, 1, b""),
    "predict-fd": encode_request(Method.PREDICT, 2, _predict_by_fd()),
    "load-fd": encode_request(Method.LOAD_MODEL, 3,
                              pb.LoadModelRequest(name="x", url="fd:0").SerializeToString()),
    "malformed": encode_request(Method.PREDICT, 4, b"\xff\xff"),
    "status": HEADER.pack(b"EA", 1, Kind.REQUEST, Method.LIST_MODELS, 9, 5, 0),
    "unknown": encode_request(77, 6, b""),
    "reply": HEADER.pack(b"EA", 1, Kind.REPLY, Method.LIST_MODELS, 0, 7, 0),
    "garbage": b"GET / HTTP/1.1\r\n\r\n",
}

# One send: a frame, how many descriptors go with it, and where in it they go (0: with its
# first byte, as the protocol asks; else in the middle, which it refuses).
sends = st.lists(st.tuples(st.sampled_from(sorted(FRAMES)),
                           st.integers(0, MAX_FDS + 2), st.integers(0, 40)),
                 min_size=1, max_size=6)


def _own_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything the agent sent until it closed; a reset (it closed with bytes of ours unread,
    after a fault) ends the stream like a close, once what it sent before has been read."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _serve_one(server: SocketServer, sock: socket.socket, caller: Caller) -> None:
    """Serve one connected socket on the server's loop, on this thread, until it ends (the
    server itself not serving)."""
    sock.setblocking(False)
    connection = FramedConnection(server, sock, caller)
    server.core.handlers[connection.fd] = connection
    server.loop.add_timed(connection)
    server.loop.run(lambda: connection._closed)


def _serve(server, sock, errors) -> None:
    try:
        _serve_one(server, sock, Caller(os.getpid(), 65534, 65534))
    except BaseException as e:  # anything escaping is a fault of the connection
        errors.append(e)
        sock.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=sends)
def test_every_received_descriptor_is_closed_and_every_reply_is_well_formed(server, plan):
    memfds = []
    for _ in range(MAX_FDS + 2):
        fd = os.memfd_create("prop", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        memfds.append(fd)
    before = _own_fds()
    client, agent_side = socket.socketpair()
    errors: list[BaseException] = []
    thread = threading.Thread(target=_serve, args=(server, agent_side, errors))
    thread.start()
    try:
        try:
            for name, count, at in plan:
                frame = FRAMES[name]
                cut = min(at, len(frame) - 1)
                if cut:
                    client.sendall(frame[:cut])
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                           array.array("i", memfds[:count]))] if count else []
                sent = client.sendmsg([frame[cut:]], rights)
                client.sendall(frame[cut + sent:])
            client.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the connection closed on a fault of an earlier send
        replies = _read_to_end(client)
    finally:
        thread.join()
        client.close()
        for fd in memfds:
            os.close(fd)
    assert not errors, errors
    splitter = FrameSplitter(1 << 30)
    frames = split_frames(splitter, replies)
    assert not splitter.pending
    for frame in frames:
        assert frame.kind == Kind.REPLY
        assert frame.status not in (StatusCode.INTERNAL, StatusCode.UNKNOWN), frame.body
    assert _own_fds() - before == set(), "a passed descriptor stayed open"


def test_predict_by_passed_descriptors_on_a_socketpair(server):
    """The happy path of the property above, checked for its numbers."""
    a, b = np.arange(4, dtype=np.float32), np.full(4, 10, dtype=np.float32)
    first, second = (os.memfd_create(n, os.MFD_CLOEXEC) for n in ("a", "b"))
    for fd, values in ((first, a), (second, b)):
        os.ftruncate(fd, 4096)
        os.pwrite(fd, values.tobytes(), 0 if fd == first else 16)
    client, agent_side = socket.socketpair()
    errors: list[BaseException] = []
    thread = threading.Thread(target=_serve, args=(server, agent_side, errors))
    thread.start()
    client.sendmsg([FRAMES["predict-fd"]],
                   [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [first, second]))])
    client.shutdown(socket.SHUT_WR)
    splitter, frames = FrameSplitter(1 << 20), []
    while chunk := client.recv(65536):
        frames.extend(split_frames(splitter, chunk))
    thread.join()
    client.close()
    [reply] = frames
    assert reply.status == StatusCode.OK, reply.body
    out = np.frombuffer(os.pread(first, 16, 64), np.float32)
    np.testing.assert_array_equal(out, a + b)
    os.close(first)
    os.close(second)
    assert not errors
