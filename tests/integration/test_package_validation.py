"""Packages with test vectors, end to end: a real agent runs the model on the signed test
inputs in the model check's child before serving it, and refuses it when the outputs are off,
the run crashes, or the vectors were tampered with or do not fit the model."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import package_cases as cases
from corrupt_models import CRASHING_FLIPS, flipped
from edge_agent.packaging import packages
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder


@pytest.fixture
def signer(tmp_path) -> cases.Signer:
    return cases.Signer(tmp_path / "keys")


@pytest.fixture
def signed_agent(start_agent, signer):
    return start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                       edge_agent_allow_unsigned_models=False)


def refused(agent, path: Path, name: str = "demo") -> str:
    """Load `path`: FAILED_PRECONDITION, the name stays free, the agent serves on. The message."""
    with agent.client() as client:
        with pytest.raises(AgentError) as info:
            client.load_model(name, str(path))
        assert info.value.code == StatusCode.FAILED_PRECONDITION, info.value
        assert client.list_models() == []
    assert agent.alive()
    return info.value.message


def demo_vectors(off: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    demo = model_builder.demo_model()
    inputs = demo.sample_inputs(seed=5)
    expected = demo.reference(inputs)["scores"]
    return [inputs["features"]], [expected + np.float32(off)]


def predicts_demo(client) -> None:
    demo = model_builder.demo_model()
    inputs = demo.sample_inputs(seed=3)
    outputs = client.predict("demo", [inputs["features"]])
    np.testing.assert_allclose(outputs["scores"], demo.reference(inputs)["scores"], rtol=1e-5)


def test_cli_packages_test_vectors_and_the_agent_serves_the_model_they_pass(start_agent,
                                                                           signer, tmp_path):
    demo = model_builder.demo_model()
    model = demo.write(tmp_path / "demo.tflite")
    inputs, outputs = demo_vectors()
    np.save(tmp_path / "x.npy", inputs[0])
    np.save(tmp_path / "y.npy", outputs[0])
    out = tmp_path / "demo.tar.gz"
    built = subprocess.run(
        [sys.executable, "-m", "edge_agent", "package", str(model), "--name", "demo",
         "--version", "1.2.0-rc1", "--target", packages.Target.host().architecture, "--key",
         signer.key_path, "-o", str(out), "--test-input", str(tmp_path / "x.npy"),
         "--test-output", str(tmp_path / "y.npy"), "--rtol", "1e-4"],
        capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    summary = "1 input(s), 1 expected output(s), tolerance: rtol 0.0001 (edge-agent-package/2)"
    assert summary in built.stdout
    checked = subprocess.run([sys.executable, "-m", "edge_agent", "verify", str(out), "--trust",
                              str(signer.trust)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and summary in checked.stdout, checked.stderr
    agent = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                        edge_agent_allow_unsigned_models=False)
    with agent.client() as client:
        assert client.load_model("demo", str(out)).version == "1.2.0-rc1"
        predicts_demo(client)
    assert "test vectors passed" in agent.log()


@pytest.mark.parametrize("form", ["directory", "archive"])
def test_an_expected_output_that_is_off_is_refused_naming_the_output_and_the_difference(
        signed_agent, signer, tmp_path, form):
    inputs, outputs = demo_vectors(off=0.125)
    path = cases.vectors_package(signer, tmp_path / "pkg", model_builder.demo_model(), inputs,
                                 outputs)
    if form == "archive":
        path = cases.pack(path, tmp_path / "pkg.tar.gz")
    message = refused(signed_agent, path)
    assert "validation failed: output 'scores'" in message
    assert "by up to 0.125" in message
    # The same model with its true outputs loads under the name the refusal left free.
    inputs, outputs = demo_vectors()
    good = cases.vectors_package(signer, tmp_path / "good", model_builder.demo_model(), inputs,
                                 outputs)
    with signed_agent.client() as client:
        client.load_model("demo", str(good))
        predicts_demo(client)


def test_integer_outputs_compare_exactly_unless_the_package_gives_a_tolerance(
        signed_agent, signer, tmp_path):
    model = model_builder.quantized_add_model(np.uint8)
    inputs = model.sample_inputs(seed=2)
    expected = model.reference(inputs)["sum"].copy()
    expected[0, 3] = expected[0, 3] + 1 if expected[0, 3] < 255 else expected[0, 3] - 1
    off_by_one = cases.vectors_package(signer, tmp_path / "exact", model, list(inputs.values()),
                                       [expected])
    message = refused(signed_agent, off_by_one)
    assert "output 'sum'" in message and "by up to 1 " in message and "atol 0 + rtol 0" in message
    tolerant = cases.vectors_package(signer, tmp_path / "tolerant", model, list(inputs.values()),
                                     [expected], atol=1)
    with signed_agent.client() as client:
        client.load_model("demo", str(tolerant))
        reply = client.predict("demo", list(inputs.values()))
        np.testing.assert_array_equal(reply["sum"], model.reference(inputs)["sum"])


def test_a_corrupt_model_with_test_vectors_is_refused_before_it_runs_and_the_agent_serves_on(
        signed_agent, signer, tmp_path):
    """A flip that crashes the runtime, signed with vectors: the flatbuffer verifier refuses it
    before the check's child runs it (a crash while the vectors run: tests/e2e/test_prover.py)."""
    crashing = flipped(CRASHING_FLIPS[-1])  # its inputs and outputs still read
    good = model_builder.add_model()
    inputs = good.sample_inputs(seed=1)
    path = cases.vectors_package(signer, tmp_path / "pkg", crashing, list(inputs.values()),
                                 [good.reference(inputs)["sum"]])
    message = refused(signed_agent, path)
    assert "is not a well-formed TensorFlow Lite model" in message, message


def test_a_tampered_test_vector_is_refused_by_its_hash(signed_agent, signer, tmp_path):
    inputs, outputs = demo_vectors()
    path = cases.vectors_package(signer, tmp_path / "pkg", model_builder.demo_model(), inputs,
                                 outputs)
    vector = path / "test" / "output-0.npy"
    data = bytearray(vector.read_bytes())
    data[-1] ^= 0x40  # the last float's sign or exponent: a different expected output
    vector.write_bytes(bytes(data))
    assert "sha256 of 'test/output-0.npy'" in refused(signed_agent, path)


def test_a_signed_vector_that_does_not_fit_the_model_is_refused_at_load(signed_agent, signer,
                                                                        tmp_path):
    """Signed by a trusted key, hashes right, but an int32 input for a FLOAT32 model input:
    checked against the model itself, at load as at package time."""
    inputs, outputs = demo_vectors()
    path = cases.vectors_package(signer, tmp_path / "pkg", model_builder.demo_model(), inputs,
                                 outputs)
    vector = path / "test" / "input-0.npy"
    np.save(vector, inputs[0].astype(np.int32))
    data = vector.read_bytes()

    def rehash(manifest):
        manifest["files"]["test/input-0.npy"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                 "size": len(data)}
    cases.resign_manifest(path, signer.key, rehash)
    message = refused(signed_agent, path)
    assert "test input 'test/input-0.npy' holds int32, but the model's input 'features' is " \
           "FLOAT32" in message


@pytest.mark.parametrize("change, reason", [
    (lambda m: m.update(format="edge-agent-package/3"), "format 'edge-agent-package/3' is not "
                                                        "supported by this agent"),
    # Test vectors under format 1 would be skipped by an agent that cannot validate.
    (lambda m: m.update(format=packages.FORMAT), "test vectors ('validation') need format"),
    (lambda m: m.pop("validation"), "'validation' must be an object"),
])
def test_a_format_this_agent_does_not_read_is_refused(signed_agent, signer, tmp_path, change,
                                                      reason):
    inputs, outputs = demo_vectors()
    path = cases.vectors_package(signer, tmp_path / "pkg", model_builder.demo_model(), inputs,
                                 outputs)
    assert json.loads((path / "manifest.json").read_bytes())["format"] == "edge-agent-package/2"
    cases.resign_manifest(path, signer.key, change)
    assert reason in refused(signed_agent, path)
