"""edge_agent.client without a socket or an agent: AgentClient's calls made from the RPC table,
over an InMemoryTransport to a scripted Api (FakeApi below), so what the client sends and how it
reads every kind of reply is seen byte for byte. The same client against the real service is
tests/unit/test_service.py's; over the socket, tests/integration/test_client_transport.py's."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.api.caller import IN_PROCESS, Caller
from edge_agent.api.codecs import UPB_ONLY
from edge_agent.api.rpcs import BY_METHOD, RPCS, Method, Outcome, unknown_method
from edge_agent.client import AgentCalls, AgentClient, InMemoryTransport, ModelInfo
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import _predict_py
from edge_agent.protocol.tensors import BYTE_DATA, Handle, add_tensor
from edge_agent.shm_client import ShmTensor

try:
    from edge_agent.protocol import _predict as compiled
except ImportError:  # a checkout without a build: only the twin is tested
    compiled = None

CODECS = {"python": _predict_py, "upb": UPB_ONLY}
if compiled is not None:
    CODECS["compiled"] = compiled


class FakeApi:
    """What InMemoryTransport calls (Api.serve, Api.unknown), scripted: each call is recorded
    as (rpc name, body bytes, caller) and answered by `answer(rpc, body, caller)`, by default
    with the row's empty response."""

    def __init__(self, answer=None):
        self.calls: list[tuple[str, bytes, Caller]] = []
        self.answer = answer or (lambda rpc, body, caller: Outcome(
            StatusCode.OK, rpc.response_type().SerializeToString()))

    def serve(self, rpc, body, caller) -> Outcome:
        self.calls.append((rpc.name, bytes(body), caller))
        return self.answer(rpc, body, caller)

    def unknown(self, method) -> Outcome:
        self.calls.append(("unknown", b"", IN_PROCESS))
        return unknown_method(method)


def client_of(api: FakeApi, caller: Caller = IN_PROCESS) -> AgentClient:
    return AgentClient(transport=InMemoryTransport(api, caller))


@pytest.fixture(params=sorted(CODECS))
def predict_codec(request, monkeypatch):
    """The client's Predict on each wire codec in turn, and on upb alone."""
    monkeypatch.setattr(BY_METHOD[Method.PREDICT].codec, "wire", CODECS[request.param])
    return CODECS[request.param]


def test_every_row_of_the_table_is_a_call_named_as_its_handler():
    for rpc in RPCS:
        call = getattr(AgentCalls, rpc.handler)
        assert call.__name__ == rpc.handler and rpc.name in call.__doc__
    api = FakeApi()
    with client_of(api) as client:
        for rpc in RPCS:
            if rpc.method != Method.PREDICT:
                reply = getattr(client.rpc, rpc.handler)(rpc.request_type())
                assert isinstance(reply, rpc.response_type)
    assert [name for name, _, _ in api.calls] == [rpc.name for rpc in RPCS
                                                  if rpc.method != Method.PREDICT]


def test_the_typed_calls_send_the_requests_agent_proto_says():
    model = pb.Model(name="m", url="/m", input_tensor_metadatas=[
        pb.TensorMetadata(name=b"x", data_type=pb.FLOAT32, shape=[-1, 4])])
    replies = {"LoadModel": pb.LoadModelResponse(model=model),
               "DescribeModel": pb.DescribeModelResponse(model=model),
               "ListModels": pb.ListModelsResponse(models=[model]),
               "GetCaptureDataStatus": pb.GetCaptureDataStatusResponse(
                   status=pb.FAILURE, reason="disk full"),
               "Rollback": pb.RollbackResponse(model=model)}
    api = FakeApi(lambda rpc, body, caller: Outcome(StatusCode.OK, replies.get(
        rpc.name, rpc.response_type()).SerializeToString()))
    with client_of(api) as client:
        info = client.load_model("m", "/m")
        assert info == ModelInfo.from_pb(model) and info.inputs[0].shape == (-1, 4)
        assert client.describe_model("m") == info
        assert client.list_models() == [info]
        assert [m.name for m in client.model_states()] == ["m"]
        client.unload_model("m")
        assert client.capture_data_status("c1") == ("FAILURE", "disk full")
        assert client.rollback("m", "2").name == "m"
        client.unpin("m")
        assert client.rescan() == []
    sent = [(name, BY_METHOD[next(r.method for r in RPCS if r.name == name)].request_type
             .FromString(body)) for name, body, _ in api.calls]
    assert sent == [
        ("LoadModel", pb.LoadModelRequest(name="m", url="/m")),
        ("DescribeModel", pb.DescribeModelRequest(name="m")),
        ("ListModels", pb.ListModelsRequest()),
        ("ListModels", pb.ListModelsRequest(include_repository=True)),
        ("UnLoadModel", pb.UnLoadModelRequest(name="m")),
        ("GetCaptureDataStatus", pb.GetCaptureDataStatusRequest(capture_id="c1")),
        ("Rollback", pb.RollbackRequest(name="m", version="2")),
        ("Unpin", pb.UnpinRequest(name="m")),
        ("Rescan", pb.RescanRequest()),
    ]


def test_a_failed_call_raises_the_agents_code_and_message():
    api = FakeApi(lambda rpc, body, caller: Outcome(StatusCode.NOT_FOUND, "no model named 'x'"))
    with client_of(api) as client:
        with pytest.raises(AgentError) as info:
            client.describe_model("x")
        assert (info.value.code, info.value.message) == (StatusCode.NOT_FOUND,
                                                         "no model named 'x'")
        api.answer = lambda rpc, body, caller: Outcome(12345, "from a newer agent")
        with pytest.raises(AgentError) as info:
            client.list_models()
        assert info.value.code == StatusCode.UNKNOWN  # a code this version does not know
        with pytest.raises(AgentError) as info:  # not in the table: sent, the agent answers
            client.call(99, pb.ListModelsRequest(), pb.ListModelsResponse)
        assert (info.value.code, info.value.message) == (StatusCode.UNIMPLEMENTED,
                                                         "unknown method 99")


def test_descriptors_and_the_caller_reach_the_service():
    api = FakeApi()
    stranger = Caller(os.getpid(), 65534, 65534)
    read, write = os.pipe()
    try:
        with client_of(api, stranger) as client:
            with open(read, "rb", closefd=False) as model:
                client.load_model_from_file("m", model)
            client.list_models()
    finally:
        os.close(read)
        os.close(write)
    (_, body, caller), (_, _, plain) = api.calls
    assert pb.LoadModelRequest.FromString(body) == pb.LoadModelRequest(name="m", url="fd:0")
    assert caller == Caller(os.getpid(), 65534, 65534, fds=(read,))
    assert plain is stranger  # no descriptors: the transport's caller as it is


def _reply(*tensors: tuple) -> bytes:
    response = pb.PredictResponse()
    for tensor in tensors:
        add_tensor(response.tensors, *tensor)
    return response.SerializeToString()


def test_predict_sends_the_request_upb_would_and_reads_the_reply(predict_codec):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = np.arange(3, dtype=np.int64)
    reply = _reply((b"scores", pb.FLOAT32, [2, 4], (x * 2).tobytes()),
                   (b"ids", pb.INT64, [3], y.tobytes()))
    api = FakeApi(lambda rpc, body, caller: Outcome(StatusCode.OK, reply))
    with client_of(api) as client:
        by_name = client.predict("m", {"x": x, "y": y})
        by_position = client.predict("m", [x[:, ::-1].copy()[:, ::-1], y])  # not C order
    assert list(by_name) == ["scores", "ids"]
    np.testing.assert_array_equal(by_name["scores"], x * 2)
    np.testing.assert_array_equal(by_name["ids"], y)
    assert by_name["ids"].dtype == np.int64 and not by_name["scores"].flags.writeable
    assert isinstance(by_position, OrderedDict) and list(by_position) == ["scores", "ids"]
    (name, first, _), (_, second, _) = api.calls
    assert name == "Predict"
    expected = pb.PredictRequest(name="m")
    add_tensor(expected.tensors, b"x", pb.FLOAT32, [2, 4], x.tobytes())
    add_tensor(expected.tensors, b"y", pb.INT64, [3], y.tobytes())
    assert first == expected.SerializeToString()  # byte for byte what upb writes
    for tensor in expected.tensors:
        tensor.tensor_metadata.name = b""
    assert pb.PredictRequest.FromString(second) == expected


def test_a_reply_the_codec_leaves_to_upb_is_read_by_upb(predict_codec):
    x = np.ones((1, 4), np.float32)
    # tensor_metadata in two parts, which upb merges (the wire codec leaves it to upb), and a
    # field this version does not know.
    merged = (b"\x0a" + bytes([len(part := pb.Tensor(
        tensor_metadata=pb.TensorMetadata(name=b"y")).SerializeToString()
        + pb.Tensor(tensor_metadata=pb.TensorMetadata(data_type=pb.FLOAT32, shape=[1, 4]),
                    byte_data=x.tobytes()).SerializeToString())]) + part + b"\xa0\x1f\x07")
    assert _predict_py.decode_response(merged) is None
    api = FakeApi(lambda rpc, body, caller: Outcome(StatusCode.OK, merged))
    with client_of(api) as client:
        np.testing.assert_array_equal(client.predict("m", [x])["y"], x)


def test_predict_into_shared_memory_names_the_segments_and_passes_descriptors(predict_codec):
    memfd = ShmTensor(0, 64, 0, np.float32, (1, 4), fd=7)  # no name: passed as descriptor 0
    sysv = ShmTensor(42, 0, 0, np.float32, (1, 4))
    written = Handle(16, 64, 0, "", 0)

    def answer(rpc, body, caller):
        request = pb.PredictRequest.FromString(body)
        assert [h.fd_index for h in request.output_handles] == [0]
        assert request.tensors[0].shared_memory_handle.segment_id == 42
        return Outcome(StatusCode.OK, _reply((b"y", pb.FLOAT32, [1, 4], written)))

    api = FakeApi(answer)
    with client_of(api) as client:
        outputs = client.predict("m", [sysv], outputs=[memfd])
    (_, _, caller), = api.calls
    assert caller.fds == (7,)
    # A descriptor's index means nothing outside the call: named as it was sent.
    assert (outputs["y"].fd, outputs["y"].offset, outputs["y"].shape) == (7, 64, (1, 4))


def test_calls_from_several_threads_take_turns():
    """The transport is never entered twice at once, whatever the threads do: a second thread
    inside would find the semaphore taken (threads released together by a barrier)."""
    inside = threading.Semaphore(1)
    overlapped: list[str] = []

    def answer(rpc, body, caller):
        if not inside.acquire(blocking=False):
            overlapped.append(rpc.name)
        try:
            return Outcome(StatusCode.OK, b"")
        finally:
            inside.release()

    api = FakeApi(answer)
    barrier = threading.Barrier(4)
    with client_of(api) as client:
        def calls():
            barrier.wait()
            for _ in range(200):
                client.list_models()

        threads = [threading.Thread(target=calls) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert overlapped == [] and len(api.calls) == 800


def test_the_in_memory_transport_serves_the_real_api_as_the_fronts_do(in_process, model_files):
    """The table's codec on both sides: the service decodes what the client encoded."""
    x = np.ones((1, 4), np.float32)
    with in_process.client() as client:
        client.load_model("add", str(model_files["add"]))
        np.testing.assert_array_equal(client.predict("add", {"a": x, "b": x})["sum"], x * 2)
        reply = client.rpc.predict_call(("add", [(b"a", pb.FLOAT32, (1, 4), x),
                                                 (b"b", pb.FLOAT32, (1, 4), x)], []))
        [tensor] = reply
        assert (tensor.name, tensor.kind, bytes(tensor.data)) == (b"sum", BYTE_DATA,
                                                                  (x * 2).tobytes())
