"""The gRPC front: an application written for the original agent's gRPC API, unchanged; the
same answers as the framed socket; HTTP/2 as grpcio's client uses it (tests/e2e/test_grpc_original.py
has the clients generated from the original agent.proto)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from capture_helpers import wait_for
from concurrency import run_concurrently
from wire import _RawBody

from edge_agent import agent_pb2 as pb
from edge_agent.api.rpcs import GRPC_SERVICE as SERVICE
from edge_agent.errors import AgentError
from edge_agent.api.rpcs import Method
from edge_agent.tools import model_builder


class AgentStub:
    """What generated gRPC stubs of agent.proto do, spelled out with the generic API."""

    def __init__(self, channel):
        self.channel = channel
        for name, request, response in [
            ("Predict", pb.PredictRequest, pb.PredictResponse),
            ("LoadModel", pb.LoadModelRequest, pb.LoadModelResponse),
            ("UnLoadModel", pb.UnLoadModelRequest, pb.UnLoadModelResponse),
            ("ListModels", pb.ListModelsRequest, pb.ListModelsResponse),
            ("DescribeModel", pb.DescribeModelRequest, pb.DescribeModelResponse),
        ]:
            setattr(self, name, channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=request.SerializeToString,
                response_deserializer=response.FromString))


@pytest.fixture
def model_files(model_files, public_dir):
    """The models where anyone may read them: a gRPC caller is not identified (the agent
    loads for it only what every user could read)."""
    return {name: Path(shutil.copy(path, public_dir)) for name, path in model_files.items()}


@pytest.fixture
def grpc_agent(start_agent, tmp_path):
    path = tmp_path / "grpc.sock"
    agent = start_agent(edge_agent_grpc_socket_path=str(path))
    with grpc.insecure_channel(f"unix://{path}") as channel:
        yield agent, AgentStub(channel)


def test_the_original_api_over_grpc(grpc_agent, model_files):
    agent, stub = grpc_agent
    built = model_builder.add_model()
    loaded = stub.LoadModel(pb.LoadModelRequest(name="add", url=str(model_files["add"])))
    assert [m.name for m in loaded.model.input_tensor_metadatas] == [b"a", b"b"]
    inputs = built.sample_inputs(seed=4)
    request = pb.PredictRequest(name="add")
    for name, array in inputs.items():
        request.tensors.add(tensor_metadata=pb.TensorMetadata(
            name=name.encode(), data_type=pb.FLOAT32, shape=array.shape), byte_data=array.tobytes())
    reply = stub.Predict(request)
    out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
    np.testing.assert_allclose(out, built.reference(inputs)["sum"], rtol=1e-6)
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest()).models] == ["add"]
    # The framed socket sees the same core: the model loaded over gRPC is there too.
    with agent.client() as client:
        assert [m.name for m in client.list_models()] == ["add"]
    stub.UnLoadModel(pb.UnLoadModelRequest(name="add"))
    assert len(stub.ListModels(pb.ListModelsRequest()).models) == 0


def test_the_grpc_socket_gets_the_configured_mode(grpc_agent):
    agent, _ = grpc_agent
    path = agent.workdir.parent / "grpc.sock"
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)


def test_status_codes_over_grpc(grpc_agent, model_files):
    _, stub = grpc_agent
    with pytest.raises(grpc.RpcError) as info:
        stub.DescribeModel(pb.DescribeModelRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no model named 'nope'" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.LoadModel(pb.LoadModelRequest(name="bad_name", url=str(model_files["add"])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.LoadModel(pb.LoadModelRequest(name="add", url=str(model_files["add"])))
    with pytest.raises(grpc.RpcError) as info:
        stub.LoadModel(pb.LoadModelRequest(name="add", url=str(model_files["add"])))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(pb.PredictRequest(name="add", tensors=[pb.Tensor(byte_data=b"1")]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- the same answers as the framed socket, and HTTP/2 as a gRPC client uses it -------------

def _raw(channel, path: str):
    """A call that sends `path` whatever bytes it is given."""
    return channel.unary_unary(path, request_serializer=lambda body: body,
                               response_deserializer=lambda body: body)


def _grpc_error(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code().name, info.value.details()


def _framed_error(call, *args) -> tuple[str, str]:
    with pytest.raises(AgentError) as info:
        call(*args)
    return info.value.code.name, info.value.message


def test_failures_read_the_same_on_both_fronts(grpc_agent, model_files):
    agent, stub = grpc_agent
    channel = stub.channel
    stub.LoadModel(pb.LoadModelRequest(name="add", url=str(model_files["add"])))
    bad_tensor = pb.PredictRequest(name="add", tensors=[pb.Tensor(byte_data=b"1")])
    with agent.client() as client:
        cases = [
            (_grpc_error(stub.DescribeModel, pb.DescribeModelRequest(name="nope")),
             _framed_error(client.describe_model, "nope")),
            (_grpc_error(stub.LoadModel, pb.LoadModelRequest(name="bad_name", url="/x")),
             _framed_error(client.load_model, "bad_name", "/x")),
            (_grpc_error(stub.Predict, bad_tensor),
             _framed_error(client.call, Method.PREDICT, bad_tensor)),
            (_grpc_error(_raw(channel, f"/{SERVICE}/LoadModel"), b"\xff\xff\xff"),
             _framed_error(client.call, Method.LOAD_MODEL, _RawBody(b"\xff\xff\xff"))),
        ]
    for over_grpc, over_framed in cases:
        assert over_grpc == over_framed
    assert cases[0][0] == ("NOT_FOUND", "no model named 'nope' is loaded (loaded: add)")
    assert cases[3][0][0] == "INVALID_ARGUMENT" and "malformed LoadModel request" in cases[3][0][1]


def test_long_client_input_is_quoted_short_on_both_fronts(grpc_agent, model_files):
    """A 20000-character name or url is echoed as its first 128 characters and "...": the
    same code and message on both fronts, where an uncapped echo made the gRPC header too
    large for grpcio (RESOURCE_EXHAUSTED on the client's side) and cost the agent seconds of
    HPACK encoding."""
    agent, stub = grpc_agent
    long_name = "\u00e9" * 20000
    shown = "\u00e9" * 128 + "..."
    with agent.client() as client:
        cases = [
            (_grpc_error(stub.DescribeModel, pb.DescribeModelRequest(name=long_name)),
             _framed_error(client.describe_model, long_name)),
            (_grpc_error(stub.LoadModel, pb.LoadModelRequest(name=long_name, url="/x")),
             _framed_error(client.load_model, long_name, "/x")),
            (_grpc_error(stub.LoadModel, pb.LoadModelRequest(name="m", url="s3://" + long_name)),
             _framed_error(client.load_model, "m", "s3://" + long_name)),
            (_grpc_error(stub.UnLoadModel, pb.UnLoadModelRequest(name="a" * 20000)),
             _framed_error(client.unload_model, "a" * 20000)),
        ]
    for over_grpc, over_framed in cases:
        assert over_grpc == over_framed
    for over_grpc, _ in cases[:2]:
        assert over_grpc[0] == "INVALID_ARGUMENT"
        assert over_grpc[1].startswith(f"model name '{shown}' is not valid")
    assert cases[2][0] == ("INVALID_ARGUMENT", f"url 's3://{shown[:123]}...': only local paths "
                           "and file:// urls are supported")
    assert cases[3][0] == ("NOT_FOUND", f"no model named '{'a' * 128}...' is loaded "
                           "(loaded: none)")


def test_a_long_error_message_is_cut_in_grpc_message(grpc_agent):
    """What the service does not cap (here the unknown method's path, up to the header list
    limit) goes out as its first KiB and "...": a header grpcio accepts."""
    agent, stub = grpc_agent
    path = "/x/" + "%" * 5000  # 15000 bytes once percent-encoded, uncut
    code, details = _grpc_error(_raw(stub.channel, path), b"")
    assert code == "UNIMPLEMENTED"
    assert details == f"unknown method {path}"[:1024] + "..."
    assert len(stub.ListModels(pb.ListModelsRequest()).models) == 0  # still serving


def test_an_unknown_method_is_unimplemented(grpc_agent):
    agent, stub = grpc_agent
    for path in (f"/{SERVICE}/Retrain", "/some.Other/Predict"):
        assert _grpc_error(_raw(stub.channel, path), b"") == (
            "UNIMPLEMENTED", f"unknown method {path}")
    with agent.client() as client:
        assert _framed_error(client.call, 99, pb.ListModelsRequest()) == (
            "UNIMPLEMENTED", "unknown method 99")
    assert len(stub.ListModels(pb.ListModelsRequest()).models) == 0  # still serving


def test_an_oversized_message_is_refused_and_the_channel_keeps_serving(start_agent, tmp_path):
    path = tmp_path / "grpc.sock"
    start_agent(edge_agent_grpc_socket_path=str(path), edge_agent_max_frame_bytes=65536)
    with grpc.insecure_channel(f"unix://{path}") as channel:
        stub = AgentStub(channel)
        request = pb.LoadModelRequest(name="m", url="x" * 100_000)
        code, details = _grpc_error(stub.LoadModel, request)
        assert code == "RESOURCE_EXHAUSTED"
        assert details == (f"message of {request.ByteSize()} bytes exceeds the limit of "
                           "65536 bytes")
        assert len(stub.ListModels(pb.ListModelsRequest()).models) == 0


def test_a_compressed_message_is_unimplemented(grpc_agent):
    agent, _ = grpc_agent
    path = agent.workdir.parent / "grpc.sock"
    with grpc.insecure_channel(f"unix://{path}", compression=grpc.Compression.Gzip) as channel:
        code, details = _grpc_error(AgentStub(channel).DescribeModel,
                                    pb.DescribeModelRequest(name="m" * 1000))
    assert code == "UNIMPLEMENTED" and "compressed messages are not supported" in details


def test_large_messages_both_ways(start_agent, tmp_path):
    """8 MiB in, 4 MiB out: many times the HTTP/2 windows, so flow control has to work."""
    path = tmp_path / "grpc.sock"
    start_agent(edge_agent_grpc_socket_path=str(path))
    built = model_builder.add_model((1, 1 << 20))
    model = built.write(tmp_path / "big.tflite")
    inputs = built.sample_inputs(seed=1)
    with grpc.insecure_channel(f"unix://{path}", options=[
            ("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = AgentStub(channel)
        stub.LoadModel(pb.LoadModelRequest(name="big", url=str(model)))
        reply = stub.Predict(_predict_request("big", inputs))
    out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 1 << 20)
    np.testing.assert_allclose(out, built.reference(inputs)["sum"], rtol=1e-6)


def test_concurrent_calls_on_one_connection(grpc_agent, model_files):
    """Calls from many threads share one HTTP/2 connection (grpcio multiplexes them)."""
    _, stub = grpc_agent
    built = model_builder.add_model()
    stub.LoadModel(pb.LoadModelRequest(name="add", url=str(model_files["add"])))

    def worker(seed):
        def run():
            for i in range(20):
                inputs = built.sample_inputs(seed=seed * 100 + i)
                reply = stub.Predict(_predict_request("add", inputs))
                out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
                np.testing.assert_allclose(out, built.reference(inputs)["sum"], rtol=1e-6)
        return run

    run_concurrently(*(worker(seed) for seed in range(12)))


def test_predictions_on_two_models_run_in_parallel_through_grpc(start_agent, tmp_path,
                                                               model_files, recording_delegate):
    """Proven by construction: the test delegate runs each model's ADD only once two invokes
    are inside it at the same time (a barrier), and fails an invoke left alone there. Both
    calls succeed only if the gRPC front ran them at once."""
    path = tmp_path / "grpc.sock"
    record = tmp_path / "delegate-record.txt"
    start_agent(edge_agent_grpc_socket_path=str(path), edge_agent_delegate="external",
                edge_agent_delegate_library=recording_delegate,
                edge_agent_delegate_options={"rendezvous": 2, "rendezvous_seconds": 60,
                                             "record_to": str(record)})
    built = model_builder.add_model()
    with grpc.insecure_channel(f"unix://{path}") as channel:
        stub = AgentStub(channel)
        for name in ("left", "right"):
            stub.LoadModel(pb.LoadModelRequest(name=name, url=str(model_files["add"])))
        # Each model's ADD is the barrier's: taken in the agent and in its check process.
        assert record.read_text().count("took 1 node(s)") == 4

        def predict(name, seed):
            def run():
                inputs = built.sample_inputs(seed=seed)
                reply = stub.Predict(_predict_request(name, inputs))
                out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
                np.testing.assert_allclose(out, built.reference(inputs)["sum"], rtol=1e-6)
            return run

        run_concurrently(predict("left", 1), predict("right", 2))
    # tests/integration/test_delegates.py shows the control: an invoke alone at the barrier fails.


def test_a_client_that_goes_away_mid_call_harms_nobody(grpc_agent, tmp_path):
    agent, stub = grpc_agent
    slow = model_builder.slow_model(batch=64).write(tmp_path / "slow.tflite")
    stub.LoadModel(pb.LoadModelRequest(name="slow", url=str(slow)))
    request = pb.PredictRequest(name="slow")
    request.tensors.add(byte_data=np.ones((64, 1024), np.float32).tobytes())
    path = agent.workdir.parent / "grpc.sock"
    for _ in range(3):
        channel = grpc.insecure_channel(f"unix://{path}",
                                        options=[("grpc.use_local_subchannel_pool", 1)])
        future = AgentStub(channel).Predict.future(request)
        future.cancel()  # the stream is reset, maybe while the prediction runs
        channel.close()  # and the connection goes
    assert len(stub.Predict(request).tensors) == 1
    assert agent.alive(), agent.log()


def test_the_connection_limit_holds_for_grpc(start_agent, tmp_path):
    """One connection over the limit gets the framed socket's answer, and its client does not
    spin reconnecting; a place given back is taken again."""
    path = tmp_path / "grpc.sock"
    agent = start_agent(edge_agent_grpc_socket_path=str(path), edge_agent_max_connections=1)
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of each channel's own
    with grpc.insecure_channel(f"unix://{path}", options=options) as first:
        AgentStub(first).ListModels(pb.ListModelsRequest(), timeout=30)
        with grpc.insecure_channel(f"unix://{path}", options=options) as second:
            over_grpc = _grpc_error(AgentStub(second).ListModels, pb.ListModelsRequest(),
                                    timeout=30)
        with agent.client() as framed, agent.client() as over:
            framed.list_models()
            over_framed = _framed_error(over.list_models)
    assert over_grpc == over_framed == (
        "RESOURCE_EXHAUSTED", "too many clients (edge_agent_max_connections is 1); try again later")
    with grpc.insecure_channel(f"unix://{path}", options=options) as third:
        wait_for(lambda: _lists(third), what="a place given back")


def _lists(channel) -> bool:
    try:
        AgentStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
        return True
    except grpc.RpcError:
        return False


def _predict_request(name: str, inputs: dict) -> pb.PredictRequest:
    request = pb.PredictRequest(name=name)
    for tensor_name, array in inputs.items():
        request.tensors.add(tensor_metadata=pb.TensorMetadata(
            name=tensor_name.encode(), data_type=pb.FLOAT32, shape=array.shape),
            byte_data=array.tobytes())
    return request
