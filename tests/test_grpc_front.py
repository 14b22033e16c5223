"""The gRPC front: an application written for the original agent's gRPC API, unchanged."""
from __future__ import annotations

import os

import grpc
import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent import model_builder
from edge_agent.api import GRPC_SERVICE as SERVICE


class AgentStub:
    """What generated gRPC stubs of agent.proto do, spelled out with the generic API."""

    def __init__(self, channel):
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
