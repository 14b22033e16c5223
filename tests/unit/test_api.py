"""The one RPC table and Api.invoke, the one place a call's failure becomes a status code."""
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
