"""A loaded model's plain Predict (edge_agent.models.plain_call.PlainCall): every test runs on
both, the compiled class (cext/_plain_call.pyx) and its pure-Python twin
(edge_agent/models/_plain_call_py.py). It answers what the engine's general path (bind, run,
the codec's encoder) answers, byte for byte, for a plain request; for anything else it
returns None having run and counted nothing, and the model goes on serving; what the
runtime raises reaches the caller with the model's lock released and no view of the
runtime's buffers alive."""
from __future__ import annotations

import gc
import importlib
import sys
import time
import weakref

import numpy as np
import pytest
from calls import assert_outputs_match
from wire import add_array

from edge_agent import agent_pb2 as pb
from edge_agent import pure_python
from edge_agent.models import _plain_call_py, engine, plain_call
from edge_agent.models.engine import LoadedModel, create_interpreter
from edge_agent.observe.metrics import ModelMetrics
from edge_agent.protocol import predict_codec
from edge_agent.protocol.tensors import add_tensor
from edge_agent.tools import model_builder

TWINS = ["compiled", "python"]
# Every test runs on each class by itself: the EDGE_AGENT_PUREPYTHON pass would repeat them.
pytestmark = pytest.mark.twins


@pytest.fixture(params=TWINS)
def plain_class(request):
    """Each class in turn."""
    if request.param == "python":
        return _plain_call_py.PlainCall
    try:
        return importlib.import_module("edge_agent.models._plain_call").PlainCall
    except ImportError:
        pytest.skip("no compiled build")


@pytest.mark.skipif(pure_python(), reason="EDGE_AGENT_PUREPYTHON forces the twin")
def test_the_compiled_plain_call_is_the_one_in_use():
    from edge_agent.models import _plain_call

    assert _plain_call.__file__.endswith(".so")
    assert plain_call.PlainCall is _plain_call.PlainCall
    assert engine.PlainCall is _plain_call.PlainCall


class Interpreter:
    """The runtime's interpreter, counting its invokes; `failures`: how many of the next
    invokes raise as the runtime raises (RuntimeError), without running."""

    def __init__(self, real):
        self._real = real
        self.invokes = 0
        self.failures = 0

    def invoke(self):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Node number 0 (ADD) failed to invoke.")
        self.invokes += 1
        self._real.invoke()

    def __getattr__(self, name):
        if name == "_interpreter":  # no binding to call directly: invoke() above is called
            raise AttributeError(name)
        return getattr(self._real, name)


def loaded(built: model_builder.BuiltModel, cls, name: str = "m") -> LoadedModel:
    """`built` loaded as the service loads it (metrics kept), its plain call of `cls` over an
    Interpreter that counts invokes (model._interpreter)."""
    model = LoadedModel(name, f"file:///{name}", create_interpreter(built.content, 1),
                        footprint=0, metrics=ModelMetrics())
    model._interpreter = Interpreter(model._interpreter)
    model.plain_call = cls(model, model._interpreter)
    return model


def request(name: str, inputs: dict, named: bool = True) -> bytes:
    """A serialized PredictRequest of inline byte_data with full metadata (unnamed: matched
    by position)."""
    message = pb.PredictRequest(name=name)
    for key, array in inputs.items():
        add_array(message.tensors, key if named else "", array)
    return message.SerializeToString()


def general(model: LoadedModel, body: bytes) -> bytes:
    """What the engine's general path answers: every input bound and checked, the model run
    (resized as needed), the outputs encoded."""
    _, tensors, _ = predict_codec.decode_request(body)
    arrays, _ = model.bind(tensors)
    with model.run(arrays, True) as outputs:
        return predict_codec.encode_response(outputs)


def outputs_of(reply: bytes) -> dict:
    response = pb.PredictResponse.FromString(reply)
    return {bytes(t.tensor_metadata.name).decode(): np.frombuffer(t.byte_data, np.float32).reshape(
        tuple(t.tensor_metadata.shape)) for t in response.tensors}


def counted(model: LoadedModel) -> tuple[int, int, int]:
    """(successful predictions, input bytes, output bytes) the model's metrics hold."""
    predict, _, invoke, _, input_bytes, output_bytes, shared = model.metrics.counters.state()
    assert sum(predict) == sum(invoke) and shared == 0
    return sum(predict), input_bytes, output_bytes


def assert_free(model: LoadedModel) -> None:
    """The model's lock is not held and no view of the runtime's buffers is alive."""
    assert model._lock.acquire(blocking=False), "the model's lock was left held"
    model._lock.release()
    model.wait_idle()
    assert model._interpreter._safe_to_run(), "a view of the runtime's buffers is alive"


@pytest.mark.parametrize("build", [model_builder.tiny_model, model_builder.add_model,
                                   model_builder.multi_output_model,
                                   model_builder.fully_connected_model])
def test_a_plain_request_is_answered_as_the_general_path_answers_it(plain_class, build):
    built = build()
    model = loaded(built, plain_class)
    for seed in range(3):
        inputs = built.sample_inputs(seed=seed)
        for named in (True, False):
            body = request("m", inputs, named)
            reply = model.plain_call.answer(body, time.perf_counter())
            assert reply is not None
            assert reply == general(model, body)
            assert_outputs_match(built, inputs, outputs_of(reply))
            assert_free(model)
    # Inputs named in another order than the model's are matched by name.
    inputs = built.sample_inputs(seed=7)
    body = request("m", dict(reversed(list(inputs.items()))))
    assert model.plain_call.answer(body, time.perf_counter()) == general(model, body)
    # Without metadata (optional in the original API) the model's own shapes are meant.
    message = pb.PredictRequest(name="m")
    for array in inputs.values():
        message.tensors.add(byte_data=array.tobytes())
    body = message.SerializeToString()
    reply = model.plain_call.answer(body, time.perf_counter())
    assert reply is not None and reply == general(model, body)
    assert_outputs_match(built, inputs, outputs_of(reply))


def test_run_takes_decoded_tensors_as_the_service_passes_them(plain_class):
    built = model_builder.add_model()
    model = loaded(built, plain_class)
    inputs = built.sample_inputs(seed=1)
    _, tensors, _ = predict_codec.decode_request(request("m", inputs))
    reply = model.plain_call.run(tensors, time.perf_counter())
    assert_outputs_match(built, inputs, outputs_of(reply))
    # run() is the service's, which checked the name already: the plain match is all it does.
    _, tensors, _ = predict_codec.decode_request(request("other", inputs))
    assert model.plain_call.run(tensors, time.perf_counter()) == reply
    _, tensors, _ = predict_codec.decode_request(request("m", {"a": inputs["a"]}))
    assert model.plain_call.run(tensors, time.perf_counter()) is None


def _not_plain(built: model_builder.BuiltModel) -> dict[str, bytes]:
    """Requests to the add model ("m": inputs a, b [1, 4] float32) that the plain call leaves
    to the general path, by what is wrong with them."""
    inputs = built.sample_inputs(seed=4)
    a, b = inputs["a"], inputs["b"]
    with_handles = pb.PredictRequest.FromString(request("m", inputs))
    with_handles.output_handles.add(fd_index=0, offset=0)
    mixed = pb.PredictRequest(name="m")
    add_array(mixed.tensors, "a", a)
    add_array(mixed.tensors, "", b)
    short = pb.PredictRequest(name="m")
    add_array(short.tensors, "a", a)
    add_tensor(short.tensors, b"b", pb.FLOAT32, [1, 4], b[:, :3].tobytes())
    body = request("m", inputs)
    return {
        "another model's name": request("other", inputs),
        "no name": request("", inputs),
        "a wrong shape": request("m", {"a": a.reshape(4, 1), "b": b}),
        "a larger shape": request("m", {"a": np.tile(a, (2, 1)), "b": np.tile(b, (2, 1))}),
        "a wrong dtype": request("m", {"a": a.astype(np.int32), "b": b}),
        "a float64 input": request("m", {"a": a, "b": b.astype(np.float64)}),
        "a missing input": request("m", {"a": a}),
        "an input too many": request("m", {"a": a, "b": b, "c": b}),
        "an unknown name": request("m", {"a": a, "c": b}),
        "named and unnamed inputs": mixed.SerializeToString(),
        "byte_data shorter than the shape": short.SerializeToString(),
        "output handles": with_handles.SerializeToString(),
        "a malformed body": b"\xff\xff\xff",
        "a body cut short": body[:-3],
        "an empty body": b"",
    }


def test_what_is_not_plain_is_left_to_the_general_path_with_nothing_run(plain_class):
    built = model_builder.add_model()
    model = loaded(built, plain_class)
    good = request("m", built.sample_inputs(seed=5))
    assert model.plain_call.answer(good, time.perf_counter()) is not None
    interpreter = model._interpreter
    for what, body in _not_plain(built).items():
        before, invokes = counted(model), interpreter.invokes
        assert model.plain_call.answer(body, time.perf_counter()) is None, what
        assert (counted(model), interpreter.invokes) == (before, invokes), what
        assert_free(model)
        # The model still answers.
        assert model.plain_call.answer(good, time.perf_counter()) is not None, what
    assert counted(model)[0] == 1 + len(_not_plain(built))


def test_a_duplicated_input_name_is_not_plain(plain_class):
    """Two tensors named "a" and none "b": the count is right, the names are not."""
    built = model_builder.add_model()
    model = loaded(built, plain_class)
    inputs = built.sample_inputs(seed=6)
    message = pb.PredictRequest(name="m")
    add_array(message.tensors, "a", inputs["a"])
    add_array(message.tensors, "a", inputs["b"])
    assert model.plain_call.answer(message.SerializeToString(), time.perf_counter()) is None
    assert counted(model)[0] == 0 and model._interpreter.invokes == 0


def test_a_model_resized_by_a_general_call_is_left_to_it_until_fitted_back(plain_class):
    """A dynamic-batch model run at batch 3 by the general path holds batch-3 tensors: a
    batch-1 request is not plain until the general path has fitted the model back."""
    built = model_builder.dynamic_batch_model()
    model = loaded(built, plain_class)
    one = built.sample_inputs(seed=1)
    three = built.sample_inputs(seed=2, batch=3)
    assert model.plain_call.answer(request("m", one), time.perf_counter()) is not None
    # A batch of 3 is not plain (not the load shape): the general path resizes the model.
    assert model.plain_call.answer(request("m", three), time.perf_counter()) is None
    reply = general(model, request("m", three))
    assert_outputs_match(built, three, outputs_of(reply))
    assert model._resized
    before, invokes = counted(model), model._interpreter.invokes
    assert model.plain_call.answer(request("m", one), time.perf_counter()) is None
    assert (counted(model), model._interpreter.invokes) == (before, invokes)
    assert_free(model)
    # The general path fits it back; then the plain call answers again, and right.
    general(model, request("m", one))
    assert not model._resized
    reply = model.plain_call.answer(request("m", one), time.perf_counter())
    assert reply == general(model, request("m", one))
    assert_outputs_match(built, one, outputs_of(reply))


def test_a_large_read_only_input_is_left_to_the_general_path(plain_class):
    """Bytes off the wire are a read-only view: set_tensor would copy them twice, the general
    path copies them once into the runtime's buffer (from 16 KiB on)."""
    big = model_builder.input_sink_model(16 * 1024 // 4)  # exactly 16 KiB
    model = loaded(big, plain_class)
    body = request("m", big.sample_inputs(seed=1))
    assert model.plain_call.answer(body, time.perf_counter()) is None
    assert counted(model)[0] == 0 and model._interpreter.invokes == 0
    assert_outputs_match(big, big.sample_inputs(seed=1), outputs_of(general(model, body)))
    small = model_builder.input_sink_model(16 * 1024 // 4 - 1)  # just under: plain
    model = loaded(small, plain_class)
    body = request("m", small.sample_inputs(seed=1))
    assert model.plain_call.answer(body, time.perf_counter()) == general(model, body)


def test_every_answered_call_is_counted_once(plain_class):
    built = model_builder.add_model()
    model = loaded(built, plain_class)
    calls = 5
    for seed in range(calls):
        started = time.perf_counter()
        assert model.plain_call.answer(request("m", built.sample_inputs(seed=seed)), started)
    # 2 inputs and 1 output of [1, 4] float32 each call.
    assert counted(model) == (calls, calls * 2 * 16, calls * 16)
    assert model._interpreter.invokes == calls
    message = pb.ModelMetrics()
    model.metrics.fill(message, True)
    assert [(p.code, p.count) for p in message.predictions] == [("OK", calls)]
    assert message.inline_inputs == 2 * calls
    assert message.predict_seconds.sum_seconds > 0
    # Without metrics (edge_agent_metrics off) it answers all the same.
    bare = LoadedModel("m", "file:///m", create_interpreter(built.content, 1), footprint=0)
    bare.plain_call = plain_class(bare, bare._interpreter)
    inputs = built.sample_inputs(seed=9)
    assert_outputs_match(built, inputs, outputs_of(
        bare.plain_call.answer(request("m", inputs), time.perf_counter())))


def test_a_runtime_failure_propagates_and_frees_the_model(plain_class):
    built = model_builder.add_model()
    model = loaded(built, plain_class)
    inputs = built.sample_inputs(seed=3)
    model._interpreter.failures = 1
    with pytest.raises(RuntimeError, match="failed to invoke"):
        model.plain_call.answer(request("m", inputs), time.perf_counter())
    assert counted(model)[0] == 0
    assert_free(model)
    reply = model.plain_call.answer(request("m", inputs), time.perf_counter())
    assert_outputs_match(built, inputs, outputs_of(reply))
    assert counted(model)[0] == 1


def test_a_failure_writing_the_reply_leaves_no_view_of_the_outputs(plain_class, monkeypatch):
    """The encoder raises with the output views made: they are all dropped before the lock
    is released, so the next call's invoke is not refused by the runtime."""
    built = model_builder.multi_output_model()
    model = loaded(built, plain_class)
    module = sys.modules[plain_class.__module__]
    seen: list[int] = []

    def refusing(outputs):
        seen.append(len(outputs))
        raise MemoryError("no room for the reply")

    monkeypatch.setattr(module, "encode_response", refusing)
    inputs = built.sample_inputs(seed=2)
    with pytest.raises(MemoryError):
        model.plain_call.answer(request("m", inputs), time.perf_counter())
    assert seen == [3]
    monkeypatch.undo()
    assert counted(model)[0] == 0
    assert_free(model)
    reply = model.plain_call.answer(request("m", inputs), time.perf_counter())
    assert_outputs_match(built, inputs, outputs_of(reply))
    assert counted(model)[0] == 1


def test_the_service_answers_its_plain_predicts_through_the_class(plain_class, monkeypatch,
                                                                   in_process, model_files):
    """AgentService.predict_call's plain branch is the model's plain call: the service's
    answers and counts through either class are the general path's."""
    monkeypatch.setattr(engine, "PlainCall", plain_class)
    built = model_builder.add_model()
    with in_process.client() as client:
        client.load_model("add", str(model_files["add"]))
        model = in_process.service.serving["add"]
        assert type(model.plain_call) is plain_class
        for seed in range(3):
            inputs = built.sample_inputs(seed=seed)
            assert_outputs_match(built, inputs, client.predict("add", inputs))
        [metrics] = in_process.service.get_metrics().models
    assert [(p.code, p.count) for p in metrics.predictions] == [("OK", 3)]
    assert metrics.input_bytes == 3 * 2 * 16


def test_a_model_let_go_is_freed_at_once_not_at_the_next_collection(plain_class):
    """The model holds its plain call: the plain call must not hold the model (a cycle), or
    an unloaded model's interpreter (its arena, its delegate) would live until the garbage
    collector happens to run."""
    built = model_builder.add_model()
    model = loaded(built, plain_class)
    assert model.plain_call.answer(request("m", built.sample_inputs()), time.perf_counter())
    gone = weakref.ref(model)
    gc.collect()
    gc.disable()  # freed by its reference count alone
    try:
        del model
        assert gone() is None, "the model is kept alive by a reference cycle"
    finally:
        gc.enable()


def test_the_runtime_binding_is_called_directly_and_never_kept():
    """With the runtime's real interpreter, the compiled class calls its binding (SetTensor,
    Invoke, tensor) directly; the binding's own check before an invoke (no reference to it
    but the interpreter's: its views and its methods all gone) then still passes, so the
    runtime's public calls work between plain calls."""
    Compiled = pytest.importorskip("edge_agent.models._plain_call").PlainCall
    built = model_builder.add_model()
    model = LoadedModel("m", "file:///m", create_interpreter(built.content, 1), footprint=0,
                        metrics=ModelMetrics())
    model.plain_call = Compiled(model, model._interpreter)
    for seed in range(3):
        inputs = built.sample_inputs(seed=seed)
        assert_outputs_match(built, inputs, outputs_of(
            model.plain_call.answer(request("m", inputs), time.perf_counter())))
        model._interpreter.invoke()  # the runtime's check: no reference to its buffers left
    assert counted(model)[0] == 3
