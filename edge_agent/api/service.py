"""The service core: load, unload, list, describe, predict. It knows no transport.

Each RPC is a method taking the protobuf request and the Caller and returning the protobuf
response, or raising AgentError with the status code the API gives for that failure; Predict,
the hot path, takes what the RPC table's codec decoded and returns the reply's bytes
(predict_call; predict() is the same in protobuf messages, for callers in this process). The
framed socket server and the gRPC front are thin adapters over one AgentService, through
the RPC table of edge_agent.api.rpcs.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from edge_agent import agent_pb2 as pb
from edge_agent.protocol import predict_codec
from edge_agent.api.caller import IN_PROCESS, Caller, check_model_name
from edge_agent.api.codecs import PredictCall, predict_call_of
from edge_agent.capture.capture_calls import CaptureService
from edge_agent.capture.validate import uses_shared_memory
from edge_agent.config import AgentConfig
from edge_agent.models.engine import LoadedModel
from edge_agent.platform.caller_paths import trusted
from edge_agent.errors import AgentError, StatusCode, failed_precondition, not_found, shown
from edge_agent.models.loading import ModelLoader, open_model
from edge_agent.platform.memory import MemoryBudget
from edge_agent.observe.metrics import AgentMetrics
from edge_agent.models.model_check import Prover
from edge_agent.shm.segments import SharedMemory
from edge_agent.protocol.tensors import SHARED_MEMORY

log = logging.getLogger(__name__)


# Makes the capture service of an agent from its configuration: the composition (the composition
# root, edge_agent.app.root) passes it in; CaptureService itself is the default for in-process use.
CaptureFactory = Callable[[AgentConfig], CaptureService]


class AgentService:
    def __init__(self, config: AgentConfig, make_capture: CaptureFactory = CaptureService):
        # First, while this process may still have a single thread: the helper that proves
        # models is forked now or never (prover.py).
        self.prover = Prover()
        self.config = config
        self.budget = MemoryBudget(config.memory_budget_bytes)
        self.loader = ModelLoader(config, self.budget, self.prover)
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()  # names reserved by loads in progress
        # Names the model repository manages (edge_agent.models.lifecycle): not for LoadModel or
        # UnLoadModel; the manager, when one is attached, answers the lifecycle RPCs.
        self._managed: set[str] = set()
        self.lifecycle = None  # an edge_agent.models.lifecycle.manager.ModelManager, set by the app
        self._lock = threading.Lock()
        self.metrics = AgentMetrics(config.edge_agent_metrics)
        self.shm = SharedMemory.from_config(config)  # attachments shared by all calls
        try:
            # A factory, not a made service: it is called only now, after the prover's fork,
            # because a capture service left a journal starts its delivery threads at once.
            self.capture = make_capture(config)  # opens nothing until used or left a journal
        except BaseException:
            self.prover.close()  # a service that never was leaves no helper behind
            raise

    # --- model management -------------------------------------------------------------------

    def load_model(self, request: pb.LoadModelRequest, caller: Caller = IN_PROCESS) -> pb.LoadModelResponse:
        name = request.name
        check_model_name(name)
        source = open_model(request.url, caller)  # non-blocking: holds only a descriptor
        try:
            with self._lock:
                if name in self._managed:
                    raise AgentError(StatusCode.ALREADY_EXISTS, _managed_message(name, "load"))
                if name in self._models or name in self._loading:
                    raise AgentError(StatusCode.ALREADY_EXISTS,
                                     f"a model named '{shown(name)}' is loaded; unload it first")
                self._loading.add(name)
            try:
                model = self.loader.load(name, request.url, source, caller)
                with self._lock:
                    self._models[name] = model
            finally:
                with self._lock:
                    self._loading.discard(name)
        finally:
            source.close()
        log.info("loaded model '%s' from %s (%.1f MiB reserved, run by %s)", name, source.path,
                 model.footprint / 2**20, model.delegate)
        return pb.LoadModelResponse(model=self._describe(model, caller))

    def unload_model(self, request: pb.UnLoadModelRequest, caller: Caller = IN_PROCESS) -> pb.UnLoadModelResponse:
        check_model_name(request.name)
        with self._lock:
            if request.name in self._managed:
                raise failed_precondition(_managed_message(request.name, "unload"))
            model = self._models.get(request.name)
            if model is not None and not self._may_manage(model, caller):
                raise AgentError(
                    StatusCode.PERMISSION_DENIED,
                    f"model '{request.name}' was loaded by another user: only that user, root "
                    "and the agent's own user may unload it (edge_agent_model_access is owner)")
            self._models.pop(request.name, None)
        if model is None:
            raise self._no_model(request.name)
        # A prediction still running on it keeps its own reference and finishes normally.
        self.budget.release(model.footprint)
        log.info("unloaded model '%s'", request.name)
        if self.lifecycle is not None:
            self.lifecycle.wake()  # a name it was blocked on may be free, memory freed
        return pb.UnLoadModelResponse()

    def list_models(self, request: pb.ListModelsRequest | None = None,
                    caller: Caller = IN_PROCESS) -> pb.ListModelsResponse:
        with self._lock:
            models = sorted(self._models.values(), key=lambda m: m.name)
        described = [self._describe(m, caller) for m in models]
        if request is not None and request.include_repository and self.lifecycle is not None:
            loaded = {m.name for m in models}
            for name in self.lifecycle.names():
                if name not in loaded:
                    model = pb.Model(name=name)
                    self._describe_lifecycle(model)
                    described.append(model)
            described.sort(key=lambda m: m.name)
        return pb.ListModelsResponse(models=described)

    def describe_model(self, request: pb.DescribeModelRequest, caller: Caller = IN_PROCESS) -> pb.DescribeModelResponse:
        return pb.DescribeModelResponse(model=self._describe(self._model(request.name), caller))

    # --- the model repository (edge_agent.models.lifecycle) ---------------------------------------

    def claim(self, name: str) -> bool:
        """Reserve `name` for the model repository; False while an application's model (or
        load in progress) holds it."""
        with self._lock:
            if name in self._managed:
                return True
            if name in self._models or name in self._loading:
                return False
            self._managed.add(name)
            return True

    def install(self, name: str, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` under a claimed name from the next call on; the model it replaces
        (calls that already hold it finish on it)."""
        with self._lock:
            previous = self._models.get(name)
            self._models[name] = model  # one assignment: a call sees the old or the new
        return previous

    def withdraw(self, name: str, model: LoadedModel) -> LoadedModel | None:
        """Stop serving `model` under a claimed name (a swap that unloads first)."""
        with self._lock:
            if self._models.get(name) is model:
                del self._models[name]
                return model
        return None

    def release(self, name: str) -> None:
        """The model repository no longer manages `name` (withdrawn first): applications may
        load a model of that name again."""
        with self._lock:
            if name not in self._models:
                self._managed.discard(name)

    def rescan(self, request: pb.RescanRequest, caller: Caller = IN_PROCESS) -> pb.RescanResponse:
        self._manager().rescan()
        return pb.RescanResponse(models=self.list_models(
            pb.ListModelsRequest(include_repository=True), caller).models)

    def rollback(self, request: pb.RollbackRequest, caller: Caller = IN_PROCESS) -> pb.RollbackResponse:
        check_model_name(request.name)
        self._may_change_what_serves(caller, "roll back")
        self._manager().rollback(request.name, request.version)
        return pb.RollbackResponse(model=self._repository_model(request.name, caller))

    def unpin(self, request: pb.UnpinRequest, caller: Caller = IN_PROCESS) -> pb.UnpinResponse:
        check_model_name(request.name)
        self._may_change_what_serves(caller, "unpin")
        self._manager().unpin(request.name)
        return pb.UnpinResponse(model=self._repository_model(request.name, caller))

    def _manager(self):
        if self.lifecycle is None:
            raise failed_precondition("this agent has no model repository "
                                      "(edge_agent_model_repository is empty)")
        return self.lifecycle

    @staticmethod
    def _may_change_what_serves(caller: Caller, what: str) -> None:
        if not trusted(caller):
            raise AgentError(
                StatusCode.PERMISSION_DENIED,
                f"only root and the agent's own user (uid {os.geteuid()}) may {what} a "
                f"repository model: it changes what every application gets (caller uid "
                f"{caller.uid})")

    def _repository_model(self, name: str, caller: Caller) -> pb.Model:
        model = self._models.get(name)
        if model is not None:
            return self._describe(model, caller)
        described = pb.Model(name=name)
        self._describe_lifecycle(described)
        return described

    def _describe_lifecycle(self, described: pb.Model) -> None:
        status = self.lifecycle.status(described.name) if self.lifecycle is not None else None
        if status is None:
            described.source = "application"
            described.state = "serving"
            return
        described.source = "repository"
        described.state = status["state"]
        described.state_reason = status["reason"]
        described.since_unix_seconds = status["since"]
        described.version = status["version"]
        described.pinned_version = status["pinned"]
        for v in status["versions"]:
            described.versions.add(version=v["version"], sha256=v["sha256"], state=v["state"],
                                   reason=v["reason"], pinned=v["pinned"])

    # --- data plane ---------------------------------------------------------------------------

    def predict_call(self, request: PredictCall, caller: Caller = IN_PROCESS) -> bytes:
        """Predict, as the RPC table's codec decoded it: (model name, [WireTensor], [Handle]
        of output_handles) in, the serialized PredictResponse out.

        The Predict codec's part on this side of the table is here: its plain match takes
        inline inputs of exactly the model's shapes as views of the frame (anything else is
        bound and checked by the engine), and its encoder writes the outputs into the reply
        while the engine holds them (one copy, from the runtime's buffers)."""
        started = time.perf_counter()
        name, tensors, output_handles = request
        model = self._model(name)
        predicted = False  # counted OK by the model; the shared memory may yet prove truncated
        try:
            if not output_handles:  # the common case, first: it is on every Predict
                reply = model.plain_call.run(tensors, started)
                if reply is not None:
                    return reply
            if output_handles or _any_shared(tensors):
                with self.shm.call(caller) as shm:
                    writer = (shm.output_writer(output_handles, model.outputs)
                              if output_handles else None)
                    reply = _run(model, tensors, shm.read, writer, started)
                    predicted = True
            else:  # inline inputs the plain match left to the engine's checks
                arrays, _ = model.bind(tensors)
                with model.run(arrays, True, 0, None, started) as outputs:
                    reply = predict_codec.encode_response(outputs)
        except AgentError as e:
            model.count_failure(e.code, predicted)
            raise
        except Exception:
            model.count_failure(StatusCode.INTERNAL, predicted)
            raise
        return reply

    def predict(self, request: pb.PredictRequest, caller: Caller = IN_PROCESS) -> pb.PredictResponse:
        """Predict for callers in this process, in protobuf messages: the request read as the
        table's codec reads one it leaves to upb, the reply parsed back."""
        return pb.PredictResponse.FromString(self.predict_call(predict_call_of(request), caller))

    def capture_data(self, request: pb.CaptureDataRequest,
                     caller: Caller = IN_PROCESS) -> pb.CaptureDataResponse:
        """Returns once the capture is journaled; delivery happens in the background. The
        model need not be loaded (as in the original: captures may come from elsewhere)."""
        if uses_shared_memory(request):
            with self.shm.call(caller) as shm:  # copied out before the call returns
                self.capture.capture(request, shm)  # reads, then checks for truncation
        else:
            self.capture.capture(request)
        return pb.CaptureDataResponse()

    def get_capture_data_status(self, request: pb.GetCaptureDataStatusRequest,
                                caller: Caller = IN_PROCESS) -> pb.GetCaptureDataStatusResponse:
        return self.capture.status(request.capture_id)

    def get_metrics(self, request: pb.GetMetricsRequest | None = None,
                    caller: Caller = IN_PROCESS) -> pb.GetMetricsResponse:
        with self._lock:
            models = sorted(self._models.values(), key=lambda m: m.name)
        return self.metrics.snapshot(models, self.budget, self.capture, self.config,
                                     self.lifecycle)

    # --- helpers ----------------------------------------------------------------------------

    @property
    def serving(self) -> dict[str, LoadedModel]:
        """The models served, by name: the live dictionary (never replaced, only changed under
        the service's lock), for a reader on the hot path that reads it without the lock, as
        _model does (one dict read is atomic)."""
        return self._models

    def _model(self, name: str) -> LoadedModel:
        model = self._models.get(name)  # a dict read is atomic; no lock on the hot path
        if model is None:
            check_model_name(name)  # only on a miss: a loaded model's name was checked
            raise self._no_model(name)
        return model

    def _may_manage(self, model: LoadedModel, caller: Caller) -> bool:
        """Whether `caller` may unload `model` and see its url (edge_agent_model_access)."""
        return (self.config.edge_agent_model_access == "shared"
                or caller.uid in (model.owner, 0, os.geteuid()))

    def _describe(self, model: LoadedModel, caller: Caller) -> pb.Model:
        described = model.describe()
        described.key_id = model.key_id
        if not self._may_manage(model, caller):
            described.url = ""  # where another user's model lives is that user's business
        if model.source == "repository":
            self._describe_lifecycle(described)
        else:
            status = self.lifecycle.status(model.name) if self.lifecycle is not None else None
            version = described.version
            if status is not None:  # the repository's versions wait for this one to go
                self._describe_lifecycle(described)
            described.source = "application"
            described.state = "serving"
            described.since_unix_seconds = model.loaded_at
            described.version = version  # its own package's, not the repository's
        return described

    def _no_model(self, name: str) -> AgentError:
        with self._lock:
            loaded = ", ".join(sorted(self._models)) or "none"
        return not_found(f"no model named '{shown(name)}' is loaded (loaded: {loaded})")

    def close(self) -> None:
        self.capture.close()  # delivers what it can within edge_agent_capture_flush_seconds
        with self._lock:
            self._models.clear()
        self.shm.close()
        self.prover.close()


def _managed_message(name: str, what: str) -> str:
    return (f"model '{name}' is managed by the model repository (edge_agent_model_repository): "
            f"applications cannot {what} it; `edge-agent client rollback|unpin` change its version")


def _run(model: LoadedModel, tensors: list, reader, writer, started: float) -> bytes:
    """The serialized PredictResponse of `model` run on the request's tensors."""
    arrays = predict_codec.plain_inputs(tensors, *model.plain_match)
    if arrays is None:  # anything but plain inline inputs of the model's shapes
        arrays, shared = model.bind(tensors, reader)
        checked = True
    else:
        shared = 0
        checked = False
    with model.run(arrays, checked, shared, writer, started) as outputs:
        return predict_codec.encode_response(outputs)


def _any_shared(tensors) -> bool:
    """Whether a tensor comes through shared memory: a loop, not any() over a generator,
    which costs three Python calls on every Predict."""
    for tensor in tensors:
        if tensor.kind == SHARED_MEMORY:
            return True
    return False
