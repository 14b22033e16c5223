"""One user's stalled clients cannot starve another user's (edge_agent.transport.pending, docs/PROTOCOL.md
"Sharing between clients"): eight clients of this test's user hold 6 MiB of 8 MiB frames (or,
over gRPC, 4 MiB of 8 MiB messages), as many as the shared budget lets them, while a client
run as `nobody` loads a tiny model and predicts on it: every answer comes, none refused, and
what is held stays within the budget; idle connections of one user make room for another's."""
from __future__ import annotations

import json
import os
import select
import socket
import time

import numpy as np
import pytest
from test_grpc_front_h2 import RawClient, headers, message
from wire import raw_connection, read_replies, wait_taken

from edge_agent import agent_pb2 as pb
from edge_agent.api.rpcs import GRPC_SERVICE
from edge_agent.client import AgentClient
from edge_agent.errors import StatusCode
from edge_agent.protocol import encode_request
from edge_agent.api.rpcs import Method
from wire import add_array
from edge_agent.tools import model_builder
from privileges import NOBODY, fork_as

MIB = 1 << 20
FRAME = 8 * MIB
PREDICTS = 30


@pytest.fixture
def shared(start_agent, public_dir):
    """An agent any user may use (its socket 0666 in a directory everyone may search), with
    8 MiB frames and the default shared budget (two frames), and a tiny model anyone may read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as a second user")
    workdir = public_dir / "agent"
    workdir.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)
    grpc_path = str(workdir / "grpc.sock")
    agent = start_agent(workdir=workdir, edge_agent_socket_mode="0666",
                        edge_agent_max_frame_bytes=FRAME, edge_agent_frame_timeout_seconds=300.0,
                        edge_agent_grpc_socket_path=grpc_path)
    model = model_builder.add_model().write(public_dir / "tiny.tflite")
    os.chmod(model, 0o644)
    return agent, str(model), grpc_path


def as_nobody(agent, run) -> dict:
    """run() in a forked child that became nobody; what it returned (JSON)."""
    log = agent.workdir.parent / f"nobody-{len(os.listdir(agent.workdir.parent))}.log"

    def child() -> int:
        os.write(1, json.dumps(run()).encode() + b"\n")
        return 0

    pid = fork_as(NOBODY, NOBODY, child, str(log))
    _, status = os.waitpid(pid, 0)
    output = log.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, output
    return json.loads(output.strip().splitlines()[-1])


def framed_predicts(socket_path: str, model: str) -> dict:
    built = model_builder.add_model()
    outcomes = {"ok": 0, "wrong": 0, "refused": []}
    with AgentClient(socket_path) as client:
        client.load_model("tiny", model)
        for seed in range(PREDICTS):
            inputs = built.sample_inputs(seed=seed)
            try:
                out = client.predict("tiny", inputs)["sum"]
            except Exception as e:  # noqa: BLE001 - counted: the test fails on any
                outcomes["refused"].append(repr(e))
                continue
            outcomes["ok" if np.array_equal(out, built.reference(inputs)["sum"]) else "wrong"] += 1
    return outcomes


def pending_of(agent):
    return agent.app.server.pending


def test_stalled_framed_clients_of_one_user_do_not_starve_another_user(shared):
    agent, model, _ = shared
    stalled, refused = [], 0
    for request_id in range(1, 9):
        sock = raw_connection(agent)
        sock.settimeout(120)
        frame = encode_request(Method.LIST_MODELS, request_id, b"\x7a" + bytes(FRAME - 1))[:16]
        try:
            sock.sendall(frame + bytes(6 * MIB))
            wait_taken(sock)
        except (BrokenPipeError, ConnectionResetError):
            pass
        stalled.append(sock)
    for sock in stalled:  # those past the budget were refused, as before, and closed
        sock.setblocking(False)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        refused += 1
        assert not data or b"edge_agent_max_pending_bytes" in data
    assert 0 < refused < 8  # the budget was full: some of this user's own frames refused
    budget = pending_of(agent)
    assert budget.used <= budget.limit
    outcomes = as_nobody(agent, lambda: framed_predicts(agent.socket_path, model))
    assert outcomes == {"ok": PREDICTS, "wrong": 0, "refused": []}
    assert budget.used <= budget.limit
    for sock in stalled:
        sock.close()


def grpc_predicts(path: str) -> dict:
    built = model_builder.add_model()
    outcomes = {"ok": 0, "wrong": 0, "refused": []}
    client = RawClient(path)
    try:
        client.settled()
        load = pb.LoadModelRequest(name="tiny-grpc", url=MODEL_URL[0])
        status = client.status(client.call(headers(f"/{GRPC_SERVICE}/LoadModel".encode()),
                                           message(load.SerializeToString())))
        assert status[0] == 0, status
        for seed in range(PREDICTS):
            inputs = built.sample_inputs(seed=seed)
            request = pb.PredictRequest(name="tiny-grpc")
            for name, array in inputs.items():
                add_array(request.tensors, name, array)
            stream = client.call(headers(f"/{GRPC_SERVICE}/Predict".encode()),
                                 message(request.SerializeToString()))
            code, text = client.status(stream)
            if code:
                outcomes["refused"].append(f"{code}: {text}")
                continue
            data = bytes(client.reply(stream)["data"])[5:]
            reply = pb.PredictResponse.FromString(data)
            out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
            outcomes["ok" if np.array_equal(out, built.reference(inputs)["sum"]) else "wrong"] += 1
    finally:
        client.close()
    return outcomes


MODEL_URL: list[str] = [""]


def test_stalled_grpc_calls_of_one_user_do_not_starve_another_user(shared):
    agent, model, grpc_path = shared
    MODEL_URL[0] = model
    body = b"\x7a" + bytes(FRAME - 1)
    stalled, answered = [], 0
    for _ in range(8):
        client = RawClient(grpc_path)
        client.settled()
        # The stream's whole window (4 MiB): four such fill the shared budget to 32 bytes.
        head = message(body)[:4 * MIB]
        stream = client.call(headers(), *(head[i:i + MIB] for i in range(0, len(head), MIB)),
                             end=False)
        stalled.append((client, stream))
    budget = pending_of(agent)
    for client, stream in stalled:
        client.sock.settimeout(0.5)
        try:
            client.receive()
        except (TimeoutError, socket.timeout):
            pass
        client.sock.settimeout(30)
        if stream in client.replies and client.replies[stream].get("trailers"):
            answered += 1
            assert client.status(stream)[0] == StatusCode.RESOURCE_EXHAUSTED
    assert budget.used <= budget.limit
    outcomes = as_nobody(agent, lambda: grpc_predicts(grpc_path))
    assert outcomes == {"ok": PREDICTS, "wrong": 0, "refused": []}
    assert budget.used <= budget.limit
    for client, _ in stalled:
        client.close()


def test_idle_connections_of_one_user_make_room_for_another(start_agent, public_dir):
    """Every slot held by this user's idle clients: a client of another user still gets one,
    and one idle client of the first is told why it was closed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as a second user")
    workdir = public_dir / "agent"
    workdir.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)
    agent = start_agent(workdir=workdir, edge_agent_socket_mode="0666",
                        edge_agent_max_connections=4)
    idle = [raw_connection(agent) for _ in range(4)]
    for sock in idle:  # each is served (its slot taken) before the next
        sock.sendall(encode_request(Method.LIST_MODELS, 1, b""))
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.OK

    server = agent.app.server  # each back to waiting for its next request: idle
    deadline = time.monotonic() + 60
    while not all(handler.idle for handler in list(server._handlers.values())):
        assert time.monotonic() < deadline, "the connections never went back to waiting"
        time.sleep(0.01)

    def other_user() -> dict:
        with AgentClient(agent.socket_path) as client:
            return {"models": len(client.list_models())}

    assert as_nobody(agent, other_user) == {"models": 0}
    # The evicted connection's own thread writes why it closes, maybe after the other user's
    # call was answered: wait (bounded) for one of them to say it, then read what each holds.
    readable, _, _ = select.select(idle, [], [], 60)
    assert readable, "no idle connection was told it was closed"
    told = []
    for sock in idle:
        sock.setblocking(False)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        told.append(data)
    assert len(told) == 1, told
    assert b"closed to make room for another user's client" in told[0]
    for sock in idle:
        sock.close()


def test_idle_grpc_connections_of_one_user_make_room_for_another(start_agent, public_dir):
    """The same over gRPC: the evicted connection gets a GOAWAY (NO_ERROR) saying why."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as a second user")
    workdir = public_dir / "agent"
    workdir.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)
    grpc_path = str(workdir / "grpc.sock")
    agent = start_agent(workdir=workdir, edge_agent_socket_mode="0666",
                        edge_agent_max_connections=4, edge_agent_grpc_socket_path=grpc_path)
    list_models = f"/{GRPC_SERVICE}/ListModels".encode()
    idle = []
    try:
        _make_room_over_grpc(agent, grpc_path, list_models, idle)
    finally:
        for client in idle:
            client.close()


def _make_room_over_grpc(agent, grpc_path: str, list_models: bytes, idle: list) -> None:
    for _ in range(4):
        client = RawClient(grpc_path)
        idle.append(client)
        client.settled()
        assert client.status(client.call(headers(list_models), message(b"")))[0] == 0
    grpc = agent.app.grpc_server  # each connection's call is over: idle
    deadline = time.monotonic() + 60
    while not all(handler.idle for handler in list(grpc._handlers.values())):
        assert time.monotonic() < deadline, "the calls never ended"
        time.sleep(0.01)

    def other_user() -> dict:
        client = RawClient(grpc_path)
        try:
            client.settled()
            return {"status": list(client.status(client.call(headers(list_models),
                                                             message(b""))))}
        finally:
            client.close()

    assert as_nobody(agent, other_user) == {"status": [0, ""]}
    told = []
    for client in idle:
        client.sock.settimeout(0.2)
        try:
            while client.goaway is None:
                client.receive()
        except (TimeoutError, socket.timeout, ConnectionError):
            pass
        if client.goaway is not None:
            told.append(client.goaway)
    assert len(told) == 1, told
    assert told[0].error_code == 0
    assert b"closed to make room for another user's client" in told[0].additional_data
