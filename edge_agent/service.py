"""The service core: load, unload, list, describe, predict. It knows no transport.

Each RPC is a method taking the protobuf request and the Caller and returning the protobuf
response, or raising AgentError with the status code the API gives for that failure. The
framed socket server and the gRPC front are thin adapters over one AgentService, through
the RPC table of edge_agent.api.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable

from edge_agent import agent_pb2 as pb
from edge_agent import caller_paths, delegates, predict_codec
from edge_agent.accelerators import DelegateSettings
from edge_agent.api import IN_PROCESS, Caller, check_model_name  # noqa: F401 (re-exported)
from edge_agent.capture.service import CaptureService
from edge_agent.capture.validate import uses_shared_memory
from edge_agent.config import AgentConfig
from edge_agent.descriptors import (check_access, copy_to_private_file, fd_url_index,
                                    passed_fd)
from edge_agent.engine import LoadedModel, create_interpreter
from edge_agent.errors import (AgentError, StatusCode, failed_precondition, invalid_argument,
                               not_found, shown)
from edge_agent.memory import MemoryBudget
from edge_agent.metrics import AgentMetrics, ModelMetrics
from edge_agent.modelfile import looks_like_tflite, not_regular, read_at_most
from edge_agent.prover import Prover, holds_edgetpu
from edge_agent.shm import SharedMemory
from edge_agent.tensors import SHARED_MEMORY, add_tensor, handle_of, wire_tensor

log = logging.getLogger(__name__)


def _pb_response(outputs: list) -> pb.PredictResponse:
    """The PredictResponse of the engine's outputs, built with protobuf (the reference)."""
    response = pb.PredictResponse()
    for name, data_type, shape, data in outputs:
        add_tensor(response.tensors, name, data_type, shape, data)
    return response


def model_path(url: str) -> str:
    """The local path a LoadModel url names: a plain path or a file:// url."""
    if not url:
        raise invalid_argument("url is empty: give the model's local path or a file:// url")
    if "\0" in url:
        raise invalid_argument("url contains a NUL byte, which no path can hold")
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise invalid_argument(f"url {shown(url)!r}: a file:// url needs an absolute path (file:///...)")
        return path
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise invalid_argument(f"url {shown(url)!r}: only local paths and file:// urls are supported")
    return url


@dataclass(frozen=True)
class ModelSource:
    """An opened model file or package directory, and the path that names it in replies."""
    fd: int
    path: str  # as the caller gave it
    passed: bool = False  # a descriptor the client passed (url fd:N), not a path opened here

    @property
    def proc_path(self) -> str:
        """The opened object by path, for code that takes paths (packages, archives): the
        kernel resolves it to this descriptor's file, whatever the name means by now."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        os.close(self.fd)


def open_model(url: str, caller: Caller) -> ModelSource:
    """The model a LoadModel url names, opened with the caller's rights: the one place where
    a url becomes a file (a descriptor the client passes instead of a path is the other
    way in, and belongs here). What the caller cannot see or read answers NOT_FOUND worded
    exactly as a missing path; a url that names no local path, INVALID_ARGUMENT."""
    index = fd_url_index(url)
    if index is not None:  # `fd:N`: holding the descriptor is the caller's proof of access
        what = f"url {shown(url)!r}"
        fd = passed_fd(caller, index, what)
        check_access(fd, False, what)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            # Its files would be opened by name, with the agent's rights, not the caller's.
            raise failed_precondition(f"{what}: a package directory cannot be passed as a "
                                      "descriptor; pass its .tar.gz, or give its path")
        return ModelSource(os.dup(fd), url, passed=True)  # read with pread: offset untouched
    path = model_path(url)
    try:
        fd = caller_paths.open_as(caller, path)
    except FileNotFoundError:
        raise not_found(f"no model at '{shown(path)}'") from None
    except OSError as e:
        raise failed_precondition(f"cannot read '{shown(path)}': {e.strerror}") from None
    return ModelSource(fd, path)


# Makes the capture service of an agent from its configuration: the composition (the composition
# root, edge_agent.app) passes it in; CaptureService itself is the default for in-process use.
CaptureFactory = Callable[[AgentConfig], CaptureService]


class AgentService:
    def __init__(self, config: AgentConfig, make_capture: CaptureFactory = CaptureService):
        # First, while this process may still have a single thread: the helper that proves
        # models is forked now or never (prover.py).
        self.prover = Prover()
        self.config = config
        self.budget = MemoryBudget(config.memory_budget_bytes)
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()  # names reserved by loads in progress
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
                if name in self._models or name in self._loading:
                    raise AgentError(StatusCode.ALREADY_EXISTS,
                                     f"a model named '{shown(name)}' is loaded; unload it first")
                self._loading.add(name)
            try:
                model = self._load(name, request.url, source, caller)
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

    def _load(self, name: str, url: str, source: ModelSource, caller: Caller) -> LoadedModel:
        what = f"model '{shown(name)}'"
        started = time.monotonic()
        package: dict = {}  # the package's name and version, when it comes from one
        content = self._read_model(source, what, caller, package)
        self.budget.reserve(len(content), what)
        reserved = len(content)
        try:
            # What the runtime cost a child beyond the file, measured before the agent's own
            # runtime sees a byte: a model that crashes or swamps it is refused here.
            measured = self._prove(content, what)
            self.budget.reserve(measured, what)
            reserved += measured
            interpreter, delegation = delegates.interpreter_with_delegate(
                content, self.config, what, create_interpreter)
            # The arena and the runtime's packed copies of weights come on top of the file:
            # an estimate from the tensors, for when the child measured less or nothing.
            tensors = sum(int(d["shape"].prod()) * d["dtype"](0).itemsize
                          for d in interpreter.get_tensor_details())
            self.budget.reserve(max(0, tensors - measured), what)
            reserved += max(0, tensors - measured)
            metrics = ModelMetrics(time.monotonic() - started, **package) \
                if self.config.edge_agent_metrics else None
            return LoadedModel(name, url, interpreter, footprint=reserved,
                               delegate=delegation.name, owner=caller.uid, metrics=metrics)
        except UnicodeDecodeError:  # the runtime decodes tensor names as UTF-8
            self.budget.release(reserved)
            raise failed_precondition(
                f"{what}: the model's tensor names are not valid UTF-8, which the API cannot "
                "carry: the file is corrupt, or rename its tensors") from None
        except BaseException:
            self.budget.release(reserved)
            raise

    def _prove(self, content: bytes, what: str) -> int:
        """Bytes the model costs the runtime beyond the file, measured in a child process
        (prover) allowed what the memory budget has free; 0 for a model that cannot be
        proven apart from the agent (one compiled for an Edge TPU the agent holds)."""
        if holds_edgetpu(self.config) and delegates.needs_edgetpu(content):
            log.info("%s: compiled for the Edge TPU, which one process holds at a time: "
                     "loaded without a check in a separate process", what)
            return 0
        proof = self.prover.prove(content, self.config, what,
                                  memory_limit=self.budget.free + len(content))
        log.info("%s: checked in a separate process in %.2f s; the runtime needed %.1f MiB",
                 what, proof.seconds, proof.peak_bytes / 2**20)
        return max(0, proof.peak_bytes - len(content))

    def _read_model(self, source: ModelSource, what: str, caller: Caller,
                    package: dict) -> bytes:
        path = source.path
        try:
            st = os.fstat(source.fd)
            if stat.S_ISDIR(st.st_mode):
                return self._read_package(source, what, caller, package)
            if not stat.S_ISREG(st.st_mode):
                raise failed_precondition(not_regular(path, st.st_mode))
            if not looks_like_tflite(os.pread(source.fd, 8, 0)):
                return self._read_package(source, what, caller, package)
            if not self.config.edge_agent_allow_unsigned_models:
                raise failed_precondition(
                    f"'{shown(path)}' is an unsigned .tflite file, and unsigned .tflite models are "
                    "not allowed: load a signed package, or set "
                    "edge_agent_allow_unsigned_models to true")
            # Refuse an oversized file before reading it into memory.
            self.budget.check(st.st_size, what)
            # Read once: the child and the agent's runtime both get exactly these bytes.
            content = read_at_most(source.fd, st.st_size)
        except OSError as e:
            raise failed_precondition(f"cannot read '{shown(path)}': {e.strerror}") from None
        if not looks_like_tflite(content):
            raise failed_precondition(f"'{shown(path)}' is not a TensorFlow Lite model")
        return content

    def _read_package(self, source: ModelSource, what: str, caller: Caller,
                      found: dict) -> bytes:
        """The model bytes of a signed package, verified: the same bytes that were hashed;
        every file in it readable by the caller."""
        from edge_agent.archive import Limits
        from edge_agent.packages import open_package  # PyNaCl: only once a package comes

        config = self.config
        path, copy = source.proc_path, None
        if source.passed:
            # Reopening /proc/self/fd/N would check the agent's own rights to the client's
            # file: the archive is read through the descriptor into a private copy instead.
            size = os.fstat(source.fd).st_size
            if size > config.edge_agent_max_package_bytes:
                raise failed_precondition(
                    f"{what}: the package passed as {source.path} is {size} bytes, more than "
                    f"edge_agent_max_package_bytes ({config.edge_agent_max_package_bytes})")
            path = copy = copy_to_private_file(
                source.fd, size, os.path.join(config.edge_agent_state_dir, "passed"))
        try:
            package = open_package(
                path, config.sagemaker_edge_core_root_certs_path,
                os.path.join(config.edge_agent_state_dir, "packages"),
                Limits(config.edge_agent_max_package_bytes, config.edge_agent_max_package_files),
                check_size=lambda size: self.budget.check(size, what), label=source.path,
                may_read=None if caller_paths.trusted(caller) or source.passed
                else lambda st: caller_paths.may_read(caller, st),
                # A package built for the Edge TPU is accepted only where this agent runs one.
                delegate=DelegateSettings(config.edge_agent_delegate,
                                          config.edge_agent_delegate_options))
        finally:
            if copy is not None:
                os.unlink(copy)
        manifest = package.manifest
        log.info("%s: package %s %s for %s, signed by key %s", what, manifest.name,
                 manifest.version, manifest.target, package.key_id)
        found.update(package_name=manifest.name, package_version=manifest.version)
        return package.model

    def unload_model(self, request: pb.UnLoadModelRequest, caller: Caller = IN_PROCESS) -> pb.UnLoadModelResponse:
        check_model_name(request.name)
        with self._lock:
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
        return pb.UnLoadModelResponse()

    def list_models(self, request: pb.ListModelsRequest | None = None,
                    caller: Caller = IN_PROCESS) -> pb.ListModelsResponse:
        with self._lock:
            models = sorted(self._models.values(), key=lambda m: m.name)
        return pb.ListModelsResponse(models=[self._describe(m, caller) for m in models])

    def describe_model(self, request: pb.DescribeModelRequest, caller: Caller = IN_PROCESS) -> pb.DescribeModelResponse:
        return pb.DescribeModelResponse(model=self._describe(self._model(request.name), caller))

    # --- data plane ---------------------------------------------------------------------------

    def predict(self, request: pb.PredictRequest, caller: Caller = IN_PROCESS) -> pb.PredictResponse:
        """Predict from a decoded request: the reference the compiled path (predict_wire) is
        held to, and the path for requests it leaves to protobuf."""
        return self._predict(request.name, [wire_tensor(t) for t in request.tensors],
                             [handle_of(h) for h in request.output_handles], caller,
                             _pb_response)

    def predict_wire(self, body, caller: Caller = IN_PROCESS) -> bytes | None:
        """Predict from the serialized PredictRequest (bytes or a memoryview of the frame) to
        the serialized PredictResponse, without protobuf objects (edge_agent.predict_codec);
        None for a request the codec leaves to protobuf (unknown fields, merged messages,
        malformed bytes): the caller then decodes it and calls predict()."""
        decoded = predict_codec.decode_request(body)
        if decoded is None:
            return None
        name, tensors, output_handles = decoded
        return self._predict(name, tensors, output_handles, caller,
                             predict_codec.encode_response)

    def _predict(self, name: str, tensors: list, output_handles: list, caller: Caller,
                 encode: Callable[[list], object]):
        started = time.perf_counter()
        model = self._model(name)
        predicted = False  # counted OK by the model; the shared memory may yet prove truncated
        try:
            if output_handles or _any_shared(tensors):
                with self.shm.call(caller) as shm:
                    writer = (shm.output_writer(output_handles, model.outputs)
                              if output_handles else None)
                    result = model.predict(tensors, encode, reader=shm.read, writer=writer,
                                           started=started)
                    predicted = True
            else:  # no shared-memory call context where no handle is present
                result = model.predict(tensors, encode, started=started)
        except AgentError as e:
            model.count_failure(e.code, predicted)
            raise
        except Exception:
            model.count_failure(StatusCode.INTERNAL, predicted)
            raise
        return result

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
        return self.metrics.snapshot(models, self.budget, self.capture, self.config)

    # --- helpers ----------------------------------------------------------------------------

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
        if not self._may_manage(model, caller):
            described.url = ""  # where another user's model lives is that user's business
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


def _any_shared(tensors) -> bool:
    """Whether a tensor comes through shared memory: a loop, not any() over a generator,
    which costs three Python calls on every Predict."""
    for tensor in tensors:
        if tensor.kind == SHARED_MEMORY:
            return True
    return False
