"""AgentService called in process, through the one RPC table (tests/unit/conftest.py): model
management and the engine's rules for inputs (by name or position, data types, dynamic shapes
resized per call) and their refusals, each with its status code. The same calls over a socket
are the integration tests' (tests/integration/test_app.py)."""
from __future__ import annotations

import numpy as np
import pytest
from calls import assert_outputs_match, expect_error, raw_predict
from fifo_helpers import fifo, returns

from edge_agent import agent_pb2 as pb
from edge_agent.errors import StatusCode
from edge_agent.tools import model_builder


def test_load_list_describe_unload(in_process, model_files):
    with in_process.client() as client:
        loaded = client.load_model("add", str(model_files["add"]))
        assert loaded.name == "add" and loaded.url == str(model_files["add"])
        assert [(t.name, t.dtype, t.shape) for t in loaded.inputs] == [
            ("a", np.float32, (1, 4)), ("b", np.float32, (1, 4))]
        assert [(t.name, t.shape) for t in loaded.outputs] == [("sum", (1, 4))]
        client.load_model("fc", "file://" + str(model_files["fc"]))
        assert [m.name for m in client.list_models()] == ["add", "fc"]
        assert client.describe_model("fc").inputs[0].shape == (1, 16)
        client.unload_model("add")
        assert [m.name for m in client.list_models()] == ["fc"]
        # Unloaded: the name is free again.
        client.load_model("add", str(model_files["add"]))


def test_dynamic_dimensions_are_described_as_minus_one(in_process, model_files):
    with in_process.client() as client:
        model = client.load_model("dyn", str(model_files["dynamic"]))
    assert model.inputs[0].shape == (-1, 4)


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a b", "ä", "a.b", "a/b"])
def test_invalid_model_names_are_refused_by_every_call(in_process, model_files, name):
    with in_process.client() as client:
        expect_error(StatusCode.INVALID_ARGUMENT, client.load_model, name, str(model_files["add"]),
                     match="is not valid")
        for call in (client.unload_model, client.describe_model):
            expect_error(StatusCode.INVALID_ARGUMENT, call, name)
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, name, [])


def test_valid_names_with_dashes(in_process, model_files):
    with in_process.client() as client:
        for name in ("a", "A1", "a-b", "a--b", "model-v2-final"):
            client.load_model(name, str(model_files["add"]))


def test_load_status_codes(in_process, model_files, tmp_path):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\0" * 64)
    with in_process.client() as client:
        expect_error(StatusCode.NOT_FOUND, client.load_model, "m", str(tmp_path / "missing.tflite"),
                     match="no model at")
        expect_error(StatusCode.NOT_FOUND, client.load_model, "m", f"file://{tmp_path}/missing")
        expect_error(StatusCode.INVALID_ARGUMENT, client.load_model, "m", "s3://bucket/model")
        expect_error(StatusCode.INVALID_ARGUMENT, client.load_model, "m", "https://x/model")
        expect_error(StatusCode.INVALID_ARGUMENT, client.load_model, "m", "")
        expect_error(StatusCode.FAILED_PRECONDITION, client.load_model, "m", str(garbage),
                     match="not a TensorFlow Lite model")
        expect_error(StatusCode.FAILED_PRECONDITION, client.load_model, "m", str(tmp_path),
                     match="directory")
        client.load_model("m", str(model_files["add"]))
        expect_error(StatusCode.ALREADY_EXISTS, client.load_model, "m", str(model_files["fc"]),
                     match="unload it first")
        assert [m.name for m in client.list_models()] == ["m"]


def test_loading_a_fifo_is_refused_and_frees_the_name(in_process, model_files, tmp_path):
    # Opening a FIFO waits for a writer: read as a model it would hang the load for ever and
    # keep the name reserved ("is loaded") for every later load.
    with in_process.client() as client, fifo(tmp_path / "model.tflite") as path:
        expect_error(StatusCode.FAILED_PRECONDITION, returns,
                     lambda: client.load_model("m", str(path)),
                     match=f"'{path}' is not a regular file (it is a FIFO)")
        returns(lambda: client.load_model("m", str(model_files["add"])))
        assert [m.name for m in client.list_models()] == ["m"]


def test_unsigned_models_are_refused_unless_allowed(start_in_process, model_files):
    agent = start_in_process(edge_agent_allow_unsigned_models=False)
    with agent.client() as client:
        expect_error(StatusCode.FAILED_PRECONDITION, client.load_model, "m",
                     str(model_files["add"]), match="edge_agent_allow_unsigned_models")


def test_memory_budget(start_in_process, model_files):
    agent = start_in_process(edge_agent_memory_budget_mb=40)
    with agent.client() as client:
        # slow_model holds 32 MiB of weights, which the runtime packs a second time.
        expect_error(StatusCode.RESOURCE_EXHAUSTED, client.load_model, "big",
                     str(model_files["slow"]), match="edge_agent_memory_budget_mb")
        assert client.list_models() == []
        client.load_model("small", str(model_files["add"]))  # what was reserved was given back
        for _ in range(3):  # load/unload cycles leak nothing from the budget
            client.load_model("fc", str(model_files["fc"]))
            client.unload_model("fc")
        expect_error(StatusCode.RESOURCE_EXHAUSTED, client.load_model, "big", str(model_files["slow"]))


def test_a_file_larger_than_the_budget_is_refused_before_reading(start_in_process, tmp_path):
    big = tmp_path / "big.tflite"
    with open(big, "wb") as f:
        f.write(b"\x1c\0\0\0TFL3")  # a .tflite file's identifier, then sparse zeros
        f.truncate(64 * 1024 * 1024)
    agent = start_in_process(edge_agent_memory_budget_mb=16)
    with agent.client() as client:
        expect_error(StatusCode.RESOURCE_EXHAUSTED, client.load_model, "big", str(big),
                     match="64.0 MiB")


def test_unload_and_describe_unknown_models(in_process, model_files):
    with in_process.client() as client:
        client.load_model("add", str(model_files["add"]))
        expect_error(StatusCode.NOT_FOUND, client.unload_model, "nope", match="loaded: add")
        expect_error(StatusCode.NOT_FOUND, client.describe_model, "nope")
        expect_error(StatusCode.NOT_FOUND, client.predict, "nope", [])


def test_predict_by_name_and_by_position(in_process, model_files):
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=3)
    with in_process.client() as client:
        client.load_model("add", str(model_files["add"]))
        assert_outputs_match(built, inputs, client.predict("add", inputs))
        reversed_names = dict(reversed(list(inputs.items())))
        assert_outputs_match(built, inputs, client.predict("add", reversed_names))
        assert_outputs_match(built, inputs, client.predict("add", [inputs["a"], inputs["b"]]))


@pytest.mark.parametrize("key", ["fc", "quant-uint8", "quant-int8", "multi", "demo"])
def test_predict_matches_numpy(in_process, model_files, key):
    builders = {"fc": model_builder.fully_connected_model,
                "quant-uint8": lambda: model_builder.quantized_add_model("uint8"),
                "quant-int8": lambda: model_builder.quantized_add_model("int8"),
                "multi": model_builder.multi_output_model,
                "demo": model_builder.demo_model}
    built = builders[key]()
    with in_process.client() as client:
        client.load_model(key, str(model_files[key]))
        for seed in range(3):
            inputs = built.sample_inputs(seed=seed)
            assert_outputs_match(built, inputs, client.predict(key, inputs))


@pytest.mark.parametrize("dtype", [d for d in model_builder.IDENTITY_DTYPES],
                         ids=lambda d: np.dtype(d).name)
def test_every_data_type_round_trips(in_process, tmp_path, dtype):
    built = model_builder.reshape_model(dtype)
    with in_process.client() as client:
        model = client.load_model("r", str(built.write(tmp_path / "r.tflite")))
        assert model.inputs[0].dtype == np.dtype(dtype)
        inputs = built.sample_inputs(seed=1)
        assert_outputs_match(built, inputs, client.predict("r", inputs))


def test_dynamic_batch_is_resized(in_process, model_files):
    built = model_builder.dynamic_batch_model()
    with in_process.client() as client:
        client.load_model("dyn", str(model_files["dynamic"]))
        for batch in (1, 5, 2, 5):
            inputs = built.sample_inputs(seed=batch, batch=batch)
            outputs = client.predict("dyn", inputs)
            assert outputs["y"].shape == (batch, 4)
            assert_outputs_match(built, inputs, outputs)
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, "dyn",
                     [np.zeros((2, 5), np.float32)], match="expected shape [-1,4]")


def test_tensors_without_metadata_are_taken_by_position(in_process, model_files):
    built = model_builder.add_model()
    inputs = built.sample_inputs()
    with in_process.client() as client:
        client.load_model("add", str(model_files["add"]))
        reply = raw_predict(client, "add", [pb.Tensor(byte_data=inputs["a"].tobytes()),
                                            pb.Tensor(byte_data=inputs["b"].tobytes())])
        out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
        np.testing.assert_allclose(out, built.reference(inputs)["sum"], rtol=1e-6)
        md = reply.tensors[0].tensor_metadata
        assert (md.name, md.data_type, list(md.shape)) == (b"sum", pb.FLOAT32, [1, 4])


def test_predict_invalid_arguments(in_process, model_files):
    f32 = np.zeros((1, 4), np.float32)
    with in_process.client() as client:
        client.load_model("add", str(model_files["add"]))
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, "add", [f32],
                     match="takes 2 input(s) (a, b), got 1")
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, "add", [f32, f32, f32])
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, "add", {"a": f32, "c": f32},
                     match="has no input 'c'")
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, "add",
                     [f32, f32.astype(np.float64)], match="expected FLOAT32 [1,4] (16 bytes), got FLOAT64")
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, "add",
                     [f32, np.zeros((1, 5), np.float32)], match="expected shape [1,4], got [1,5]")
        expect_error(StatusCode.INVALID_ARGUMENT, client.predict, "add",
                     [f32, np.zeros((4,), np.float32)])
        # Byte length that does not fit the shape.
        meta = pb.TensorMetadata(name=b"a", data_type=pb.FLOAT32, shape=[1, 4])
        short = pb.Tensor(tensor_metadata=meta, byte_data=b"\0" * 10)
        good = pb.Tensor(tensor_metadata=pb.TensorMetadata(name=b"b", data_type=pb.FLOAT32,
                                                           shape=[1, 4]), byte_data=f32.tobytes())
        expect_error(StatusCode.INVALID_ARGUMENT, raw_predict, client, "add", [short, good],
                     match="input 'a': expected FLOAT32 [1,4] (16 bytes), got 10 bytes")
        # Named and unnamed mixed; the same name twice; no data at all.
        expect_error(StatusCode.INVALID_ARGUMENT, raw_predict, client, "add",
                     [good, pb.Tensor(byte_data=f32.tobytes())], match="name every input tensor or none")
        expect_error(StatusCode.INVALID_ARGUMENT, raw_predict, client, "add", [good, good],
                     match="more than once")
        expect_error(StatusCode.INVALID_ARGUMENT, raw_predict, client, "add",
                     [pb.Tensor(tensor_metadata=meta), good], match="carries no data")
        # A data type value this agent does not know.
        odd = pb.Tensor(tensor_metadata=pb.TensorMetadata(name=b"a", data_type=99, shape=[1, 4]),
                        byte_data=f32.tobytes())
        expect_error(StatusCode.INVALID_ARGUMENT, raw_predict, client, "add", [odd, good],
                     match="DataType(99)")
        # After all that, the model still answers.
        assert client.predict("add", [f32, f32])["sum"].shape == (1, 4)
