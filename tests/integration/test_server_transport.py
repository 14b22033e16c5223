"""The socket front under abuse: after each, the agent keeps serving everyone else."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from capture_helpers import wait_for
from concurrency import run_concurrently
from wire import assert_serving, closed_by_peer, raw_connection, read_replies, split_frames

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import HEADER, FrameSplitter, Kind, encode_request
from edge_agent.api.rpcs import Method
from edge_agent.tools import model_builder


def test_garbage_bytes_get_an_error_and_a_close(agent):
    sock = raw_connection(agent)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    [reply] = read_replies(sock)
    assert reply.kind == Kind.REPLY and reply.status == StatusCode.INVALID_ARGUMENT
    assert b"not an edge-agent frame" in reply.body
    assert closed_by_peer(sock)
    assert_serving(agent)


def test_oversize_length_prefix_is_refused_before_allocating(start_agent):
    agent = start_agent(edge_agent_max_frame_bytes=1024 * 1024)
    rss_before = agent.rss_kb()
    sock = raw_connection(agent)
    sock.sendall(HEADER.pack(b"EA", 1, Kind.REQUEST, Method.PREDICT, 0, 42, 2**32 - 1))
    [reply] = read_replies(sock)
    assert reply.status == StatusCode.RESOURCE_EXHAUSTED and reply.request_id == 42
    assert b"exceeds the limit of 1048576 bytes" in reply.body
    assert closed_by_peer(sock)
    assert agent.rss_kb() - rss_before < 10 * 1024  # nothing near 4 GiB was allocated
    assert_serving(agent)


def test_a_frame_cut_short_leaves_the_agent_serving(agent):
    sock = raw_connection(agent)
    frame = encode_request(Method.LIST_MODELS, 1, b"\x00" * 100)
    sock.sendall(frame[:40])
    sock.close()
    assert_serving(agent)
    assert "middle of a frame" in agent.log() or agent.alive()


def test_a_stalled_client_is_dropped_and_blocks_nobody(start_agent):
    agent = start_agent(edge_agent_frame_timeout_seconds=1.0)
    stalled = raw_connection(agent)
    stalled.sendall(encode_request(Method.LIST_MODELS, 7, b"")[:10])  # half a header, then silence
    half_open = raw_connection(agent)  # connected, never sends a byte
    with agent.client() as client:  # others are served meanwhile
        for _ in range(20):
            client.list_models()
    [reply] = read_replies(stalled)
    assert reply.status == StatusCode.DEADLINE_EXCEEDED
    assert b"frame not completed within 1 s" in reply.body
    assert closed_by_peer(stalled)
    half_open.close()
    assert_serving(agent)


def test_a_trickling_client_is_dropped_too(start_agent):
    agent = start_agent(edge_agent_frame_timeout_seconds=1.0)
    sock = raw_connection(agent)
    frame = encode_request(Method.LIST_MODELS, 3, b"\x00" * 64)
    reply = None
    for byte in frame:  # one byte every 0.2 s: each read makes progress, the frame never ends
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.2)
        sock.settimeout(0.01)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        finally:
            sock.settimeout(10)
        reply = split_frames(FrameSplitter(1 << 20), data)[0]
        break
    assert reply is not None and reply.status == StatusCode.DEADLINE_EXCEEDED
    assert_serving(agent)


def test_a_client_that_never_reads_its_replies_is_dropped(start_agent, model_files):
    agent = start_agent(edge_agent_send_timeout_seconds=1.0)
    with agent.client() as client:
        client.load_model("img", str(model_files["add"]))
    sock = raw_connection(agent)
    request = encode_request(Method.LIST_MODELS, 1, b"")
    sock.settimeout(0.5)
    try:
        for _ in range(200000):  # fill both socket buffers with replies nobody reads
            sock.sendall(request)
    except (socket.timeout, BrokenPipeError, ConnectionResetError):
        pass
    with agent.client() as client:  # meanwhile everyone else is served
        assert [m.name for m in client.list_models()] == ["img"]

        def framed_connections() -> int:
            return sum(c.open for c in client.get_metrics().connections if c.front == "framed")

        # The agent gives up on the reader-less client after the send timeout: only this
        # client's connection is left (waited for as a state, however long the machine takes).
        wait_for(lambda: framed_connections() == 1, timeout=120,
                 what="the agent to drop the client that never reads")
    # Draining now finds the end of the stream. Had the agent kept the connection, reading
    # would let it answer the rest of the requests and then wait: no end of stream.
    sock.settimeout(10)
    while True:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not data:
            break
    sock.close()
    assert_serving(agent)


def test_pipelined_requests_are_answered_with_their_ids(agent, model_files):
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))
    built = model_builder.add_model()
    sock = raw_connection(agent)
    requests, expected = [], {}
    for request_id in range(1000, 1020):
        inputs = built.sample_inputs(seed=request_id)
        request = pb.PredictRequest(name="add")
        for name, array in inputs.items():
            t = request.tensors.add(byte_data=array.tobytes())
            t.tensor_metadata.name = name.encode()
            t.tensor_metadata.data_type = pb.FLOAT32
            t.tensor_metadata.shape.extend(array.shape)
        requests.append(encode_request(Method.PREDICT, request_id, request.SerializeToString()))
        expected[request_id] = built.reference(inputs)["sum"]
    requests.append(encode_request(Method.DESCRIBE_MODEL, 5000,
                                   pb.DescribeModelRequest(name="nope").SerializeToString()))
    sock.sendall(b"".join(requests))  # all at once: the agent answers each
    replies = read_replies(sock, len(requests))
    assert sorted(r.request_id for r in replies) == sorted(expected) + [5000]
    for reply in replies:
        if reply.request_id == 5000:
            assert reply.status == StatusCode.NOT_FOUND
            continue
        assert reply.status == StatusCode.OK and reply.method == Method.PREDICT
        tensor = pb.PredictResponse.FromString(reply.body).tensors[0]
        np.testing.assert_allclose(np.frombuffer(tensor.byte_data, np.float32).reshape(1, 4),
                                   expected[reply.request_id], rtol=1e-6)


def test_a_client_that_disconnects_mid_call(agent, model_files):
    with agent.client() as client:
        client.load_model("slow", str(model_files["slow"]))
    inputs = model_builder.slow_model().sample_inputs()
    for _ in range(5):
        sock = raw_connection(agent)
        request = pb.PredictRequest(name="slow")
        request.tensors.add(byte_data=inputs["x"].tobytes())
        sock.sendall(encode_request(Method.PREDICT, 1, request.SerializeToString()))
        sock.close()  # gone before the reply is written
    with agent.client() as client:
        assert client.predict("slow", inputs)["y"].shape == (1, 1024)
    assert_serving(agent)


@pytest.mark.native_only
def test_many_concurrent_clients(agent, model_files):
    built = model_builder.add_model()
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))

    def worker(seed):
        with agent.client() as client:
            for i in range(30):
                inputs = built.sample_inputs(seed=seed * 100 + i)
                out = client.predict("add", inputs)["sum"]
                np.testing.assert_allclose(out, built.reference(inputs)["sum"], rtol=1e-6)

    run_concurrently(*(lambda n=n: worker(n) for n in range(16)))


def test_one_client_object_shared_by_threads(agent, model_files):
    built = model_builder.add_model()
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))

        def worker(seed):
            for i in range(20):
                inputs = built.sample_inputs(seed=seed * 100 + i)
                np.testing.assert_allclose(client.predict("add", inputs)["sum"],
                                           built.reference(inputs)["sum"], rtol=1e-6)
        run_concurrently(*(lambda n=n: worker(n) for n in range(4)))


def test_two_models_are_inside_the_runtime_at_once(start_agent, model_files, tmp_path,
                                                   recording_delegate):
    """Predictions on two models run in parallel, proven by construction whatever the
    machine's load: the test delegate runs each model's ADD only once two invokes are inside
    it together (a barrier), and fails one left alone there (tests/integration/test_delegates.py shows
    that control)."""
    record_path = tmp_path / "delegate-record.txt"
    agent = start_agent(edge_agent_delegate="external",
                        edge_agent_delegate_library=recording_delegate,
                        edge_agent_delegate_options={"rendezvous": 2, "rendezvous_seconds": 60,
                                                     "record_to": str(record_path)})
    built = model_builder.add_model()
    with agent.client() as client:
        for name in ("left", "right"):
            client.load_model(name, str(model_files["add"]))
    # Each model's ADD is the barrier's: taken in the agent and in its check process.
    assert record_path.read_text().count("took 1 node(s)") == 4

    def predict(name, seed):
        def run():
            inputs = built.sample_inputs(seed=seed)
            with agent.client() as client:
                np.testing.assert_allclose(client.predict(name, inputs)["sum"],
                                           built.reference(inputs)["sum"], rtol=1e-6)
        return run

    run_concurrently(predict("left", 1), predict("right", 2))


def test_calls_on_one_model_take_turns(start_agent, model_files, tmp_path, recording_delegate):
    """By construction as well: a second call on the model comes while the first waits at the
    delegate's barrier. Were they not taken in turn, the two would meet there and succeed;
    the model's lock keeps the second out until the first gave up, so each fails alone."""
    record_path = tmp_path / "delegate-record.txt"
    agent = start_agent(edge_agent_delegate="external",
                        edge_agent_delegate_library=recording_delegate,
                        # Each call waits 3 s in vain: room for the second to come meanwhile.
                        edge_agent_delegate_options={"rendezvous": 2, "rendezvous_seconds": 3,
                                                     "record_to": str(record_path)})
    built = model_builder.add_model()
    inputs = built.sample_inputs()
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))
    failures = []

    def predict(after_arrivals):
        def run():
            if after_arrivals:  # the first call is inside the runtime, at the barrier
                wait_for(lambda: record_path.read_text().count("arrive") >= after_arrivals)
            with agent.client() as client, pytest.raises(AgentError) as info:
                client.predict("add", inputs)
            failures.append(info.value)
        return run

    run_concurrently(predict(0), predict(1))
    assert [e.code for e in failures] == [StatusCode.INTERNAL] * 2
    assert all("recording_rendezvous_add" in e.message for e in failures)
    assert record_path.read_text().count("arrive") == 2


def _client_with_a_place(agent, timeout: float = 5.0):
    """A client the agent has taken in: a connection that just closed (the fixture's readiness
    probe, a client of the test) may hold its place for a moment after close()."""
    deadline = time.monotonic() + timeout
    while True:
        client = agent.client()
        try:
            client.list_models()
            return client
        except AgentError as e:
            client.close()
            assert e.code == StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, e
            time.sleep(0.05)


def test_too_many_clients_are_refused_politely(start_agent):
    agent = start_agent(edge_agent_max_connections=2)
    first = _client_with_a_place(agent)
    second = _client_with_a_place(agent)
    third = raw_connection(agent)
    [reply] = read_replies(third)
    assert reply.status == StatusCode.RESOURCE_EXHAUSTED and b"too many clients" in reply.body
    assert closed_by_peer(third)
    first.close()
    _client_with_a_place(agent).close()  # the place first held is given back
    second.close()


def test_socket_file_mode(start_agent):
    agent = start_agent(edge_agent_socket_mode="0600")
    assert stat.S_IMODE(os.stat(agent.socket_path).st_mode) == 0o600
    agent2 = start_agent(edge_agent_socket_mode="0660")
    assert stat.S_IMODE(os.stat(agent2.socket_path).st_mode) == 0o660


def serve_exits(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", "serve", *args],
                          capture_output=True, text=True, timeout=30)


def test_a_second_agent_does_not_steal_a_live_socket(agent):
    rival = serve_exits("--socket", agent.socket_path)
    assert rival.returncode == 1
    assert "another agent is already serving on" in rival.stderr
    assert_serving(agent)


def test_a_stale_socket_file_is_replaced(start_agent, tmp_path):
    path = tmp_path / "stale" / "agent.sock"
    path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a crashed agent leaves
    agent = start_agent(edge_agent_socket_path=str(path))
    assert_serving(agent)


def test_a_non_socket_file_is_never_replaced(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("data")
    result = serve_exits("--socket", str(path))
    assert result.returncode == 1 and "is not a socket" in result.stderr
    assert path.read_text() == "data"


def test_sigterm_stops_cleanly_and_removes_the_socket(agent):
    assert agent.stop() == 0
    assert not os.path.exists(agent.socket_path)


def test_client_timeout_is_deadline_exceeded(tmp_path):
    from edge_agent.client import AgentClient

    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    try:
        with AgentClient(path, timeout=0.3) as client:
            with pytest.raises(AgentError) as info:
                client.list_models()
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        assert "no reply from the agent within 0.3 s" in info.value.message
    finally:
        listener.close()
