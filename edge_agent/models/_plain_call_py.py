"""The pure-Python twin of cext/_plain_call.pyx: a loaded model's plain Predict (inline inputs
of exactly the model's shapes and types, no output handles) through LoadedModel.run, the same
steps the compiled one takes in one call. A change there is made here too;
tests/unit/test_plain_call.py runs both."""
from __future__ import annotations

import weakref
from typing import Any

from edge_agent.protocol.predict_codec import decode_request, encode_response, plain_inputs

# edge_agent.models.engine._DIRECT_COPY_BYTES: larger read-only or misaligned inputs are the
# general path's, which copies them straight into the runtime's buffer.
DIRECT_COPY_BYTES = 16 * 1024


class PlainCall:
    """The plain Predict of one LoadedModel (edge_agent.models.engine), made once at load."""

    __slots__ = ("_model", "_name", "_positions", "_specs")

    def __init__(self, model: Any, interpreter: Any):
        # Weak: the model holds this object; a cycle would keep an unloaded model until the
        # garbage collector runs (the compiled class's comment).
        self._model = weakref.ref(model)
        self._name = model.name
        self._positions, self._specs = model.plain_match

    def answer(self, body: Any, started: float) -> bytes | None:
        """The serialized PredictResponse to a PredictRequest `body` for this model, when it
        is plain; None otherwise (nothing run). Raises what the runtime raised."""
        decoded = decode_request(body)
        if decoded is None:
            return None
        name, tensors, output_handles = decoded
        if output_handles or name != self._name:
            return None
        return self.run(tensors, started)

    def run(self, tensors: Any, started: float) -> bytes | None:
        """The serialized PredictResponse for decoded inputs when they are plain, else None
        (nothing run). `started`: the request's arrival (CLOCK_MONOTONIC seconds)."""
        arrays = plain_inputs(tensors, self._positions, self._specs)
        if arrays is None:
            return None
        if any(not a.flags.carray and a.nbytes >= DIRECT_COPY_BYTES for a in arrays):
            return None
        model = self._model()  # (None: no caller without the model, never)
        if model is None or model._resized:  # read without the lock: run() fits them back
            return None
        with model.run(arrays, False, 0, None, started) as outputs:
            return encode_response(outputs)
