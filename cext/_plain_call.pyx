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

    cdef object _model, _lock, _set_tensor, _invoke, _tensor
    cdef str _name
    cdef tuple _indices, _outputs, _specs
    cdef dict _positions

    def __cinit__(self, model, interpreter):
        # Weak: the model holds this object (LoadedModel.plain_call), and a cycle would keep
        # an unloaded model (its interpreter, arena and delegate) until the garbage collector
        # runs. Every caller holds the model while it calls.
        self._model = ref(model)
        self._name = model.name
        self._lock = model._lock
        self._set_tensor = interpreter.set_tensor
        self._invoke = interpreter.invoke
        self._tensor = interpreter.tensor
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
        cdef Py_ssize_t i, count
        cdef double invoke_started = 0.0, invoke_seconds = 0.0
        cdef unsigned long long input_bytes = 0, output_bytes = 0
        cdef list outputs
        cdef tuple output
        if arrays is None:
            return None
        count = len(arrays)
        for i in range(count):
            array = arrays[i]
            if not array.flags.carray and array.nbytes >= DIRECT_COPY_BYTES:
                return None
        model = self._model()
        if model is None:  # (no caller without the model: never)
            return None
        metrics = model.metrics
        self._lock.acquire()
        try:
            if model._resized:  # another call's shapes: the general path fits them back
                return None
            set_tensor = self._set_tensor
            for i in range(count):
                array = arrays[i]
                input_bytes += array.nbytes
                set_tensor(self._indices[i], array)
            if metrics is None:
                self._invoke()
            else:
                invoke_started = _now()
                self._invoke()
                invoke_seconds = _now() - invoke_started
            outputs = []
            try:
                for item in self._outputs:
                    output = <tuple>item
                    view = self._tensor(output[0])()
                    output_bytes += view.nbytes
                    outputs.append((output[1], output[2], view.shape, view))
                    view = None
                reply = encode_response(outputs)
            finally:
                # The runtime refuses to invoke while views into its buffers live.
                view = None
                outputs.clear()
            if metrics is not None:
                metrics.succeeded(started, invoke_seconds, 0, input_bytes, output_bytes)
        finally:
            self._lock.release()
        return reply
