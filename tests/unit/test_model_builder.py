"""Every model from edge_agent.tools.model_builder runs in the TFLite runtime the agent uses
(tflite-runtime or LiteRT, edge_agent.platform.runtime decides) and matches its reference."""
from __future__ import annotations

import numpy as np
import pytest
import tflite

from edge_agent.platform.runtime import interpreter_module
from edge_agent.tools import model_builder as mb
from edge_agent.tools.model_builder import BuiltModel, BuiltTensor

# Float outputs may differ from the float64-accumulated references by rounding only.
_RTOL = 1e-5
_ATOL = 1e-5

_RUNNABLE_MODELS = {
    "add": mb.add_model,
    "add_3d": lambda: mb.add_model((2, 3, 5)),
    "fully_connected": mb.fully_connected_model,
    "quantized_add_uint8": lambda: mb.quantized_add_model(np.uint8),
    "quantized_add_int8": lambda: mb.quantized_add_model(np.int8),
    "multi_output": mb.multi_output_model,
    "dynamic_batch": mb.dynamic_batch_model,
    "image": mb.image_model,
    "slow": mb.slow_model,
    "tiny": mb.tiny_model,
    "demo": mb.demo_model,
    **{
        f"reshape_{dtype.name}": (lambda dtype=dtype: mb.reshape_model(dtype))
        for dtype in mb.IDENTITY_DTYPES
    },
}


def _new_interpreter(**source):
    """An interpreter of the runtime the agent would use, not one named here."""
    return interpreter_module().Interpreter(**source)


def _interpreter(model: BuiltModel):
    interpreter = _new_interpreter(model_content=model.content)
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], inputs[detail["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def _assert_matches(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        if want.dtype.kind in "biu":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=_RTOL, atol=_ATOL, err_msg=name)


def _assert_details_match(details: list[dict], specs: tuple[BuiltTensor, ...]) -> None:
    assert [d["name"] for d in details] == [s.name for s in specs]
    for detail, spec in zip(details, specs):
        assert np.dtype(detail["dtype"]) == spec.dtype, spec.name
        assert tuple(detail["shape_signature"]) == spec.shape, spec.name
        assert tuple(detail["shape"]) == spec.concrete_shape(batch=1), spec.name
        assert detail["quantization"] == (spec.quantization or (0.0, 0)), spec.name


@pytest.fixture(scope="module", params=sorted(_RUNNABLE_MODELS))
def model(request: pytest.FixtureRequest) -> BuiltModel:
    return _RUNNABLE_MODELS[request.param]()


def test_details_match_specs(model: BuiltModel) -> None:
    interpreter = _interpreter(model)
    _assert_details_match(interpreter.get_input_details(), model.inputs)
    _assert_details_match(interpreter.get_output_details(), model.outputs)


def test_outputs_match_reference(model: BuiltModel) -> None:
    inputs = model.sample_inputs(seed=1)
    _assert_matches(_run(_interpreter(model), inputs), model.reference(inputs))


def test_flatbuffer_layout(model: BuiltModel) -> None:
    parsed = tflite.Model.GetRootAs(model.content)
    assert model.content[4:8] == b"TFL3"
    assert parsed.Version() == 3
    assert parsed.Description()
    assert parsed.Buffers(0).DataLength() == 0
    # Constant data starts 16-byte aligned within the flatbuffer.
    base = np.frombuffer(model.content, np.uint8).ctypes.data
    for index in range(1, parsed.BuffersLength()):
        assert (parsed.Buffers(index).DataAsNumpy().ctypes.data - base) % 16 == 0


def test_dynamic_batch_resizes() -> None:
    model = mb.dynamic_batch_model()
    assert model.inputs[0].shape == (-1, 4)
    interpreter = _new_interpreter(model_content=model.content)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [3, 4], strict=True)
    interpreter.allocate_tensors()
    inputs = model.sample_inputs(batch=3)
    assert inputs["x"].shape == (3, 4)
    outputs = _run(interpreter, inputs)
    assert outputs["y"].shape == (3, 4)
    _assert_matches(outputs, model.reference(inputs))


def test_custom_op_fails_to_load() -> None:
    model = mb.custom_op_model("SomeMissingOp")
    interpreter = _new_interpreter(model_content=model.content)
    with pytest.raises(RuntimeError, match="Encountered unresolved custom op: SomeMissingOp"):
        interpreter.allocate_tensors()


def test_quantized_add_really_requantizes() -> None:
    # Guards against a reference that would pass by ignoring scales/zero points.
    model = mb.quantized_add_model(np.uint8)
    a = np.full((1, 8), 148, np.uint8)  # real 1.0
    b = np.full((1, 8), 120, np.uint8)  # real 2.0
    np.testing.assert_array_equal(model.reference({"a": a, "b": b})["sum"], np.full((1, 8), 134))  # real 3.0


@pytest.mark.parametrize("dtype", [np.uint16, np.str_, np.object_])
def test_reshape_model_rejects_unsupported_dtypes(dtype: type) -> None:
    with pytest.raises(ValueError):
        mb.reshape_model(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_quantized_add_model_rejects_other_dtypes(dtype: type) -> None:
    with pytest.raises(ValueError):
        mb.quantized_add_model(dtype)


def test_image_model_input_size() -> None:
    spec = mb.image_model().inputs[0]
    assert spec.dtype.itemsize * np.prod(spec.shape) == 602112


def test_demo_scores_are_probabilities() -> None:
    model = mb.demo_model()
    scores = _run(_interpreter(model), model.sample_inputs())["scores"]
    assert scores.shape == (1, 3)
    assert scores.sum() == pytest.approx(1.0, abs=1e-6)


def test_write_and_sample_inputs(tmp_path) -> None:
    model = mb.tiny_model()
    path = model.write(tmp_path / "tiny.tflite")
    assert path.read_bytes() == model.content
    first, again = model.sample_inputs(seed=5), model.sample_inputs(seed=5)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert _new_interpreter(model_path=str(path)).get_input_details()[0]["name"] == "a"
