# cython: language_level=3, boundscheck=False, wraparound=False
"""A loaded model's plain Predict in one compiled call: the common case of every Predict
(inline inputs of exactly the model's shapes and types, no output handles, the model at its
load shapes), decoded, matched, set, invoked, encoded and counted with no Python frame; only
the runtime's own calls (set_tensor, invoke, the output views) and the codec's are made.

The twin of edge_agent/models/_plain_call_py.py (the same steps through LoadedModel.run):
a change here is made there too; tests/unit/test_plain_call.py runs both. Anything else is
not answered here (None, with nothing done): the engine's general path binds, resizes,
checks and refuses it, with the only messages.
"""
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from weakref import ref

from edge_agent.protocol.predict_codec import decode_request, encode_response, plain_inputs

cdef enum:
    # Inputs set_tensor would copy twice (read-only or misaligned) from this size up go to
    # the general path, which copies them straight into the runtime's buffer
    # (edge_agent.models.engine._DIRECT_COPY_BYTES).
    DIRECT_COPY_BYTES = 16 * 1024


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class PlainCall:
    """The plain Predict of one LoadedModel (edge_agent.models.engine), made once at load."""

    # The model by a weak reference: it holds this object, and an unloaded model's
    # interpreter (and its delegates) must go when the last call on it ends, not at the next
    # garbage collection.
    cdef object _model_ref, _lock, _runtime
    # The runtime's own binding is called directly (SetTensor, Invoke, tensor: what its
    # Interpreter's methods call, without their Python frames) when it has them; its
    # Interpreter's check before invoke (no view of its buffers alive) holds here by
    # construction: the views are dropped before the model's lock is released. The binding is
    # looked up per call, never kept: that check counts its references.
    cdef bint _direct
    cdef str _name
    cdef tuple _indices, _outputs, _specs
    cdef dict _positions
    # Per call, filled by _invoke_locked.
    cdef double _invoke_seconds
    cdef unsigned long long _input_bytes, _output_bytes

    def __cinit__(self, model, interpreter):
        self._model_ref = ref(model)
        self._name = model.name
        self._lock = model._lock
        self._runtime = interpreter
        binding = getattr(interpreter, "_interpreter", None)
        self._direct = all(hasattr(binding, name) for name in ("SetTensor", "Invoke", "tensor"))
        self._indices = tuple(spec.index for spec in model.inputs)
        self._outputs = tuple((spec.index, spec.name_bytes, spec.data_type)
                              for spec in model.outputs)
        self._positions, self._specs = model.plain_match

    def answer(self, body, double started):
        """The serialized PredictResponse to a PredictRequest `body` for this model, when it
        is plain; None otherwise (nothing run). Raises what the runtime raised."""
        decoded = decode_request(body)
        if decoded is None:
            return None
        name, tensors, output_handles = <tuple>decoded
        if output_handles or name != self._name:
            return None
        return self.run(tensors, started)

    def run(self, tensors, double started):
        """The serialized PredictResponse for decoded inputs ([WireTensor]) when they are
        plain, else None (nothing run). `started`: the request's arrival, CLOCK_MONOTONIC
        seconds (time.perf_counter() or time.monotonic() on Linux), for the metrics."""
        cdef list arrays = plain_inputs(tensors, self._positions, self._specs)
        cdef Py_ssize_t i
        if arrays is None:
            return None
        for i in range(len(arrays)):
            array = arrays[i]
            if not array.flags.carray and array.nbytes >= DIRECT_COPY_BYTES:
                return None
        model = self._model_ref()
        if model is None:  # (only a caller that kept this object past its model)
            return None
        metrics = model.metrics
        self._lock.acquire()
        try:
            if model._resized:  # another call's shapes: the general path fits them back
                return None
            # Every reference to the runtime's buffers and binding is gone when this returns
            # (its locals die with it), before the lock is released.
            reply = self._invoke_locked(arrays, metrics is not None)
            if metrics is not None:
                metrics.succeeded(started, self._invoke_seconds, 0, self._input_bytes,
                                  self._output_bytes)
        finally:
            self._lock.release()
        return reply

    cdef object _invoke_locked(self, list arrays, bint timed):
        """Set, invoke, encode; under the model's lock."""
        cdef Py_ssize_t i
        cdef double invoke_started
        cdef unsigned long long input_bytes = 0, output_bytes = 0
        cdef list outputs = []
        cdef tuple output
        runtime = self._runtime
        if self._direct:
            binding = runtime._interpreter
            set_tensor = binding.SetTensor
            invoke = binding.Invoke
        else:
            binding = None
            set_tensor = runtime.set_tensor
            invoke = runtime.invoke
        for i in range(len(arrays)):
            array = arrays[i]
            input_bytes += array.nbytes
            set_tensor(self._indices[i], array)
        array = None
        if timed:
            invoke_started = _now()
            invoke()
            self._invoke_seconds = _now() - invoke_started
        else:
            invoke()
        try:
            for item in self._outputs:
                output = <tuple>item
                if binding is not None:
                    view = binding.tensor(binding, output[0])
                else:
                    view = runtime.tensor(output[0])()
                output_bytes += view.nbytes
                outputs.append((output[1], output[2], view.shape, view))
                view = None
            reply = encode_response(outputs)
        finally:
            # The runtime refuses to invoke while views into its buffers live.
            view = None
            outputs.clear()
        self._input_bytes = input_bytes
        self._output_bytes = output_bytes
        return reply
