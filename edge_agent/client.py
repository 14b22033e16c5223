"""A Python client for the agent's framed UNIX-socket protocol, speaking NumPy.

    with AgentClient("/tmp/edge-agent.sock") as agent:
        agent.load_model("demo", "/models/demo.tflite")
        outputs = agent.predict("demo", [np.zeros((1, 8), np.float32)])

Every failed call raises edge_agent.errors.AgentError with the agent's status code.
"""
from __future__ import annotations

import itertools
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import FrameDecoder, Method, encode_request
from edge_agent.sockets import default_busy_poll_us, recv_into_polling
from edge_agent.tensors import add_array, dtype_of, tensor_to_array

DEFAULT_SOCKET = "/tmp/edge-agent.sock"
# Replies are bounded by what the agent sends; this only stops a corrupt length from
# allocating without limit.
MAX_REPLY_BYTES = 2**31
RECV_BYTES = 256 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype | None  # None for a data type this client does not know
    shape: tuple[int, ...]  # -1 where the dimension is dynamic


@dataclass(frozen=True)
class ModelInfo:
    name: str
    url: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def from_pb(cls, model: pb.Model) -> "ModelInfo":
        def infos(metadatas):
            return tuple(TensorInfo(m.name.decode("utf-8", "replace"), dtype_of(m.data_type),
                                    tuple(m.shape)) for m in metadatas)
        return cls(model.name, model.url, infos(model.input_tensor_metadatas),
                   infos(model.output_tensor_metadatas))


Inputs = Union[Sequence[np.ndarray], Mapping[str, np.ndarray]]


class AgentClient:
    """One connection to the agent. Thread-safe: calls from several threads take turns."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float | None = None,
                 busy_poll_us: int | None = None):
        """`timeout`: seconds to wait for a reply (None: for ever). `busy_poll_us`: how long
        to spin for a reply before sleeping (default: 50 on multi-core machines, else 0)."""
        self.socket_path = socket_path
        self._spin = (default_busy_poll_us() if busy_poll_us is None else busy_poll_us) / 1e6
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(socket_path)
        except OSError as e:
            self._sock.close()
            raise AgentError(StatusCode.UNAVAILABLE,
                             f"cannot connect to the agent at {socket_path}: {e.strerror or e}") from None
        self._decoder = FrameDecoder(MAX_REPLY_BYTES)
        self._buffer = bytearray(RECV_BYTES)  # reused: recv(n) would allocate n bytes a call
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # --- the API ----------------------------------------------------------------------------

    def load_model(self, name: str, url: str) -> ModelInfo:
        reply = self.call(Method.LOAD_MODEL, pb.LoadModelRequest(url=url, name=name),
                          pb.LoadModelResponse)
        return ModelInfo.from_pb(reply.model)

    def unload_model(self, name: str) -> None:
        self.call(Method.UNLOAD_MODEL, pb.UnLoadModelRequest(name=name), pb.UnLoadModelResponse)

    def list_models(self) -> list[ModelInfo]:
        reply = self.call(Method.LIST_MODELS, pb.ListModelsRequest(), pb.ListModelsResponse)
        return [ModelInfo.from_pb(m) for m in reply.models]

    def describe_model(self, name: str) -> ModelInfo:
        reply = self.call(Method.DESCRIBE_MODEL, pb.DescribeModelRequest(name=name),
                          pb.DescribeModelResponse)
        return ModelInfo.from_pb(reply.model)

    def predict(self, name: str, inputs: Inputs) -> "OrderedDict[str, np.ndarray]":
        """Outputs by name, in the model's order. `inputs`: arrays by position, or by name."""
        request = pb.PredictRequest(name=name)
        if isinstance(inputs, Mapping):
            for input_name, array in inputs.items():
                add_array(request.tensors, input_name, np.asarray(array))
        else:
            for array in inputs:
                add_array(request.tensors, "", np.asarray(array))
        reply = self.call(Method.PREDICT, request, pb.PredictResponse)
        return OrderedDict(tensor_to_array(t) for t in reply.tensors)

    # --- the wire ---------------------------------------------------------------------------

    def call(self, method: Method, request, response_type):
        """Send one request, wait for its reply; AgentError for a non-OK status."""
        with self._lock:
            request_id = next(self._ids) & 0xFFFFFFFF
            self._sock.sendall(encode_request(method, request_id, request.SerializeToString()))
            frame = self._read_reply(request_id)
        if frame.status != StatusCode.OK:
            raise AgentError(StatusCode.from_wire(frame.status),
                             frame.body.decode("utf-8", "replace"))
        return response_type.FromString(frame.body)

    def _read_reply(self, request_id: int):
        while True:
            for frame in self._decoder.frames():
                if frame.request_id == request_id:
                    return frame
                if frame.request_id == 0 and frame.status != StatusCode.OK:
                    return frame  # a connection-level error: the agent is closing on us
            received = recv_into_polling(self._sock, self._buffer, self._spin)
            if not received:
                raise AgentError(StatusCode.UNAVAILABLE,
                                 "the agent closed the connection before replying")
            self._decoder.feed(memoryview(self._buffer)[:received])
