"""The one RPC table of service Agent, and the one place where a call's failure becomes a
status code and a message.

Both fronts (the framed socket, edge_agent.transport.framed_front; gRPC,
edge_agent.transport.grpc_front) and the client (edge_agent.client) are built from RPCS: a new
RPC is one row here and one method of AgentService. The method numbers live here, not in the
framed protocol, which carries them as numbers. Each row's codec says how its body is read and
its reply written (edge_agent.api.codecs): Api.serve decodes a body once, with it, whichever
front it came through. A leaf module: it knows the protobuf types, the codecs and the errors,
not the service (bound by Api) nor any transport.
"""
from __future__ import annotations

import enum
import logging
from typing import Any, Callable, Iterable, NamedTuple, Protocol

from google.protobuf.message import DecodeError, Message

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.caller import Caller
from edge_agent.api.codecs import PredictCodec, ProtobufCodec, written

log = logging.getLogger(__name__)


class Method(enum.IntEnum):
    """Method numbers: an RPC's number on the framed socket (in each frame's header)."""
    PREDICT = 1
    LOAD_MODEL = 2
    UNLOAD_MODEL = 3
    LIST_MODELS = 4
    DESCRIBE_MODEL = 5
    CAPTURE_DATA = 6
    GET_CAPTURE_DATA_STATUS = 7
    GET_METRICS = 100  # an extension: numbered from 100, as its messages' fields are
    RESCAN = 101  # the model repository's (docs/MODEL_LIFECYCLE.md)
    ROLLBACK = 102
    UNPIN = 103


# The gRPC service name of agent.proto (package AWS.SageMaker.Edge, service Agent).
GRPC_SERVICE = "AWS.SageMaker.Edge.Agent"


class Codec(Protocol):
    """A row's codec (edge_agent.api.codecs): decode_request raises DecodeError for a body
    that is not the row's request."""

    def decode_request(self, body: bytes | memoryview, /) -> Any: ...
    def encode_response(self, response: Any, /) -> bytes: ...
    def encode_request(self, request: Any, /) -> bytes: ...
    def decode_response(self, body: bytes | memoryview, /) -> Any: ...


class Rpc(NamedTuple):
    method: Method  # its number on the framed socket
    name: str  # its name in agent.proto and on gRPC (/AWS.SageMaker.Edge.Agent/<name>)
    request_type: type[Message]
    response_type: type[Message]
    handler: str  # the AgentService method that serves it (and the client's call: client.rpc)
    # How its body is read and its reply written, on the agent's side and the client's
    # (edge_agent.api.codecs): protobuf, or for Predict the wire codec with upb as fallback.
    codec: Codec

    @property
    def grpc_path(self) -> str:
        return f"/{GRPC_SERVICE}/{self.name}"


def _protobuf(method: Method, name: str, request_type: type[Message],
              response_type: type[Message], handler: str) -> Rpc:
    return Rpc(method, name, request_type, response_type, handler,
               ProtobufCodec(request_type, response_type))


RPCS: tuple[Rpc, ...] = (
    # Handler predict_call: (model name, [WireTensor], [Handle]) in, the reply's bytes out.
    Rpc(Method.PREDICT, "Predict", pb.PredictRequest, pb.PredictResponse, "predict_call",
        PredictCodec()),
    _protobuf(Method.LOAD_MODEL, "LoadModel", pb.LoadModelRequest, pb.LoadModelResponse,
              "load_model"),
    _protobuf(Method.UNLOAD_MODEL, "UnLoadModel", pb.UnLoadModelRequest, pb.UnLoadModelResponse,
              "unload_model"),
    _protobuf(Method.LIST_MODELS, "ListModels", pb.ListModelsRequest, pb.ListModelsResponse,
              "list_models"),
    _protobuf(Method.DESCRIBE_MODEL, "DescribeModel", pb.DescribeModelRequest,
              pb.DescribeModelResponse, "describe_model"),
    _protobuf(Method.CAPTURE_DATA, "CaptureData", pb.CaptureDataRequest, pb.CaptureDataResponse,
              "capture_data"),
    _protobuf(Method.GET_CAPTURE_DATA_STATUS, "GetCaptureDataStatus",
              pb.GetCaptureDataStatusRequest, pb.GetCaptureDataStatusResponse,
              "get_capture_data_status"),
    # Extensions of service Agent (method numbers from 100).
    _protobuf(Method.GET_METRICS, "GetMetrics", pb.GetMetricsRequest, pb.GetMetricsResponse,
              "get_metrics"),
    _protobuf(Method.RESCAN, "Rescan", pb.RescanRequest, pb.RescanResponse, "rescan"),
    _protobuf(Method.ROLLBACK, "Rollback", pb.RollbackRequest, pb.RollbackResponse, "rollback"),
    _protobuf(Method.UNPIN, "Unpin", pb.UnpinRequest, pb.UnpinResponse, "unpin"),
)
BY_METHOD: dict[int, Rpc] = {rpc.method: rpc for rpc in RPCS}
BY_GRPC_PATH: dict[str, Rpc] = {rpc.grpc_path: rpc for rpc in RPCS}


class Outcome(NamedTuple):
    """A call's result: OK and the serialized response, or a failure code and its message."""
    code: StatusCode
    reply: bytes | str  # the serialized response when OK, else the error message


def _not_counted(rpc: str, code: int) -> None:
    pass


class Api:
    """The RPCs bound to one AgentService for one front: per method, the row's decode, the
    handler and the row's encode, looked up once, not per call; every call's outcome counted
    by `count(rpc name, code)` (the front's counter of edge_agent.observe.metrics), here, where
    every outcome passes. `rpcs`: the table (tests pass one whose Predict codec differs)."""

    def __init__(self, service: Any,
                 count: Callable[[str, int], None] = _not_counted,
                 rpcs: Iterable[Rpc] = RPCS):
        self._bound: dict[int, tuple[Callable, Callable]] = {
            rpc.method: (rpc.codec.decode_request,
                         _replying(getattr(service, rpc.handler), rpc.codec.encode_response))
            for rpc in rpcs}
        self.count = count

    def unknown(self, method: object) -> Outcome:
        """The reply to a method this agent does not serve, counted as rpc "unknown"."""
        self.count("unknown", StatusCode.UNIMPLEMENTED)
        return unknown_method(method)

    def serve(self, rpc: Rpc, body: bytes | memoryview, caller: Caller) -> Outcome:
        """Decode (once: the row's codec), serve, encode, count; never raises for a bad
        request or a failed call.

        A failed call is logged here, so it is logged the same way whichever front it came
        through."""
        decode, reply = self._bound[rpc.method]
        try:
            request = decode(body)
        except DecodeError:
            log.debug("%s failed: malformed request from pid %d", rpc.name, caller.pid)
            outcome = Outcome(
                StatusCode.INVALID_ARGUMENT,
                f"malformed {rpc.name} request: the body is not a "
                f"{rpc.request_type.__name__} message")
        else:
            try:
                outcome = Outcome(StatusCode.OK, reply(request, caller))
            except Exception as e:
                outcome = self.failure(rpc, e)
        self.count(rpc.name, outcome.code)
        return outcome

    @staticmethod
    def failure(rpc: Rpc, error: Exception) -> Outcome:
        """The outcome of a call of `rpc` that raised `error` (an AgentError: its code and
        message; anything else is a fault of ours, logged whole, INTERNAL), logged here so
        every front's failures read alike. Also the framed front's inline Predicts' one
        failure path (edge_agent.transport.inline_predicts)."""
        if isinstance(error, AgentError):
            log.debug("%s failed: %s", rpc.name, error)
            return Outcome(error.code, error.message)
        log.error("%s failed with an internal error", rpc.name, exc_info=error)
        return Outcome(StatusCode.INTERNAL,
                       f"internal error in {rpc.name}: {type(error).__name__}: {error}")


def _replying(handler: Callable, encode: Callable[[Any], bytes]) -> Callable:
    """handler(request, caller), then the row's encoder: the reply's bytes. A handler that
    writes its reply itself (its codec's encode_response is codecs.written) is called alone."""
    if encode is written:
        return handler

    def reply(request: Any, caller: Caller) -> bytes:
        return encode(handler(request, caller))
    return reply


def unknown_method(method: object) -> Outcome:
    """The reply to a method this agent does not serve (a newer client's, or a typo)."""
    return Outcome(StatusCode.UNIMPLEMENTED, f"unknown method {method}")
