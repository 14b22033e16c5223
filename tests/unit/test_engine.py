"""edge_agent.models.engine.LoadedModel's predict path (bind, run): what holds across calls on
one model. The engine knows no codec: here the outputs are read inside the run, as the service
reads them to write its reply."""
from __future__ import annotations

import threading

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.models.engine import LoadedModel, create_interpreter
from edge_agent.protocol import predict_codec
from edge_agent.protocol.tensors import BYTE_DATA, WireTensor
from edge_agent.tools import model_builder


class CheckedLock:
    """The model's lock, checking as it is released that nothing holds a view of the
    runtime's buffers any more: the next call, on another thread, invokes at once, and the
    runtime refuses to while one lives."""

    def __init__(self, model: LoadedModel):
        self._lock = threading.Lock()
        self._model = model
        self.releases = 0
        self.unsafe = 0

    def acquire(self):
        self._lock.acquire()

    def release(self):
        self.releases += 1
        if not self._model._interpreter._safe_to_run():
            self.unsafe += 1
        self._lock.release()

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc):
        self.release()


def loaded(built: model_builder.BuiltModel) -> LoadedModel:
    return LoadedModel("m", "file:///m", create_interpreter(built.content, 1), footprint=0)


def wire(name: str, array: np.ndarray, with_name: bool = True) -> WireTensor:
    return WireTensor(name.encode() if with_name else b"", True, pb.FLOAT32, list(array.shape),
                      BYTE_DATA, memoryview(array.tobytes()))


def predicted(model: LoadedModel, tensors: list) -> bytes:
    """What the service does with a request's tensors: the plain match, else bind; then the
    reply written inside the run."""
    arrays = predict_codec.plain_inputs(tensors, *model.plain_match)
    checked = arrays is None
    if checked:
        arrays, _ = model.bind(tensors)
    with model.run(arrays, checked) as outputs:
        return predict_codec.encode_response(outputs)


def test_no_view_of_the_runtime_outlives_the_lock_on_any_path():
    built = model_builder.add_model()  # two inputs
    model = loaded(built)
    lock = model._lock = CheckedLock(model)
    inputs = built.sample_inputs(seed=2)
    plain = [wire(k, v) for k, v in inputs.items()]
    assert predict_codec.plain_inputs(plain, *model.plain_match) is not None
    unnamed = [wire(k, v, with_name=False)._replace(shape=[]) for k, v in inputs.items()]
    mixed = [plain[0], unnamed[1]]  # refused before the lock
    replies = []
    for tensors in (plain, unnamed, list(reversed(plain)), mixed, plain):
        try:
            replies.append(predicted(model, tensors))
        except Exception as e:  # noqa: BLE001 - only the mixed request is refused
            assert tensors is mixed, e
    assert len(set(replies)) == 1
    assert lock.releases == 4 and lock.unsafe == 0


def test_a_run_that_fails_inside_or_in_its_writer_leaves_no_view_and_frees_the_model():
    """The block reading the outputs raises, or the shared-memory writer refuses an output:
    the lock is released with no view of the runtime alive, and the next run goes on."""
    built = model_builder.add_model()
    model = loaded(built)
    lock = model._lock = CheckedLock(model)
    arrays, _ = model.bind([wire(k, v) for k, v in built.sample_inputs(seed=3).items()])
    try:
        with model.run(arrays) as outputs:
            assert len(outputs) == 1
            raise KeyError("the reader failed")
    except KeyError:
        pass

    def refusing(position, name, view):
        raise AgentError(StatusCode.INVALID_ARGUMENT, "no room for it")

    try:
        with model.run(arrays, writer=refusing):
            raise AssertionError("not entered: the writer refused")
    except AgentError as e:
        assert e.message == "no room for it"
    with model.run(arrays) as outputs:
        [(name, data_type, shape, view)] = outputs
        expected = built.reference(built.sample_inputs(seed=3))["sum"]
        assert (name, data_type, tuple(shape)) == (b"sum", pb.FLOAT32, expected.shape)
        np.testing.assert_allclose(view, expected, rtol=1e-6)
        del view
    assert outputs == []  # emptied as the run ended: no view left behind
    assert lock.releases == 3 and lock.unsafe == 0


def test_two_threads_on_one_model_take_turns_without_refusals():
    """Calls on one model from two threads, released together by a barrier: each answers
    as a call alone does (the lock serialises them; none finds a view of the other's)."""
    built = model_builder.add_model()
    model = loaded(built)
    inputs = built.sample_inputs(seed=5)
    expected = predicted(model, [wire(k, v) for k, v in inputs.items()])
    barrier = threading.Barrier(2)
    results: list = []
    errors: list = []

    def calls():
        barrier.wait()
        try:
            for _ in range(300):
                results.append(predicted(model, [wire(k, v) for k, v in inputs.items()]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=calls) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 600 and set(results) == {expected}
