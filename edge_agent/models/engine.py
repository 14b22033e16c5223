"""A loaded TensorFlow Lite model: its tensor metadata, and what a Predict asks of it: bind
the inputs to arrays, run the model, hold its outputs while the caller reads them. The wire
and its codec are the service's (edge_agent.api.service), not this module's.

One LoadedModel wraps one interpreter. Calls on it are serialised by its own lock; calls on
different models run in parallel, because the runtime releases the GIL while it invokes.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from traceback import clear_frames
from typing import Sequence

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.errors import (AgentError, StatusCode, failed_precondition, invalid_argument,
                               resource_exhausted)
from edge_agent.models.plain_call import PlainCall
from edge_agent.platform.runtime import interpreter_module
from edge_agent.protocol.tensors import (SHARED_MEMORY, WireTensor, byte_length, checked_array,
                               data_type_name, data_type_of, describe, format_shape,
                               tensor_data)

# What the runtime says when a model needs an op it does not have.
_MISSING_OP = re.compile(
    r"unresolved custom op: (?P<custom>[^.\s]+)"
    r"|Didn't find op for builtin opcode '(?P<builtin>[^']+)'(?: version '(?P<version>\d+)')?")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model as the wire sees it."""
    name: str
    name_bytes: bytes
    position: int               # place among the model's inputs or outputs
    index: int                  # the interpreter's tensor index
    dtype: np.dtype
    data_type: int              # wire DataType
    signature: tuple[int, ...]  # -1 where the dimension is dynamic
    shape: tuple[int, ...]      # the shape at load: what a request without a shape means
    # Derived once, not per call: the predict path compares against these. A spec never
    # changes after load, so calls may read it without the model's lock.
    shape_list: list[int] = field(init=False)
    nbytes: int = field(init=False)
    role: str = "input"  # "input" or "output", as error messages name it
    what: str = field(init=False)  # e.g. "input 'x'", the subject of its error messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape_list", list(self.shape))
        object.__setattr__(self, "nbytes", byte_length(self.dtype, self.shape))
        object.__setattr__(self, "what", f"{self.role} '{self.name}'")

    @property
    def dynamic(self) -> bool:
        return -1 in self.signature

    def describe(self, shape: Sequence[int] | None = None) -> str:
        shape = self.shape if shape is None else shape
        return describe(self.data_type, shape, byte_length(self.dtype, shape))

    def metadata(self, shape: Sequence[int] | None = None) -> pb.TensorMetadata:
        return pb.TensorMetadata(name=self.name_bytes, data_type=self.data_type,
                                 shape=self.signature if shape is None else shape)


def _spec(detail: dict, role: str, position: int) -> TensorSpec:
    dtype = np.dtype(detail["dtype"])
    data_type = data_type_of(dtype)
    if data_type is None:
        raise failed_precondition(
            f"{role} '{detail['name']}' has type {dtype}, which the API cannot carry")
    shape = tuple(int(d) for d in detail["shape"])
    signature = tuple(int(d) for d in detail.get("shape_signature", shape)) or shape
    return TensorSpec(detail["name"], detail["name"].encode(), position, detail["index"], dtype,
                      data_type, signature, shape, role=role)


def _missing_op_message(error: Exception) -> str | None:
    match = _MISSING_OP.search(str(error))
    if match is None:
        return None
    if match["custom"]:
        return f"the model needs the custom op '{match['custom']}', which this runtime does not have"
    version = f" version {match['version']}" if match["version"] else ""
    return f"the model needs the builtin op {match['builtin']}{version}, which this runtime does not have"


def create_interpreter(content: bytes, num_threads: int, delegates: Sequence = (),
                       op_resolver_type=None):
    """A ready interpreter for the model bytes; FAILED_PRECONDITION naming what is wrong.
    `op_resolver_type`: the runtime's OpResolverType, None for its default."""
    Interpreter = interpreter_module().Interpreter
    resolver = {} if op_resolver_type is None else {"experimental_op_resolver_type": op_resolver_type}
    try:
        interpreter = Interpreter(model_content=content, num_threads=num_threads,
                                  experimental_delegates=list(delegates) or None, **resolver)
        interpreter.allocate_tensors()
    except MemoryError:  # std::bad_alloc: the model asks for more than this process may have
        raise resource_exhausted(
            "the runtime ran out of memory loading the model (std::bad_alloc): the model "
            "needs more memory than is free, or the file is corrupt") from None
    except (ValueError, RuntimeError) as e:
        reason = _missing_op_message(e)
        if reason is None:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"the runtime refused the model: {first_line}"
        raise failed_precondition(reason) from None
    return interpreter


# Inputs set_tensor would copy twice (read-only or misaligned) are, from this size up, copied
# into the interpreter's buffer directly; below it, the extra copy costs less than the view.
_DIRECT_COPY_BYTES = 16 * 1024


class LoadedModel:
    def __init__(self, name: str, url: str, interpreter, footprint: int, delegate: str = "",
                 owner: int = -1, metrics=None, version: str = "", key_id: str = ""):
        self.name = name
        self.url = url
        # The signed package's version and signing key's id; "" for a bare .tflite model.
        self.version = version
        self.key_id = key_id
        self.owner = owner          # uid of the caller that loaded it (edge_agent_model_access)
        self.footprint = footprint  # bytes reserved against the memory budget
        self.delegate = delegate    # what runs it (delegates.Delegation.name)
        self.source = "application"  # or "repository" (edge_agent.models.lifecycle)
        self.loaded_at = time.time()
        # edge_agent.observe.metrics.ModelMetrics; None: metrics are off.
        self.metrics = metrics
        self._interpreter = interpreter
        self._lock = threading.Lock()
        self.inputs = [_spec(d, "input", i) for i, d in enumerate(interpreter.get_input_details())]
        self.outputs = [_spec(d, "output", i) for i, d in enumerate(interpreter.get_output_details())]
        self._inputs_by_name = {spec.name_bytes: spec for spec in self.inputs}
        # The input shapes the interpreter has allocated now; read and changed under _lock.
        self._allocated = [spec.shape for spec in self.inputs]
        self._load_shapes = list(self._allocated)
        self._resized = False  # _allocated differs from the shapes at load; under _lock
        self._input_indices = tuple(spec.index for spec in self.inputs)
        # What predict_codec.plain_inputs matches a request's inputs against (the service's
        # plain match), derived once: (input name bytes -> place among the inputs, per input
        # (wire DataType, shape as a list, byte length, dtype, shape as a tuple)).
        self.plain_match = (
            {spec.name_bytes: spec.position for spec in self.inputs},
            tuple((spec.data_type, spec.shape_list, spec.nbytes, spec.dtype, spec.shape)
                  for spec in self.inputs))
        if metrics is not None:
            metrics.inputs_per_call = len(self.inputs)
        # The common Predict in one call (edge_agent.models.plain_call): the service's and the
        # framed front's inline answer.
        self.plain_call = PlainCall(self, interpreter)

    def wait_idle(self) -> None:
        """Return once the call running on this model (if any) has finished: after a swap,
        what ran on the old version is done. A call that took this model just before the
        swap and runs later still runs whole on it (its interpreter lives while referenced)."""
        with self._lock:
            pass

    def describe(self) -> pb.Model:
        return pb.Model(
            url=self.url, name=self.name,
            input_tensor_metadatas=[s.metadata() for s in self.inputs],
            output_tensor_metadatas=[s.metadata() for s in self.outputs],
            delegate=self.delegate, version=self.version)

    # --- predict ---------------------------------------------------------------------------
    # The service (edge_agent.api.service) matches a request's inputs to the model, runs it and
    # writes the reply: bind() checks inputs into arrays (the general path: the service's
    # codec matches plain inline inputs itself, against plain_match), run() sets them and
    # invokes, holding the model while the caller reads the outputs. No codec here.

    def bind(self, tensors: Sequence[WireTensor], reader=None) -> tuple[list[np.ndarray], int]:
        """The request's tensors as arrays in the model's input order, each checked, and how
        many of them came through shared memory; INVALID_ARGUMENT when they do not fit the
        model. `reader(handle, nbytes, what)` turns a shared-memory handle into a buffer;
        without one, such tensors are refused."""
        return self._bind_inputs(tensors, reader or _no_shared_memory)

    def run(self, arrays: list[np.ndarray], checked: bool = True, shared: int = 0,
            writer=None, started: float = 0.0) -> "Run":
        """`with model.run(arrays) as outputs:` the model run on `arrays` (its inputs in
        order: bind()'s, or the plain match's), held until the block ends.

        `outputs`: one (name bytes, wire DataType, shape, data) per model output, in order,
        where data is a view of the runtime's output buffer (valid only inside the block:
        read it, or copy it once, there) or, with a writer, the Handle it returned.
        `writer(position, name, array)`, when given, puts each output into shared memory and
        returns its Handle. `checked`: the arrays came from bind(), and may need the model
        resized (False: the plain match's, of the model's load shapes). `shared`: how many
        inputs came through shared memory; `started`: time.perf_counter() when the request
        arrived; both for the metrics, counted when the block ends without an exception."""
        run = _new(Run)  # not Run(...): one Python call fewer on every Predict
        run._model = self
        run._call = (arrays, checked, shared, writer, started)
        run._outputs = []
        return run

    def count_failure(self, code: int, after_success: bool = False) -> None:
        """Count a prediction that answered `code` (metrics.ModelMetrics.failed). Takes the
        lock: failures are off the hot path, and the counters are guarded by it."""
        if self.metrics is not None:
            with self._lock:
                self.metrics.failed(code, after_success)

    def _copy_input(self, index: int, array: np.ndarray) -> None:
        """One copy straight into the input buffer: set_tensor would first copy a read-only or
        misaligned array (a view of shared memory, bytes off the wire) into a fresh one."""
        target = self._interpreter.tensor(index)()
        try:
            np.copyto(target, array, casting="no")
        finally:
            del target  # the runtime refuses to invoke while views into its buffers live

    def _fit_shapes(self, arrays: Sequence[np.ndarray]) -> None:
        """Resize dynamic inputs to this call's shapes; the caller holds the lock."""
        resized = False
        for position, (spec, array) in enumerate(zip(self.inputs, arrays)):
            if array.shape != self._allocated[position]:
                self._interpreter.resize_tensor_input(spec.index, array.shape, strict=True)
                self._allocated[position] = array.shape
                resized = True
        if resized:
            self._resized = self._allocated != self._load_shapes
            try:
                self._interpreter.allocate_tensors()
            except RuntimeError as e:
                raise invalid_argument(f"model '{self.name}' cannot take these shapes: {e}") from None
            except MemoryError:  # std::bad_alloc
                raise resource_exhausted(
                    f"model '{self.name}': the runtime ran out of memory for these shapes; "
                    "send smaller ones") from None

    def _bind_inputs(self, tensors: Sequence[WireTensor], reader) -> tuple[list[np.ndarray], int]:
        """The request's tensors as arrays in the model's input order, each checked, and how
        many of them came through shared memory."""
        inputs = self.inputs
        if len(tensors) != len(inputs):
            names = ", ".join(s.name for s in inputs)
            raise invalid_argument(
                f"model '{self.name}' takes {len(inputs)} input(s) ({names}), got {len(tensors)}")
        # An unset tensor_metadata reads as the empty default name.
        names = [t.name for t in tensors]
        if all(names):
            specs = self._specs_by_name(names)
        elif not any(names):
            specs = inputs
        else:
            raise invalid_argument(
                "name every input tensor or none: inputs are matched by name when named, "
                "else by position")
        arrays: list = [None] * len(inputs)
        shared = 0
        for tensor, spec in zip(tensors, specs):
            shared += tensor.kind == SHARED_MEMORY
            arrays[spec.position] = self._to_array(tensor, spec, reader)
        return arrays, shared

    def _specs_by_name(self, names: Sequence[bytes]) -> list[TensorSpec]:
        specs = []
        for name in names:
            spec = self._inputs_by_name.get(name)
            if spec is None:
                known = ", ".join(s.name for s in self.inputs)
                raise invalid_argument(
                    f"model '{self.name}' has no input {name.decode('utf-8', 'replace')!r} "
                    f"(its inputs: {known})")
            specs.append(spec)
        if len(set(names)) != len(names):
            raise invalid_argument("an input tensor name is given more than once")
        return specs

    def _to_array(self, tensor: WireTensor, spec: TensorSpec, reader) -> np.ndarray:
        shape, nbytes = self._requested_shape(tensor, spec)
        data = tensor_data(tensor, nbytes, spec.what, reader)
        return checked_array(data, spec.what, spec.data_type, spec.dtype, shape, nbytes)

    def _requested_shape(self, tensor: WireTensor, spec: TensorSpec) -> tuple[tuple[int, ...], int]:
        """This call's shape and byte length: the request's, checked against the signature.

        Without metadata, or with metadata that gives no shape, the model's own shape is meant
        (the original API made the metadata optional in a PredictRequest).
        """
        if not tensor.has_metadata:
            return spec.shape, spec.nbytes
        if tensor.data_type != spec.data_type:
            raise invalid_argument(
                f"input '{spec.name}': expected {spec.describe()}, got "
                f"{data_type_name(tensor.data_type)}")
        requested = tensor.shape
        if not requested or requested == spec.shape_list:
            return spec.shape, spec.nbytes
        shape = tuple(requested)
        fits = len(shape) == len(spec.signature) and all(
            want in (-1, got) and got >= 0 for want, got in zip(spec.signature, shape))
        if not fits:
            raise invalid_argument(
                f"input '{spec.name}': expected shape {format_shape(spec.signature)}"
                f"{' (-1: any size)' if spec.dynamic else ''}, got {format_shape(shape)}")
        return shape, byte_length(spec.dtype, shape)


class Run:
    """One call's hold on a model (LoadedModel.run): entering takes the model's lock, sets the
    inputs, invokes and gathers the outputs; leaving drops every view of the runtime's buffers,
    counts the call and releases the lock. A class, not a generator: it is on every Predict."""

    __slots__ = ("_model", "_call", "_outputs", "_counted")
    _model: LoadedModel
    _call: tuple  # (arrays, checked, shared, writer, started): LoadedModel.run's arguments
    _outputs: list
    _counted: tuple  # (invoke seconds, input bytes, output bytes) for the metrics

    def __enter__(self) -> list:
        model = self._model
        arrays, checked, _, writer, _ = self._call
        interpreter = model._interpreter
        outputs = self._outputs
        view = None
        model._lock.acquire()
        try:
            if checked or model._resized:
                model._fit_shapes(arrays)
            input_bytes = 0
            set_tensor = interpreter.set_tensor
            for index, array in zip(model._input_indices, arrays):
                input_bytes += array.nbytes
                # set_tensor copies once more an array that is not a writable, aligned C
                # array (NumPy's CARRAY): a read-only view, or inline bytes at an offset of
                # the frame that is not a multiple of the element size.
                if array.flags.carray or array.nbytes < _DIRECT_COPY_BYTES:
                    set_tensor(index, array)
                else:
                    model._copy_input(index, array)
            metrics = model.metrics
            if metrics is None:
                interpreter.invoke()
            else:
                invoke_started = time.perf_counter()
                interpreter.invoke()
                invoke_seconds = time.perf_counter() - invoke_started
            output_bytes = 0
            for spec in model.outputs:
                view = interpreter.tensor(spec.index)()
                output_bytes += view.nbytes
                # No local name for the view beyond `view`, deleted below: every reference to
                # it must be gone before the lock is released (the next call on another thread
                # invokes, which the runtime refuses while a view lives).
                outputs.append((spec.name_bytes, spec.data_type, view.shape,
                                view if writer is None
                                else writer(spec.position, spec.name, view)))
            del view
            if metrics is not None:
                self._counted = (invoke_seconds, input_bytes, output_bytes)
        except BaseException as e:
            view = None  # noqa: F841 - this frame is in the traceback: it must not keep a view
            outputs.clear()
            # A refusing writer's frame, kept by the traceback, still names its view.
            clear_frames(e.__traceback__)
            model._lock.release()
            raise
        return outputs

    def __exit__(self, exc_type, exc, traceback) -> None:
        model = self._model
        # The runtime refuses to invoke while views into its buffers live: the caller's
        # `outputs` is this list, emptied.
        self._outputs.clear()
        if traceback is not None:  # the frames the reader left, e.g. an encoder that refused
            clear_frames(traceback)
        try:
            metrics = model.metrics
            if exc_type is None and metrics is not None:  # one C call (observe.metrics)
                _, _, shared, _, started = self._call
                invoke_seconds, input_bytes, output_bytes = self._counted
                metrics.succeeded(started, invoke_seconds, shared, input_bytes, output_bytes)
        finally:
            model._lock.release()


_new = object.__new__


def _no_shared_memory(handle, nbytes: int, name: str):
    """The reader of an engine called without one."""
    raise AgentError(StatusCode.UNIMPLEMENTED,
                     "shared-memory tensors are not supported by this agent")
