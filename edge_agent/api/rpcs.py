"""The one RPC table of service Agent, and the one place where a call's failure becomes a
status code and a message.

Both fronts (the framed socket, edge_agent.transport.framed_front; gRPC,
edge_agent.transport.grpc_front) and the client (edge_agent.client) are built from RPCS: a new
RPC is one row here and one method of AgentService. The method numbers live here, not in the
framed protocol, which carries them as numbers. A leaf module: it knows the protobuf types and
the errors, not the service (bound by Api) nor any transport.
"""
from __future__ import annotations

import enum
import logging
from typing import Any, Callable, NamedTuple

from google.protobuf.message import DecodeError, Message

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.caller import Caller

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


class Rpc(NamedTuple):
    method: Method  # its number on the framed socket
    name: str  # its name in agent.proto and on gRPC (/AWS.SageMaker.Edge.Agent/<name>)
    request_type: type[Message]
    response_type: type[Message]
    handler: str  # the AgentService method that serves it

    @property
    def grpc_path(self) -> str:
        return f"/{GRPC_SERVICE}/{self.name}"


RPCS: tuple[Rpc, ...] = (
    Rpc(Method.PREDICT, "Predict", pb.PredictRequest, pb.PredictResponse, "predict"),
    Rpc(Method.LOAD_MODEL, "LoadModel", pb.LoadModelRequest, pb.LoadModelResponse, "load_model"),
    Rpc(Method.UNLOAD_MODEL, "UnLoadModel", pb.UnLoadModelRequest, pb.UnLoadModelResponse,
        "unload_model"),
    Rpc(Method.LIST_MODELS, "ListModels", pb.ListModelsRequest, pb.ListModelsResponse,
        "list_models"),
    Rpc(Method.DESCRIBE_MODEL, "DescribeModel", pb.DescribeModelRequest,
        pb.DescribeModelResponse, "describe_model"),
    Rpc(Method.CAPTURE_DATA, "CaptureData", pb.CaptureDataRequest, pb.CaptureDataResponse,
        "capture_data"),
    Rpc(Method.GET_CAPTURE_DATA_STATUS, "GetCaptureDataStatus", pb.GetCaptureDataStatusRequest,
        pb.GetCaptureDataStatusResponse, "get_capture_data_status"),
    # Extensions of service Agent (method numbers from 100).
    Rpc(Method.GET_METRICS, "GetMetrics", pb.GetMetricsRequest, pb.GetMetricsResponse,
        "get_metrics"),
    Rpc(Method.RESCAN, "Rescan", pb.RescanRequest, pb.RescanResponse, "rescan"),
    Rpc(Method.ROLLBACK, "Rollback", pb.RollbackRequest, pb.RollbackResponse, "rollback"),
    Rpc(Method.UNPIN, "Unpin", pb.UnpinRequest, pb.UnpinResponse, "unpin"),
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
    """The RPCs bound to one AgentService for one front: handlers looked up once, not per
    call; every call's outcome counted by `count(rpc name, code)` (the front's counter of
    edge_agent.observe.metrics), here, where every outcome passes."""

    def __init__(self, service: Any,
                 count: Callable[[str, int], None] = _not_counted):
        self._handlers: dict[int, Callable] = {
            rpc.method: getattr(service, rpc.handler) for rpc in RPCS}
        # Predict from wire bytes to wire bytes, without protobuf objects (the hot path);
        # it answers None for a body it leaves to the table's handler.
        self._predict_wire: Callable | None = getattr(service, "predict_wire", None)
        self._count = count

    def unknown(self, method: object) -> Outcome:
        """The reply to a method this agent does not serve, counted as rpc "unknown"."""
        self._count("unknown", StatusCode.UNIMPLEMENTED)
        return unknown_method(method)

    def serve(self, rpc: Rpc, body: bytes | memoryview, caller: Caller) -> Outcome:
        """Decode, serve, encode, count; never raises for a bad request or a failed call.

        A failed call is logged here, so it is logged the same way whichever front it came
        through."""
        predict_wire = self._predict_wire
        if rpc.method == Method.PREDICT and predict_wire is not None:
            outcome = self._serve_wire(predict_wire, rpc, body, caller)
        else:
            outcome = self._serve(rpc, body, caller)
        self._count(rpc.name, outcome.code)
        return outcome

    def _serve_wire(self, predict_wire: Callable, rpc: Rpc, body: bytes | memoryview,
                    caller: Caller) -> Outcome:
        try:
            reply = predict_wire(body, caller)
        except AgentError as e:
            log.debug("%s failed: %s", rpc.name, e)
            return Outcome(e.code, e.message)
        except Exception as e:  # a fault of ours: report it, keep serving
            return self._internal(rpc, e)
        if reply is None:  # unusual: protobuf decodes it (the reference)
            return self._serve(rpc, body, caller)
        return Outcome(StatusCode.OK, reply)

    def _serve(self, rpc: Rpc, body: bytes | memoryview, caller: Caller) -> Outcome:
        try:
            request = rpc.request_type.FromString(body)
        except DecodeError:
            log.debug("%s failed: malformed request from pid %d", rpc.name, caller.pid)
            return Outcome(
                StatusCode.INVALID_ARGUMENT,
                f"malformed {rpc.name} request: the body is not a "
                f"{rpc.request_type.__name__} message")
        try:
            response = self._handlers[rpc.method](request, caller)
        except AgentError as e:
            log.debug("%s failed: %s", rpc.name, e)
            return Outcome(e.code, e.message)
        except Exception as e:  # a fault of ours: report it, keep serving
            return self._internal(rpc, e)
        return Outcome(StatusCode.OK, response.SerializeToString())

    @staticmethod
    def _internal(rpc: Rpc, error: Exception) -> Outcome:
        log.exception("%s failed with an internal error", rpc.name)
        return Outcome(StatusCode.INTERNAL,
                       f"internal error in {rpc.name}: {type(error).__name__}: {error}")


def unknown_method(method: object) -> Outcome:
    """The reply to a method this agent does not serve (a newer client's, or a typo)."""
    return Outcome(StatusCode.UNIMPLEMENTED, f"unknown method {method}")
