"""The composed agent over its real socket: what needs the front and the service together
(a failed load and unknown or malformed calls leave it serving, clients resizing one model at
once). The rules of each call are tested in process: tests/unit/test_service.py."""
from __future__ import annotations

import os
import threading

import pytest
from concurrency import run_concurrently
from calls import assert_outputs_match, expect_error, raw_predict
from wire import _RawBody

from edge_agent import agent_pb2 as pb
from edge_agent.tools import model_builder
from edge_agent.app.root import StartError
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.rpcs import Method


# --- model management -----------------------------------------------------------------------

def test_a_model_missing_an_op_is_refused_naming_it(agent, model_files):
    with agent.client() as client:
        expect_error(StatusCode.FAILED_PRECONDITION, client.load_model, "c",
                     str(model_files["custom"]), match="EdgeAgentMissingOp")
        assert client.list_models() == []
        client.load_model("c", str(model_files["add"]))  # the name was not left reserved
    assert agent.alive()


# --- predict --------------------------------------------------------------------------------

def test_unknown_rpc_and_malformed_body_keep_the_connection(agent):
    with agent.client() as client:
        expect_error(StatusCode.UNIMPLEMENTED, client.call, 99, pb.ListModelsRequest(),
                     pb.ListModelsResponse)
        with pytest.raises(AgentError) as info:
            client.call(Method.LOAD_MODEL, _RawBody(b"\xff\xff\xff"), pb.LoadModelResponse)
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        assert "malformed LoadModel request" in info.value.message
        assert client.list_models() == []


def test_clients_resizing_one_dynamic_model_concurrently(agent, model_files):
    """Each call gets its own shape, whatever other clients resize the model to meanwhile;
    a tensor without metadata means the shape the model was loaded with."""
    built = model_builder.dynamic_batch_model()
    with agent.client() as client:
        client.load_model("dyn", str(model_files["dynamic"]))

    def resize_loop(batches):
        with agent.client() as client:
            for i in range(60):
                batch = batches[i % len(batches)]
                inputs = built.sample_inputs(seed=i, batch=batch)
                assert_outputs_match(built, inputs, client.predict("dyn", inputs))

    def bare_loop():
        with agent.client() as client:
            for i in range(60):
                x = built.sample_inputs(seed=i)["x"]  # batch 1: the load-time shape
                reply = raw_predict(client, "dyn", [pb.Tensor(byte_data=x.tobytes())])
                assert list(reply.tensors[0].tensor_metadata.shape) == [1, 4]

    run_concurrently(lambda: resize_loop([3, 7]), lambda: resize_loop([5, 2, 9]), bare_loop)


# --- the composition root: start-up refused, nothing left behind ------------------------------
# (start_agent's teardown fails the test if a thread or a descriptor of the agent outlives it)

def test_the_same_path_for_both_fronts_is_a_configuration_error(start_agent, tmp_path):
    path = str(tmp_path / "both.sock")
    with pytest.raises(StartError) as info:
        start_agent(edge_agent_socket_path=path, edge_agent_grpc_socket_path=path)
    assert info.value.status == 2
    assert "the gRPC socket and the framed socket are both" in str(info.value)
    assert not os.path.exists(path)


def test_a_framed_socket_that_cannot_be_bound_stops_start_up(start_agent, tmp_path):
    taken = tmp_path / "agent.sock"
    taken.write_text("not a socket")
    with pytest.raises(StartError) as info:
        start_agent(edge_agent_socket_path=str(taken))
    assert info.value.status == 1
    assert "exists and is not a socket; refusing to replace it" in str(info.value)
    assert taken.read_text() == "not a socket"


def test_a_socket_directory_that_cannot_be_made_stops_start_up(start_agent, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StartError) as info:
        start_agent(edge_agent_socket_path=str(tmp_path / "file" / "agent.sock"))
    assert info.value.status == 1
    assert "File exists" in str(info.value)


def test_a_grpc_socket_that_cannot_be_bound_removes_the_framed_one(start_agent, tmp_path):
    framed, taken = tmp_path / "framed.sock", tmp_path / "grpc.sock"
    taken.write_text("not a socket")
    with pytest.raises(StartError) as info:
        start_agent(edge_agent_socket_path=str(framed), edge_agent_grpc_socket_path=str(taken))
    assert info.value.status == 1
    assert str(info.value).startswith("edge_agent_grpc_socket_path: ")
    assert not framed.exists() and taken.read_text() == "not a socket"


def test_an_observer_that_cannot_start_stops_both_fronts(start_agent, tmp_path):
    framed, grpc = tmp_path / "framed.sock", tmp_path / "grpc.sock"
    with pytest.raises(StartError) as info:
        start_agent(edge_agent_socket_path=str(framed), edge_agent_grpc_socket_path=str(grpc),
                    edge_agent_metrics_listen="127.0.0.1:99999")
    assert info.value.status == 2
    assert str(info.value).startswith("configuration error: ")
    assert "expected HOST:PORT" in str(info.value)
    assert not framed.exists() and not grpc.exists()


def test_stop_removes_the_sockets_and_a_second_stop_does_nothing(start_agent, tmp_path):
    agent = start_agent(edge_agent_grpc_socket_path=str(tmp_path / "grpc.sock"))
    app = agent.app
    assert os.path.exists(agent.socket_path) and (tmp_path / "grpc.sock").exists()
    app.stop()
    assert not os.path.exists(agent.socket_path) and not (tmp_path / "grpc.sock").exists()
    app.stop()
    assert not agent.alive()


class _CaptureHeldOpen:
    """A capture service whose CaptureData waits until the test lets it finish, recording
    what happened in which order."""

    def __init__(self, config):
        self.entered, self.release = threading.Event(), threading.Event()
        self.events: list[str] = []

    def capture(self, request, shm=None) -> None:
        self.entered.set()
        assert self.release.wait(60), "the test never let the capture finish"
        self.events.append("captured")

    def status(self, capture_id):
        raise AssertionError("not called")

    def fill_metrics(self, message) -> None:
        pass

    def close(self) -> None:
        self.events.append("closed")


def test_stop_answers_the_call_in_progress_before_closing_the_service(tmp_path):
    """At stop, a call already running on the framed socket is answered, and only then is
    the service (its capture journal) closed. Proven by order, not by time: the call is held
    until the socket file is gone, that is until stop() is under way."""
    from edge_agent.platform import boards
    from edge_agent.app.root import App
    from edge_agent.client import AgentClient
    from capture_helpers import capture_request

    held: list[_CaptureHeldOpen] = []

    def make_capture(config):
        held.append(_CaptureHeldOpen(config))
        return held[0]

    socket_path = str(tmp_path / "agent.sock")
    config = boards.load(None, {"edge_agent_socket_path": socket_path,
                                "edge_agent_state_dir": str(tmp_path / "state")})
    app = App(config, make_capture=make_capture).start()
    app.stop_grace_seconds = 60.0  # the call is released long before: no race with a timer
    replies: list = []

    def capture_call() -> None:
        with AgentClient(socket_path) as client:
            replies.append(client.call(Method.CAPTURE_DATA, capture_request(),
                                       pb.CaptureDataResponse))

    caller = threading.Thread(target=capture_call)
    caller.start()
    assert held and held[0].entered.wait(60)
    stopper = threading.Thread(target=app.stop)
    stopper.start()
    while os.path.exists(socket_path) and stopper.is_alive():
        stopper.join(0.01)  # stop() has begun once the socket file is gone
    held[0].release.set()
    stopper.join(60)
    caller.join(60)
    assert not stopper.is_alive() and not caller.is_alive()
    assert held[0].events == ["captured", "closed"]
    assert len(replies) == 1 and isinstance(replies[0], pb.CaptureDataResponse)
