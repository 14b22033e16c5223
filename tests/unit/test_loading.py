"""Loading (loading.py) in process: which urls name a local path; the bytes proven in the
child are the bytes the agent's runtime loads, whatever happens to the file meanwhile; the
memory budget reserves what the child measured, and gives it back at unload."""
from __future__ import annotations

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent import config as config_module
from edge_agent.errors import AgentError, StatusCode
from edge_agent.models.loading import model_path
from edge_agent.api.service import AgentService
from edge_agent.tools import model_builder

from corrupt_models import (CRASHING_FLIPS, FOUND_WITH_THIS_RUNTIME, GOOD,
                            flipped, write)


def in_process_service(tmp_path) -> AgentService:
    return AgentService(config_module.from_mapping({
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))


@FOUND_WITH_THIS_RUNTIME
def test_the_bytes_proven_are_the_bytes_loaded(tmp_path, monkeypatch):
    """The file is rewritten to a crashing version after it was read and proven, before the
    agent's runtime loads: the agent loads what it proved, never the file anew."""
    path = write(tmp_path, "m", GOOD)
    service = in_process_service(tmp_path)
    real_prove = service.prover.prove
    proven = []

    def prove_then_rewrite(content, config, what, memory_limit, **kwargs):
        proof = real_prove(content, config, what, memory_limit, **kwargs)
        proven.append(content)
        path.write_bytes(flipped(CRASHING_FLIPS[0]))  # would crash this process if read
        return proof

    monkeypatch.setattr(service.prover, "prove", prove_then_rewrite)
    try:
        service.load_model(pb.LoadModelRequest(name="m", url=str(path)))
        assert proven == [GOOD]
        built = model_builder.add_model()
        request = pb.PredictRequest(name="m")
        inputs = built.sample_inputs()
        from wire import add_array
        for name, array in inputs.items():
            add_array(request.tensors, name, array)
        reply = service.predict(request)
        out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
        np.testing.assert_array_equal(out, built.reference(inputs)["sum"])
    finally:
        service.close()


@pytest.mark.parametrize("url, path", [
    ("/models/a.tflite", "/models/a.tflite"),
    ("relative/a.tflite", "relative/a.tflite"),  # opened relative to the agent's directory
    ("file:///models/a.tflite", "/models/a.tflite"),
    ("file:///", "/"),
])
def test_a_url_names_a_local_path(url, path):
    assert model_path(url) == path


@pytest.mark.parametrize("url, message", [
    ("", "url is empty"),
    ("/models/a\0.tflite", "NUL byte"),
    ("file://models/a.tflite", "a file:// url needs an absolute path"),
    ("s3://bucket/a.tflite", "only local paths and file:// urls are supported"),
    ("https://example.com/a.tflite", "only local paths and file:// urls are supported"),
])
def test_a_url_that_names_no_local_path_is_invalid(url, message):
    with pytest.raises(AgentError) as info:
        model_path(url)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_vectors_of_a_model_the_child_cannot_run_are_run_in_the_agent(tmp_path, monkeypatch):
    """A model compiled for an Edge TPU the agent holds cannot be run by the child: its test
    vectors run in the agent, on the interpreter about to be served, and a mismatch refuses
    the load the same way. (No Edge TPU here: the loader is told the child cannot run it,
    and the CPU interpreter stands in for the Edge TPU's.)"""
    import package_cases as cases

    signer = cases.Signer(tmp_path / "keys")
    service = AgentService(config_module.from_mapping({
        "edge_agent_state_dir": str(tmp_path / "state"), "edge_agent_num_threads": 1,
        "sagemaker_edge_core_root_certs_path": str(signer.trust)}))
    monkeypatch.setattr(service.loader, "_proven_apart", lambda content: False)
    proofs = []
    monkeypatch.setattr(service.prover, "prove", lambda *args, **kwargs: proofs.append(args))
    model = model_builder.dynamic_batch_model()
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = model.reference({"x": batch})["y"]
    try:
        bad = cases.vectors_package(signer, tmp_path / "bad", model, [batch], [expected + 1])
        with pytest.raises(AgentError) as info:
            service.load_model(pb.LoadModelRequest(name="m", url=str(bad)))
        assert info.value.code == StatusCode.FAILED_PRECONDITION
        assert info.value.message.startswith("model 'm': validation failed: output 'y'")
        assert service.budget.used == 0
        good = cases.vectors_package(signer, tmp_path / "good", model, [batch], [expected])
        reply = service.load_model(pb.LoadModelRequest(name="m", url=str(good)))
        assert reply.model.version == "1.0.0"
        # Served with the shapes it was loaded with, not the vectors' batch of 2.
        assert list(reply.model.input_tensor_metadatas[0].shape) == [-1, 4]
        assert service._models["m"].inputs[0].shape == (1, 4)
        from edge_agent.packaging.keys import key_id
        assert service._models["m"].key_id == key_id(signer.key.verify_key)
        assert proofs == []  # nothing went to the child
    finally:
        service.close()
