"""A Python client for the agent's framed UNIX-socket protocol, speaking NumPy.

    with AgentClient("/tmp/edge-agent.sock") as agent:
        agent.load_model("demo", "/models/demo.tflite")
        outputs = agent.predict("demo", [np.zeros((1, 8), np.float32)])

Three layers: AgentClient shapes arguments and results (arrays, ModelInfo); AgentCalls makes
the calls, one per row of the RPC table (edge_agent.api.rpcs), each encoded and decoded by its
row's codec, the agent's own; a transport moves the bytes: SocketTransport (the framed UNIX
socket, descriptors passed with SCM_RIGHTS) or InMemoryTransport (an Api in this process: no
socket, no thread; what the unit tests use).

Every failed call raises edge_agent.errors.AgentError with the agent's status code; a reply
this client cannot read (a stream that breaks the protocol) raises INTERNAL and ends the
connection, and one the agent never finished sending UNAVAILABLE.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Protocol, Sequence, Union,
                    cast, overload)

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.api.caller import IN_PROCESS, Caller
from edge_agent.api.codecs import PredictCodec
from edge_agent.api.rpcs import BY_METHOD, RPCS, Method, Rpc
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import ClientConnection, NeedData, ProtocolError, Reply
from edge_agent.protocol.tensors import (SHARED_MEMORY, Handle, WireTensor, add_tensor,
                                         data_type_of, dtype_of)
from edge_agent.shm_client import ShmTensor, fd_index
from edge_agent.transport.socket_io import receive_into, send_with_fds

DEFAULT_SOCKET = "/tmp/edge-agent.sock"


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
    delegate: str = ""  # what runs it: xnnpack, cpu, edgetpu, external:<path> ("": not said)
    version: str = ""  # the signed package's version ("": a bare model, or an older agent)
    source: str = ""  # repository or application ("": not said: an agent without lifecycle)
    state: str = ""  # serving, loading, validating, failed, blocked, waiting

    @classmethod
    def from_pb(cls, model: pb.Model) -> "ModelInfo":
        def infos(metadatas):
            return tuple(TensorInfo(m.name.decode("utf-8", "replace"), dtype_of(m.data_type),
                                    tuple(m.shape)) for m in metadatas)
        return cls(model.name, model.url, infos(model.input_tensor_metadatas),
                   infos(model.output_tensor_metadatas), model.delegate, model.version,
                   model.source, model.state)


AuxData = Union[bytes, str, tuple]  # data, or (data, encoding name)


class CaptureStatus(NamedTuple):
    status: str  # IN_PROGRESS, SUCCESS or FAILURE
    reason: str  # why, for a FAILURE


def _add_auxiliary(items, values: Mapping[str, AuxData]) -> None:
    for name, value in values.items():
        data, encoding = value if isinstance(value, tuple) else (value, "NONE")
        items.add(name=name, encoding=pb.Encoding.Value(encoding),
                  byte_data=data.encode() if isinstance(data, str) else bytes(data))


def _written(sent: ShmTensor, tensor: WireTensor) -> tuple[str, ShmTensor]:
    """(name, ShmTensor) of an output the agent wrote where `sent` said; a descriptor's
    index means nothing outside the call, so the segment is named as it was sent."""
    name, written = ShmTensor.from_reply(tensor)
    if tensor.kind == SHARED_MEMORY and tensor.data.fd_index is not None:
        written = dataclasses.replace(written, segment_id=sent.segment_id,
                                      posix_name=sent.posix_name, fd=sent.fd)
    return name, written


Inputs = Union[Sequence[Union[np.ndarray, ShmTensor]], Mapping[str, Union[np.ndarray, ShmTensor]]]


def _wire_inputs(values: Inputs, fds: list, pass_fd: bool) -> list[tuple]:
    """(name, DataType, shape, data) of each input for the Predict codec: data the array
    itself (its bytes are copied once, into the request) or a ShmTensor's Handle."""
    items = values.items() if isinstance(values, Mapping) else (("", v) for v in values)
    wire = []
    for name, value in items:
        data: Handle | np.ndarray
        if isinstance(value, ShmTensor):
            data, dtype, shape = value.wire_handle(fd_index(fds, value, pass_fd)), \
                value.dtype, value.shape
        else:
            data = np.asarray(value)
            if not data.flags.c_contiguous:
                data = data.copy(order="C")
            dtype, shape = data.dtype, data.shape
        data_type = data_type_of(dtype)
        if data_type is None:
            raise TypeError(f"tensor {name!r}: dtype {dtype} has no wire DataType")
        wire.append((name.encode(), data_type, shape, data))
    return wire


def _add_tensors(tensors, values: Inputs, fds: list, pass_fd: bool) -> None:
    """Append arrays or ShmTensors, given by position or by name, to a repeated Tensor; the
    descriptors of segments passed as such go to `fds`."""
    for name, data_type, shape, data in _wire_inputs(values, fds, pass_fd):
        add_tensor(tensors, name, data_type, shape, data)


# --- transports: where a call's bytes go ------------------------------------------------------

class ClientTransport(Protocol):
    """How a client reaches an agent: one request's body out, its reply back. The two in
    this module: SocketTransport (the framed UNIX socket) and InMemoryTransport (an Api in
    this process, for tests). Calls come one at a time (AgentCalls holds a lock)."""

    def exchange(self, method: int, body: bytes, fds: Sequence[int]) -> tuple[int, Any]:
        """Send `body` as a call of `method` with the descriptors `fds`; → (status code,
        the reply's body when OK, else the agent's message as bytes). The body may be a view
        of a buffer the transport reuses: valid until the next exchange. AgentError for a
        call the transport itself could not make (no agent, a broken stream, no reply in
        time)."""
        ...

    def close(self) -> None: ...


class SocketTransport:
    """The framed protocol on a UNIX socket (docs/PROTOCOL.md): the sans-IO ClientConnection
    (edge_agent.protocol) for request ids and reply matching, descriptors passed with
    SCM_RIGHTS, and a call the agent refused for an idle connection sent again, once, on a
    new one."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float | None = None,
                 busy_poll_us: int = 0):
        """`timeout`: seconds to wait for a reply (None: for ever). `busy_poll_us`: how long
        to spin for a reply before sleeping (0: not at all; docs/BENCHMARKS.md has what it saves)."""
        self.socket_path = socket_path
        self._spin = busy_poll_us / 1e6
        self._timeout = timeout
        self.sock = self._connect()
        # Request ids, reply matching and the reused receive buffer (edge_agent.protocol).
        self._conn = ClientConnection()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as e:
            sock.close()
            raise AgentError(StatusCode.UNAVAILABLE, f"cannot connect to the agent at "
                             f"{self.socket_path}: {e.strerror or e}") from None
        return sock

    def close(self) -> None:
        self.sock.close()

    def exchange(self, method: int, body: bytes, fds: Sequence[int]) -> tuple[int, Any]:
        reply = self._exchange(method, body, fds)
        if reply.request_id == 0 and reply.code == StatusCode.UNAVAILABLE:
            # The agent had closed this connection for being idle before it read the
            # request (docs/PROTOCOL.md): nothing ran, so it is sent again, once, on a
            # new connection.
            self.sock.close()
            self.sock = self._connect()
            self._conn = ClientConnection()
            reply = self._exchange(method, body, fds)
        return reply.code, reply.body

    def _exchange(self, method: int, body: bytes, fds: Sequence[int]) -> Reply:
        request_id, data = self._conn.send_request(method, body)
        try:
            send_with_fds(self.sock, data, fds)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent closed on us: its reason, if it gave one, is still to be read
        except socket.timeout:
            self._conn.abandon(request_id)
            raise self._timed_out() from None
        return self._read_reply(request_id)

    def _timed_out(self) -> AgentError:
        return AgentError(StatusCode.DEADLINE_EXCEEDED,
                          f"no reply from the agent within {self.sock.gettimeout():g} s")

    def _read_reply(self, request_id: int) -> Reply:
        """The reply to `request_id`, or the agent's error about the whole connection (request
        id 0). Replies to calls given up on are dropped by the ClientConnection."""
        conn, sock = self._conn, self.sock
        while True:
            event = conn.next_event()
            kind = event.__class__
            if kind is Reply:
                return event
            if kind is NeedData:
                try:
                    n = receive_into(sock, conn.get_buffer(), conn.receive_whole, self._spin)
                except socket.timeout:
                    conn.abandon(request_id)
                    raise self._timed_out() from None
                except ConnectionResetError:
                    n = 0
                if n:
                    conn.buffer_updated(n)
                else:
                    conn.receive_eof()
            elif kind is ProtocolError:
                raise AgentError(StatusCode.from_wire(event.code), event.message)
            else:  # Closed
                raise AgentError(StatusCode.UNAVAILABLE,
                                 "the agent closed the connection before replying")


class InMemoryTransport:
    """Calls served by an Api in this process (edge_agent.api.rpcs.Api.serve, what both
    fronts call with a request's body): the same bytes in and out as over the socket, the
    same status codes, without a socket, a thread or the framing. For tests, and for an
    application that runs the service itself.

    `caller`: who the calls come from (default: this process); the descriptors a call passes
    are given to the service as its Caller.fds, as the framed front gives those it received
    (they stay the client's: nothing closes them here)."""

    def __init__(self, api: Any, caller: Caller = IN_PROCESS):
        self._api = api
        self.caller = caller

    def exchange(self, method: int, body: bytes, fds: Sequence[int]) -> tuple[int, Any]:
        rpc = BY_METHOD.get(method)
        caller = self.caller if not fds else dataclasses.replace(self.caller, fds=tuple(fds))
        code, reply = (self._api.unknown(method) if rpc is None
                       else self._api.serve(rpc, body, caller))
        return code, (reply if code == StatusCode.OK else reply.encode())

    def close(self) -> None:
        pass


# --- the calls, from the RPC table ------------------------------------------------------------

class AgentCalls:
    """The agent's RPCs over one transport: one method per row of the RPC table
    (edge_agent.api.rpcs.RPCS), named as the service's handler that serves it
    (load_model, predict_call, get_metrics, ...), made below from the table, not written
    out. Each takes what the row's codec encodes (edge_agent.api.codecs: the protobuf request,
    or for Predict (model name, [(name bytes, DataType, shape, data)], [Handle])) and `fds`,
    the descriptors passed with it (named in the request by index); it returns what the
    codec decodes (the protobuf response, or for Predict [WireTensor]), and raises
    AgentError with the agent's code for a call that failed.

    Thread-safe: calls from several threads take turns (a reply's body may be a view of the
    transport's buffer, decoded before the next call receives into it)."""

    def __init__(self, transport: ClientTransport):
        self.transport = transport
        self._lock = threading.Lock()

    def invoke(self, rpc: Rpc, request: Any, fds: Sequence[int] = ()) -> Any:
        """One call of the row `rpc`, encoded and decoded by its codec."""
        codec = rpc.codec
        body = codec.encode_request(request)
        with self._lock:
            return codec.decode_response(self._reply(rpc.method, body, fds))

    def send(self, rpc: Rpc, body: bytes, decode: Callable[[Any], Any],
             fds: Sequence[int] = ()) -> Any:
        """One call of the row `rpc` with its body already encoded, the reply read by `decode`
        (both by the row's codec: AgentClient.predict's array calls)."""
        with self._lock:
            return decode(self._reply(rpc.method, body, fds))

    def call(self, method: int, request: Any, response_type: _Decoder | None = None,
             fds: Sequence[int] = ()) -> Any:
        """One call in protobuf messages, whatever the row's codec: `request` anything with
        SerializeToString(), the reply a `response_type` message (default: the method's
        response type in the table). A method the table lacks is sent too (the agent
        answers UNIMPLEMENTED)."""
        body = request.SerializeToString()
        with self._lock:
            reply = self._reply(method, body, fds)
            return (response_type or BY_METHOD[method].response_type).FromString(reply)

    def _reply(self, method: int, body: bytes, fds: Sequence[int]) -> Any:
        code, reply = self.transport.exchange(method, body, fds)
        if code != StatusCode.OK:
            raise AgentError(StatusCode.from_wire(code), str(reply, "utf-8", "replace"))
        return reply

    if TYPE_CHECKING:  # the calls made from the table below
        def __getattr__(self, handler: str) -> Callable[..., Any]: ...


class _Decoder(Protocol):
    """What call() decodes a reply with: a protobuf message class."""

    def FromString(self, body: bytes | memoryview, /) -> Any: ...


def _table_call(rpc: Rpc) -> Callable[..., Any]:
    def call(self: AgentCalls, request: Any, fds: Sequence[int] = ()) -> Any:
        return self.invoke(rpc, request, fds)
    call.__name__ = rpc.handler
    call.__qualname__ = f"AgentCalls.{rpc.handler}"
    call.__doc__ = (f"{rpc.name}: a {rpc.request_type.__name__} in, a "
                    f"{rpc.response_type.__name__} out (as the row's codec reads them).")
    return call


for _rpc in RPCS:
    setattr(AgentCalls, _rpc.handler, _table_call(_rpc))
del _rpc


_PREDICT = BY_METHOD[Method.PREDICT]
_PREDICT_CODEC = cast(PredictCodec, _PREDICT.codec)  # with the client's array calls


class AgentClient:
    """One connection to the agent, speaking NumPy. Thread-safe: calls from several threads
    take turns. Its methods shape arguments and results; the calls themselves are `rpc`
    (AgentCalls: one per row of the RPC table)."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float | None = None,
                 busy_poll_us: int = 0, *, transport: ClientTransport | None = None):
        """Connects to the agent at `socket_path` (SocketTransport: `timeout`, seconds to
        wait for a reply, None for ever; `busy_poll_us`, how long to spin for a reply before
        sleeping), or calls through `transport` (e.g. InMemoryTransport) instead."""
        self.socket_path = socket_path
        self.transport: ClientTransport = (
            transport if transport is not None
            else SocketTransport(socket_path, timeout, busy_poll_us))
        self.rpc = AgentCalls(self.transport)

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # --- the API ----------------------------------------------------------------------------

    def load_model(self, name: str, url: str) -> ModelInfo:
        return ModelInfo.from_pb(self.rpc.load_model(pb.LoadModelRequest(url=url, name=name)).model)

    def load_model_from_file(self, name: str, file) -> ModelInfo:
        """Load the model in `file` (an open file or a descriptor), passing the descriptor:
        the agent reads what this process opened, needing no right to the path itself."""
        fd = file if isinstance(file, int) else file.fileno()
        return ModelInfo.from_pb(
            self.rpc.load_model(pb.LoadModelRequest(url="fd:0", name=name), (fd,)).model)

    def unload_model(self, name: str) -> None:
        self.rpc.unload_model(pb.UnLoadModelRequest(name=name))

    def list_models(self) -> list[ModelInfo]:
        return [ModelInfo.from_pb(m) for m in self.rpc.list_models(pb.ListModelsRequest()).models]

    def describe_model(self, name: str) -> ModelInfo:
        return ModelInfo.from_pb(self.rpc.describe_model(pb.DescribeModelRequest(name=name)).model)

    @overload
    def predict(self, name: str, inputs: Inputs, outputs: None = None,
                pass_fd: bool = False) -> OrderedDict[str, np.ndarray]: ...

    @overload
    def predict(self, name: str, inputs: Inputs, outputs: Sequence[ShmTensor],
                pass_fd: bool = False) -> OrderedDict[str, ShmTensor]: ...

    def predict(self, name: str, inputs: Inputs, outputs: Sequence[ShmTensor] | None = None,
                pass_fd: bool = False
                ) -> OrderedDict[str, np.ndarray] | OrderedDict[str, ShmTensor]:
        """Outputs by name, in the model's order. `inputs`: arrays (or ShmTensors, which
        name shared memory holding the input) by position, or by name. `outputs`: one
        ShmTensor per model output to have the agent write it there; the result then maps
        each output name to a ShmTensor saying where it is, its dtype and its shape.
        `pass_fd`: pass POSIX segments as descriptors rather than by name (memfd segments
        always are). The arrays are read-only views of the reply's bytes, not copies (its own
        bytes object: edge_agent.api.codecs.PredictCodec.decode_response); an array kept keeps
        the whole reply alive."""
        codec = _PREDICT_CODEC
        if outputs is None:
            body = codec.encode_arrays(name, inputs)
            if body is not None:  # arrays only: the request one compiled call, the reply one
                return OrderedDict(self.rpc.send(_PREDICT, body, codec.decode_arrays))
        fds: list[int] = []
        tensors = _wire_inputs(inputs, fds, pass_fd)
        handles = [t.wire_handle(fd_index(fds, t, pass_fd)) for t in outputs or ()]
        if outputs:
            reply = self.rpc.predict_call((name, tensors, handles), fds)
            return OrderedDict(_written(sent, t) for sent, t in zip(outputs, reply))
        return OrderedDict(self.rpc.send(_PREDICT, codec.encode_request((name, tensors, handles)),
                                         codec.decode_arrays, fds))

    def capture_data(self, model_name: str, inputs: Inputs, outputs: Inputs,
                     aux_inputs: Mapping[str, AuxData] | None = None,
                     aux_outputs: Mapping[str, AuxData] | None = None,
                     capture_id: str | None = None,
                     timestamp: float | datetime.datetime | None = None,
                     pass_fd: bool = False) -> str:
        """Capture tensors (arrays or ShmTensors, by position or by name) for later analysis;
        the capture id (a new UUID unless given). Returns once the agent has journaled the
        capture; follow it with get_capture_data_status. Auxiliary data: name → bytes, str,
        or (bytes or str, encoding) with encoding CSV, JSON, NONE (default) or BASE64.
        `timestamp`: when the inference ran, seconds since the epoch or a datetime (default:
        now). `pass_fd`: as for predict."""
        capture_id = capture_id or str(uuid.uuid4())
        request = pb.CaptureDataRequest(model_name=model_name, capture_id=capture_id)
        fds: list[int] = []
        _add_tensors(request.input_tensors, inputs, fds, pass_fd)
        _add_tensors(request.output_tensors, outputs, fds, pass_fd)
        _add_auxiliary(request.inputs, aux_inputs or {})
        _add_auxiliary(request.outputs, aux_outputs or {})
        if isinstance(timestamp, datetime.datetime):
            timestamp = timestamp.timestamp()
        seconds = time.time() if timestamp is None else float(timestamp)
        whole = math.floor(seconds)
        request.inference_timestamp.seconds = whole
        request.inference_timestamp.nanos = min(999_999_999, round((seconds - whole) * 1e9))
        self.rpc.capture_data(request, fds)
        return capture_id

    def get_capture_data_status(self, capture_id: str) -> str:
        """IN_PROGRESS, SUCCESS or FAILURE; AgentError NOT_FOUND for an unknown id."""
        return self.capture_data_status(capture_id).status

    def capture_data_status(self, capture_id: str) -> "CaptureStatus":
        """The status and, for a FAILURE, why (an extension of this agent)."""
        reply = self.rpc.get_capture_data_status(
            pb.GetCaptureDataStatusRequest(capture_id=capture_id))
        return CaptureStatus(pb.CaptureDataStatus.Name(reply.status), reply.reason)

    def get_metrics(self) -> pb.GetMetricsResponse:
        """What the agent counted and holds (an extension; docs/METRICS.md);
        edge_agent.observe.metrics.document() turns it into plain JSON types."""
        return self.rpc.get_metrics(pb.GetMetricsRequest())

    # --- the model repository (docs/MODEL_LIFECYCLE.md) ------------------------------------

    def model_states(self) -> list[pb.Model]:
        """Every model with its lifecycle fields, the repository's names that have no
        version serving included."""
        return list(self.rpc.list_models(pb.ListModelsRequest(include_repository=True)).models)

    def rescan(self) -> list[pb.Model]:
        """Have the agent take in what its repository holds now; the models after it."""
        return list(self.rpc.rescan(pb.RescanRequest()).models)

    def rollback(self, name: str, version: str = "") -> pb.Model:
        """Serve the version served before (or `version`), pinned until unpin()."""
        return self.rpc.rollback(pb.RollbackRequest(name=name, version=version)).model

    def unpin(self, name: str) -> pb.Model:
        return self.rpc.unpin(pb.UnpinRequest(name=name)).model

    # --- the wire ---------------------------------------------------------------------------

    def call(self, method: int, request: Any, response_type: _Decoder | None = None,
             fds: Sequence[int] = ()) -> Any:
        """Send one request, wait for its reply, in protobuf messages (AgentCalls.call): a
        `response_type` message (default: the method's response type in
        edge_agent.api.rpcs's table); AgentError for a non-OK status. `fds`: descriptors passed
        with the request (SCM_RIGHTS), named in it by index."""
        return self.rpc.call(method, request, response_type, fds)
