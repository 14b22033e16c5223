"""The service core: load, unload, list, describe, predict. It knows no transport.

Each RPC is a method taking the protobuf request and the Caller and returning the protobuf
response, or raising AgentError with the status code the API gives for that failure. The
framed socket server and the gRPC front are thin adapters over one AgentService.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

from edge_agent import agent_pb2 as pb
from edge_agent import accelerators, delegates
from edge_agent.config import AgentConfig
from edge_agent.engine import LoadedModel, create_interpreter
from edge_agent.errors import (AgentError, StatusCode, failed_precondition, invalid_argument,
                               not_found)
from edge_agent.memory import MemoryBudget
from edge_agent.metrics import AgentMetrics, ModelMetrics
from edge_agent.modelfile import is_bare_model, looks_like_tflite, open_regular
from edge_agent.shm import SharedMemory

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the transport knows it (SO_PEERCRED on the UNIX socket).

    `groups`: the supplementary groups, read once when the connection was accepted
    (SO_PEERGROUPS); empty for a caller whose groups are unknown, who then gets only `gid`.
    """
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


IN_PROCESS = Caller(os.getpid(), os.getuid(), os.getgid(), frozenset(os.getgroups()))


class Rpc(NamedTuple):
    name: str
    request_type: type
    handler: str  # AgentService method name


RPCS: dict[str, Rpc] = {r.name: r for r in (
    Rpc("Predict", pb.PredictRequest, "predict"),
    Rpc("LoadModel", pb.LoadModelRequest, "load_model"),
    Rpc("UnLoadModel", pb.UnLoadModelRequest, "unload_model"),
    Rpc("ListModels", pb.ListModelsRequest, "list_models"),
    Rpc("DescribeModel", pb.DescribeModelRequest, "describe_model"),
    Rpc("CaptureData", pb.CaptureDataRequest, "capture_data"),
    Rpc("GetCaptureDataStatus", pb.GetCaptureDataStatusRequest, "get_capture_data_status"),
    Rpc("GetMetrics", pb.GetMetricsRequest, "get_metrics"),
)}


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise invalid_argument(
            f"model name {name!r} is not valid: use letters, digits and single or repeated "
            "dashes between them (^[a-zA-Z0-9](-*[a-zA-Z0-9])*$)")


def model_path(url: str) -> str:
    """The local path a LoadModel url names: a plain path or a file:// url."""
    if not url:
        raise invalid_argument("url is empty: give the model's local path or a file:// url")
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise invalid_argument(f"url {url!r}: a file:// url needs an absolute path (file:///...)")
        return path
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise invalid_argument(f"url {url!r}: only local paths and file:// urls are supported")
    return url


class AgentService:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.budget = MemoryBudget(config.memory_budget_bytes)
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()  # names reserved by loads in progress
        self._lock = threading.Lock()
        self.metrics = AgentMetrics(config.edge_agent_metrics)
        self.shm = SharedMemory.from_config(config)  # attachments shared by all calls
        # A package built for the Edge TPU is accepted only where this agent runs one.
        accelerators.use_delegate_config(config.edge_agent_delegate,
                                         config.edge_agent_delegate_options)
        # Imported here: edge_agent.capture uses this module's check_model_name.
        from edge_agent.capture.service import CaptureService
        self.capture = CaptureService(config)  # opens nothing until used or left a journal

    # --- model management -------------------------------------------------------------------

    def load_model(self, request: pb.LoadModelRequest, caller: Caller = IN_PROCESS) -> pb.LoadModelResponse:
        name = request.name
        check_model_name(name)
        path = model_path(request.url)
        with self._lock:
            if name in self._models or name in self._loading:
                raise AgentError(StatusCode.ALREADY_EXISTS,
                                 f"a model named '{name}' is loaded; unload it first")
            self._loading.add(name)
        try:
            model = self._load(name, request.url, path)
            with self._lock:
                self._models[name] = model
        finally:
            with self._lock:
                self._loading.discard(name)
        log.info("loaded model '%s' from %s (%.1f MiB reserved, run by %s)", name, path,
                 model.footprint / 2**20, model.delegate)
        return pb.LoadModelResponse(model=model.describe())

    def _load(self, name: str, url: str, path: str) -> LoadedModel:
        what = f"model '{name}'"
        started = time.monotonic()
        package: dict = {}  # the package's name and version, when it comes from one
        content = self._read_model(path, what, package)
        self.budget.reserve(len(content), what)
        reserved = len(content)
        try:
            interpreter, delegation = delegates.create_interpreter(
                content, self.config, what, create_interpreter)
            # The arena and the runtime's packed copies of weights come on top of the file.
            tensors = sum(int(d["shape"].prod()) * d["dtype"](0).itemsize
                          for d in interpreter.get_tensor_details())
            self.budget.reserve(tensors, what)
            reserved += tensors
            metrics = ModelMetrics(time.monotonic() - started, **package) \
                if self.config.edge_agent_metrics else None
            return LoadedModel(name, url, interpreter, footprint=reserved,
                               delegate=delegation.name, metrics=metrics)
        except BaseException:
            self.budget.release(reserved)
            raise

    def _read_model(self, path: str, what: str, package: dict) -> bytes:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise not_found(f"no model at '{path}'") from None
        except OSError as e:
            raise failed_precondition(f"cannot read '{path}': {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode) or not is_bare_model(path):
            return self._read_package(path, what, package)
        if not self.config.edge_agent_allow_unsigned_models:
            raise failed_precondition(
                f"'{path}' is an unsigned .tflite file and unsigned models are not allowed: "
                "load a signed package, or set edge_agent_allow_unsigned_models to true")
        # Refuse an oversized file before reading it into memory.
        self.budget.check(st.st_size, what)
        try:
            # A regular file still: it may have been swapped for a FIFO since the check above.
            with open_regular(path) as f:
                content = f.read()
        except OSError as e:
            raise failed_precondition(f"cannot read '{path}': {e.strerror}") from None
        if not looks_like_tflite(content):
            raise failed_precondition(f"'{path}' is not a TensorFlow Lite model")
        return content

    def _read_package(self, path: str, what: str, found: dict) -> bytes:
        """The model bytes of a signed package, verified: the same bytes that were hashed."""
        from edge_agent.archive import Limits
        from edge_agent.packages import open_package  # PyNaCl: only once a package comes

        config = self.config
        package = open_package(
            path, config.sagemaker_edge_core_root_certs_path,
            os.path.join(config.edge_agent_state_dir, "packages"),
            Limits(config.edge_agent_max_package_bytes, config.edge_agent_max_package_files),
            check_size=lambda size: self.budget.check(size, what))
        manifest = package.manifest
        log.info("%s: package %s %s for %s, signed by key %s", what, manifest.name,
                 manifest.version, manifest.target, package.key_id)
        found.update(package_name=manifest.name, package_version=manifest.version)
        return package.model

    def unload_model(self, request: pb.UnLoadModelRequest, caller: Caller = IN_PROCESS) -> pb.UnLoadModelResponse:
        check_model_name(request.name)
        with self._lock:
            model = self._models.pop(request.name, None)
        if model is None:
            raise self._no_model(request.name)
        # A prediction still running on it keeps its own reference and finishes normally.
        self.budget.release(model.footprint)
        log.info("unloaded model '%s'", request.name)
        return pb.UnLoadModelResponse()

    def list_models(self, request: pb.ListModelsRequest | None = None,
                    caller: Caller = IN_PROCESS) -> pb.ListModelsResponse:
        with self._lock:
            models = sorted(self._models.values(), key=lambda m: m.name)
        return pb.ListModelsResponse(models=[m.describe() for m in models])

    def describe_model(self, request: pb.DescribeModelRequest, caller: Caller = IN_PROCESS) -> pb.DescribeModelResponse:
        return pb.DescribeModelResponse(model=self._model(request.name).describe())

    # --- data plane ---------------------------------------------------------------------------

    def predict(self, request: pb.PredictRequest, caller: Caller = IN_PROCESS) -> pb.PredictResponse:
        started = time.perf_counter()
        response = pb.PredictResponse()
        model = self._model(request.name)
        predicted = False  # counted OK by the model; the shared memory may yet prove truncated
        try:
            with self.shm.call(caller) as shm:
                writer = (shm.output_writer(request.output_handles, model.outputs)
                          if request.output_handles else None)
                model.predict(request.tensors, response, reader=shm.read, writer=writer,
                              started=started)
                predicted = True
        except AgentError as e:
            model.count_failure(e.code, predicted)
            raise
        except Exception:
            model.count_failure(StatusCode.INTERNAL, predicted)
            raise
        return response

    def capture_data(self, request: pb.CaptureDataRequest,
                     caller: Caller = IN_PROCESS) -> pb.CaptureDataResponse:
        """Returns once the capture is journaled; delivery happens in the background. The
        model need not be loaded (as in the original: captures may come from elsewhere)."""
        from edge_agent.capture.validate import uses_shared_memory

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
        return self.metrics.snapshot(models, self.budget, self.capture, self.config)

    # --- helpers ----------------------------------------------------------------------------

    def _model(self, name: str) -> LoadedModel:
        check_model_name(name)
        model = self._models.get(name)  # a dict read is atomic; no lock on the hot path
        if model is None:
            raise self._no_model(name)
        return model

    def _no_model(self, name: str) -> AgentError:
        with self._lock:
            loaded = ", ".join(sorted(self._models)) or "none"
        return not_found(f"no model named '{name}' is loaded (loaded: {loaded})")

    def handler(self, rpc: Rpc) -> Callable:
        return getattr(self, rpc.handler)

    def close(self) -> None:
        self.capture.close()  # delivers what it can within edge_agent_capture_flush_seconds
        with self._lock:
            self._models.clear()
        self.shm.close()
