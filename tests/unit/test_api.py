"""The one RPC table and Api.serve, the one place a body is decoded (once, by its row's codec)
and a call's failure becomes a status code."""
from __future__ import annotations

import logging

import pytest

from edge_agent import agent_pb2 as pb
from edge_agent import config
from edge_agent.api import rpcs as api
from edge_agent.errors import StatusCode
from edge_agent.api.rpcs import Method
from edge_agent.api.service import AgentService
from edge_agent.api.caller import IN_PROCESS
from edge_agent.api.codecs import PredictCodec
from edge_agent.protocol import predict_codec


@pytest.fixture
def service(tmp_path):
    s = AgentService(config.from_mapping({
        "edge_agent_socket_path": str(tmp_path / "unused.sock"),
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))
    yield s
    s.close()


def test_the_table_is_agent_proto_and_the_framed_methods():
    service = pb.DESCRIPTOR.services_by_name["Agent"]
    assert {rpc.name for rpc in api.RPCS} == {m.name for m in service.methods}
    for rpc in api.RPCS:
        method = service.methods_by_name[rpc.name]
        assert rpc.request_type.DESCRIPTOR is method.input_type
        assert rpc.response_type.DESCRIPTOR is method.output_type
        assert rpc.grpc_path == f"/AWS.SageMaker.Edge.Agent/{rpc.name}"
        assert callable(getattr(AgentService, rpc.handler))
    assert set(api.BY_METHOD) == set(Method)  # every wire number served, none twice


def test_invoke_answers_and_maps_failures(service, model_files):
    bound = api.Api(service)
    load = api.BY_METHOD[Method.LOAD_MODEL]
    code, reply = bound.serve(load, pb.LoadModelRequest(
        name="add", url=str(model_files["add"])).SerializeToString(), IN_PROCESS)
    assert code == StatusCode.OK
    assert pb.LoadModelResponse.FromString(reply).model.name == "add"
    assert bound.serve(load, pb.LoadModelRequest(name="add", url=str(model_files["add"]))
                        .SerializeToString(), IN_PROCESS) == (
        StatusCode.ALREADY_EXISTS, "a model named 'add' is loaded; unload it first")
    assert bound.serve(load, b"\xff\xff\xff", IN_PROCESS) == (
        StatusCode.INVALID_ARGUMENT,
        "malformed LoadModel request: the body is not a LoadModelRequest message")
    assert api.unknown_method(99) == (StatusCode.UNIMPLEMENTED, "unknown method 99")


def test_a_fault_of_the_agent_is_internal_and_logged_with_its_traceback(service, monkeypatch,
                                                                        caplog):
    def broken(request, caller):
        raise KeyError("injected")

    monkeypatch.setattr(service, "list_models", broken)  # bound by Api below
    bound = api.Api(service)
    with caplog.at_level(logging.ERROR, logger="edge_agent.api.rpcs"):
        code, message = bound.serve(api.BY_METHOD[Method.LIST_MODELS], b"", IN_PROCESS)
    assert (code, message) == (StatusCode.INTERNAL,
                               "internal error in ListModels: KeyError: 'injected'")
    [record] = caplog.records
    assert record.exc_info is not None and "ListModels failed" in record.getMessage()


class RecordingService:
    """Every handler of the table, recording what Api.serve hands it: Predict's answers the
    reply bytes it would have written, the others their row's empty response."""

    def __init__(self):
        self.requests: list = []

    def __getattr__(self, handler):
        rpc = next(r for r in api.RPCS if r.handler == handler)

        def serve(request, caller):
            self.requests.append((handler, request))
            return b"written" if rpc.method == Method.PREDICT else rpc.response_type()
        return serve


class CountingWire:
    """The wire codec, counting the bodies it is asked to read."""

    def __init__(self):
        self.reads = 0

    def decode_request(self, body):
        self.reads += 1
        return predict_codec.decode_request(body)


def test_predict_is_a_row_decoded_once_by_its_codec_fast_or_left_to_upb():
    wire = CountingWire()
    table = tuple(rpc._replace(codec=PredictCodec(wire)) if rpc.method == Method.PREDICT else rpc
                  for rpc in api.RPCS)
    service = RecordingService()
    bound = api.Api(service, rpcs=table)
    predict = api.BY_METHOD[Method.PREDICT]
    request = pb.PredictRequest(name="m", tensors=[pb.Tensor(
        tensor_metadata=pb.TensorMetadata(name=b"x", data_type=pb.FLOAT32, shape=[1, 4]),
        byte_data=bytes(range(16)))])
    body = request.SerializeToString()
    unusual = body + b"\xa0\x1f\x07"  # a field this version does not know: left to upb
    assert predict_codec.decode_request(unusual) is None
    assert bound.serve(predict, body, IN_PROCESS) == (StatusCode.OK, b"written")
    assert bound.serve(predict, unusual, IN_PROCESS) == (StatusCode.OK, b"written")
    assert wire.reads == 2  # one read a call; upb read the second, once, in the codec
    (_, fast), (_, upb) = service.requests
    assert fast[0] == upb[0] == "m" and fast[2] == upb[2] == []
    assert [t._replace(data=bytes(t.data)) for t in fast[1]] == \
        [t._replace(data=bytes(t.data)) for t in upb[1]]
    assert bound.serve(predict, b"\xff\xff\xff", IN_PROCESS) == (
        StatusCode.INVALID_ARGUMENT,
        "malformed Predict request: the body is not a PredictRequest message")
    assert len(service.requests) == 2  # a body neither reads is never served
    assert bound.serve(api.BY_METHOD[Method.LIST_MODELS], b"", IN_PROCESS) == (StatusCode.OK, b"")
    assert service.requests[-1] == ("list_models", pb.ListModelsRequest())
