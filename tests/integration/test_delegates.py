"""Delegates: the Edge TPU and external libraries, loaded by an AgentService in process, proven
with a real delegate (tests/delegate/recording_delegate.c, compiled here) that records its
options and claims no nodes, so the CPU kernels still compute the right answers; fallback;
the accelerator probe; the settings. (Through agent processes:
tests/e2e/test_delegates_agent.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb, config
from edge_agent.platform import accelerators
from edge_agent.platform import delegates
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.service import AgentService
from wire import add_array
from edge_agent.tools import model_builder

NO_SUCH_LIBRARY = "/nonexistent/libno-such-delegate.so"


@pytest.fixture
def record(tmp_path) -> Path:
    return tmp_path / "delegate-record.txt"


def recorded(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def service_with(tmp_path, **settings) -> AgentService:
    return AgentService(config.from_mapping({
        "edge_agent_socket_path": str(tmp_path / "unused.sock"),
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1, **settings}))


def load(service: AgentService, path: Path, name: str = "m") -> pb.Model:
    return service.load_model(pb.LoadModelRequest(name=name, url=str(path))).model


def refused(service: AgentService, path: Path) -> AgentError:
    with pytest.raises(AgentError) as info:
        load(service, path)
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert len(service.list_models().models) == 0  # nothing half-loaded, the budget given back
    assert service.budget.used == 0
    return info.value


@pytest.fixture(scope="module")
def edgetpu_model(tmp_path_factory) -> Path:
    return model_builder.custom_op_model(delegates.EDGETPU_CUSTOM_OP).write(
        tmp_path_factory.mktemp("tpu") / "edgetpu.tflite")


# --- a real external delegate, end to end -----------------------------------------------------


@pytest.mark.parametrize("fallback", ["fail", "cpu"])
def test_a_missing_external_library(tmp_path, model_files, fallback, caplog):
    service = service_with(tmp_path, edge_agent_delegate="external",
                           edge_agent_delegate_library=NO_SUCH_LIBRARY,
                           edge_agent_delegate_fallback=fallback)
    if fallback == "fail":
        error = refused(service, model_files["add"])
        assert f"external:{NO_SUCH_LIBRARY} delegate cannot be loaded" in error.message
        assert "No such file or directory" in error.message
        assert "edge_agent_delegate_fallback" in error.message
    else:
        assert load(service, model_files["add"]).delegate == "xnnpack"
        assert f"external:{NO_SUCH_LIBRARY} delegate cannot be loaded" in caplog.text
        assert "running on the CPU" in caplog.text


def test_a_library_that_is_no_delegate(tmp_path, model_files):
    service = service_with(tmp_path, edge_agent_delegate="external",
                           edge_agent_delegate_library="libm.so.6",
                           edge_agent_delegate_fallback="fail")
    error = refused(service, model_files["add"])
    assert "is not a TensorFlow Lite delegate (it has no tflite_plugin_create_delegate)" in error.message


@pytest.mark.parametrize("fallback", ["fail", "cpu"])
def test_a_delegate_that_refuses_to_be_created(tmp_path, model_files, recording_delegate, fallback):
    service = service_with(tmp_path, edge_agent_delegate="external",
                           edge_agent_delegate_library=recording_delegate,
                           edge_agent_delegate_options={"fail_create": "no accelerator on bus 3"},
                           edge_agent_delegate_fallback=fallback)
    if fallback == "fail":
        # What the delegate reported through report_error reaches the caller.
        assert "cannot be loaded: no accelerator on bus 3" in refused(service, model_files["add"]).message
    else:
        assert load(service, model_files["add"]).delegate == "xnnpack"


@pytest.mark.parametrize("fallback", ["fail", "cpu"])
def test_a_delegate_that_fails_to_apply(tmp_path, model_files, recording_delegate, record, fallback):
    service = service_with(tmp_path, edge_agent_delegate="external",
                           edge_agent_delegate_library=recording_delegate,
                           edge_agent_delegate_options={"fail_prepare": "1",
                                                        "record_to": str(record)},
                           edge_agent_delegate_fallback=fallback)
    if fallback == "fail":
        assert "cannot be applied to this model" in refused(service, model_files["add"]).message
    else:
        assert load(service, model_files["add"]).delegate == "xnnpack"
        built = model_builder.add_model()
        request = pb.PredictRequest(name="m")
        inputs = built.sample_inputs()
        for name, array in inputs.items():
            add_array(request.tensors, name, array)
        reply = service.predict(request)
        np.testing.assert_array_equal(
            np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4),
            built.reference(inputs)["sum"])
    assert "prepare" in recorded(record)  # it was really asked


@pytest.mark.parametrize("fallback", ["fail", "cpu"])
@pytest.mark.parametrize("prepare", ["succeeds", "fails"])
def test_a_missing_op_is_not_blamed_on_the_delegate(tmp_path, model_files, recording_delegate,
                                                    record, fallback, prepare):
    # Whether the delegate takes the graph or not, the CPU cannot run this model either: the
    # refusal is the model's, whatever the fallback says.
    options = {"record_to": str(record), **({"fail_prepare": "1"} if prepare == "fails" else {})}
    service = service_with(tmp_path, edge_agent_delegate="external",
                           edge_agent_delegate_library=recording_delegate,
                           edge_agent_delegate_options=options,
                           edge_agent_delegate_fallback=fallback)
    error = refused(service, model_files["custom"])
    assert "custom op 'EdgeAgentMissingOp'" in error.message
    assert "delegate" not in error.message


# --- the Edge TPU -----------------------------------------------------------------------------

@pytest.mark.parametrize("fallback", ["fail", "cpu"])
def test_no_libedgetpu_on_this_machine(tmp_path, model_files, fallback):
    service = service_with(tmp_path, edge_agent_delegate="edgetpu",
                           edge_agent_delegate_options={"device": "usb"},
                           edge_agent_delegate_fallback=fallback)
    if fallback == "fail":
        error = refused(service, model_files["add"])
        assert "the edgetpu delegate cannot be loaded: libedgetpu.so.1" in error.message
    else:
        assert load(service, model_files["add"]).delegate == "xnnpack"


def test_an_edgetpu_model_is_refused_without_an_edge_tpu(tmp_path, edgetpu_model):
    error = refused(service_with(tmp_path), edgetpu_model)
    assert "compiled for the Edge TPU (edgetpu-custom-op) but no Edge TPU delegate is loaded" in error.message
    assert "edge_agent_delegate is xnnpack" in error.message


def test_an_edgetpu_model_is_refused_when_the_edge_tpu_falls_back(tmp_path, edgetpu_model):
    service = service_with(tmp_path, edge_agent_delegate="edgetpu", edge_agent_delegate_fallback="cpu")
    error = refused(service, edgetpu_model)
    assert "no Edge TPU delegate is loaded: the edgetpu delegate cannot be loaded" in error.message


def test_the_edge_tpu_gets_its_device_option(tmp_path, model_files, edgetpu_model,
                                             recording_delegate, record, monkeypatch):
    # The recording delegate stands in for libedgetpu.so.1: same ABI, options recorded.
    monkeypatch.setattr(delegates, "EDGETPU_LIBRARY", recording_delegate)
    service = service_with(tmp_path, edge_agent_delegate="edgetpu",
                           edge_agent_delegate_options={"device": "usb:0",
                                                        "record_to": str(record)},
                           edge_agent_delegate_fallback="fail")
    assert load(service, model_files["add"]).delegate == "edgetpu"
    assert recorded(record)[0] == f"create device=usb:0 record_to={record}"
    # With an Edge TPU delegate active the model passes the check and goes to the runtime;
    # this stand-in takes no nodes, so the runtime names the op nothing implements.
    with pytest.raises(AgentError) as info:
        load(service, edgetpu_model, name="tpu")
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert "custom op 'edgetpu-custom-op'" in info.value.message


def test_the_accelerator_probe_follows_the_delegate_config(recording_delegate, record, monkeypatch):
    monkeypatch.setattr(accelerators, "EDGETPU_LIBRARY", recording_delegate)
    edgetpu = accelerators.DelegateSettings("edgetpu", {"device": "pci:0", "record_to": str(record)})
    assert accelerators.accelerator_available("edgetpu", edgetpu)
    assert recorded(record)[0] == f"create device=pci:0 record_to={record}"
    # An agent running its models on the CPU has no usable Edge TPU, whatever is plugged in.
    assert not accelerators.accelerator_available("edgetpu", accelerators.DelegateSettings("xnnpack", {}))
    # The settings are the caller's, not the process's: asking with one agent's settings
    # leaves none behind for the next question.
    assert accelerators.accelerator_available("edgetpu", edgetpu)


def test_edgetpu_models_are_recognised_by_their_op():
    assert delegates.needs_edgetpu(model_builder.custom_op_model("edgetpu-custom-op").content)
    assert not delegates.needs_edgetpu(model_builder.custom_op_model().content)
    # The name elsewhere in the file is not the op.
    assert not delegates.needs_edgetpu(model_builder.add_model().content + b"edgetpu-custom-op")


# --- the CPU ----------------------------------------------------------------------------------


# --- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"edge_agent_delegate": "gpu"}, "edge_agent_delegate: expected one of"),
    ({"edge_agent_delegate": "external"}, "edge_agent_delegate_library: must name"),
    ({"edge_agent_delegate_options": "device=usb"}, "edge_agent_delegate_options: expected an object"),
    ({"edge_agent_delegate_options": {"device": ["usb"]}}, "edge_agent_delegate_options.device: expected a string"),
    ({"edge_agent_delegate_fallback": "maybe"}, "edge_agent_delegate_fallback: expected one of"),
])
def test_wrong_delegate_settings_name_the_key(settings, message):
    with pytest.raises(config.ConfigError, match=message.replace(".", r"\.")):
        config.from_mapping(settings)


def test_options_are_strings():
    cfg = config.from_mapping({"edge_agent_delegate_options": {"n": 2, "on": True, "s": "x"}})
    assert cfg.edge_agent_delegate_options == {"n": "2", "on": "true", "s": "x"}


def test_the_rendezvous_barrier_passes_two_invokes_together_and_fails_one_alone(
        recording_delegate):
    """The control for the parallelism tests that use `rendezvous`: the delegate really runs
    the ADD (the right sums come out of its kernel), and an invoke that is alone at the
    barrier fails instead of passing."""
    from concurrency import run_concurrently

    from edge_agent.platform.runtime import interpreter_module

    runtime = interpreter_module()
    built = model_builder.add_model()
    delegate = runtime.load_delegate(recording_delegate,
                                     {"rendezvous": "2", "rendezvous_seconds": "1"})
    interpreters = [runtime.Interpreter(model_content=built.content,
                                        experimental_delegates=[delegate]) for _ in range(2)]
    for interpreter in interpreters:
        interpreter.allocate_tensors()
    with pytest.raises(RuntimeError, match="recording_rendezvous_add"):
        interpreters[0].invoke()  # alone: nobody comes to the barrier
    inputs = [built.sample_inputs(seed=seed) for seed in range(2)]
    for interpreter, feed in zip(interpreters, inputs):
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], feed[detail["name"]])
    run_concurrently(*(interpreter.invoke for interpreter in interpreters))
    for interpreter, feed in zip(interpreters, inputs):
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        np.testing.assert_allclose(out, built.reference(feed)["sum"], rtol=1e-6)
