"""Bad new versions in the model repository: each is refused with its reason and the version
serving keeps serving; who may roll back; a memory budget that fits only some models."""
from __future__ import annotations

import json
import os

import numpy as np

import corrupt_models
import pytest
from lifecycle_helpers import X, Lab, offset_of, states
from privileges import NOBODY, fork_as

from edge_agent.packaging import keys
from edge_agent.packaging import packages
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError, StatusCode
from edge_agent.platform.machine import ARCHITECTURES, machine_architecture
from edge_agent.tools import model_builder


@pytest.fixture
def lab(tmp_path) -> Lab:
    return Lab(tmp_path / "lab")


def _failed(client, name: str) -> list[str]:
    return [v.reason for v in states(client)[name].versions if v.state == "failed"]


def _other_architecture() -> str:
    return next(a for a in ARCHITECTURES if a != machine_architecture())


@pytest.mark.parametrize("kind, phrase", [
    ("untrusted key", "not trusted"),
    ("another target", "is built for"),
    ("another signature", "inputs and outputs"),
    ("a file changed after signing", "sha256 of 'm.tflite'"),
])
def test_a_bad_new_version_leaves_the_old_one_serving(lab, start_agent, kind, phrase):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    if kind == "untrusted key":
        lab.publish("m", "2.0", key=lab.signer.stranger)
    elif kind == "another target":
        lab.publish("m", "2.0", target=packages.Target(_other_architecture()))
    elif kind == "a file changed after signing":
        package = lab.build("m", "2.0")
        model = package / "m.tflite"
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0x01
        model.write_bytes(bytes(data))
        lab.move_in(package, "m")
    else:
        lab.publish("m", "2.0", model=model_builder.offset_model(2, shape=(1, 8)))
    with agent.client() as client:
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        listed = states(client)["m"]
        assert (listed.state, listed.version) == ("serving", "1.0")
        assert any(phrase in reason for reason in _failed(client, "m")), _failed(client, "m")
        client.rescan()  # a failed version is not tried again while its bytes are the same
    warnings = [line for line in agent.log().splitlines() if "WARNING" in line and "2.0" in line]
    assert len(warnings) == 1, warnings


def test_a_version_refused_for_its_key_is_taken_once_the_key_is_trusted(lab, start_agent):
    """The usual fix for "signed by an untrusted key" is trusting the key, not re-signing: a
    change of the trusted keys reads the refused package again, though its bytes are the same."""
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0", key=lab.signer.stranger)
    with agent.client() as client:
        client.rescan()
        assert any("not trusted" in reason for reason in _failed(client, "m"))
        (lab.signer.trust / "stranger.pub").write_text(
            keys.public_key_text(lab.signer.stranger.verify_key))
        client.rescan()
        listed = states(client)["m"]
        assert (listed.state, listed.version) == ("serving", "2.0"), listed
        assert offset_of(client.predict("m", {"x": X})) == 2.0


def test_a_version_that_fails_its_test_vector_leaves_the_old_one_serving(lab, start_agent):
    lab.publish("m", "1.0", expected=X + 1)
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0", expected=X + 3)  # the model computes x + 2
    with agent.client() as client:
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        reasons = _failed(client, "m")
        assert any("output 'y' differs" in r for r in reasons), reasons


def test_a_signature_change_serves_when_allowed(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings(edge_agent_allow_signature_change=True))
    lab.publish("m", "2.0", model=model_builder.offset_model(2, shape=(1, 8)))
    with agent.client() as client:
        client.rescan()
        x8 = X.repeat(2, axis=1)
        assert offset_of(client.predict("m", {"x": x8})) == 2.0


def test_a_version_the_runtime_would_crash_on_is_refused_and_the_old_one_serves(lab, start_agent):
    """A flip that crashes the runtime: the flatbuffer verifier refuses it before any runtime
    reads it (the model check's child catching a crash is tests/e2e/test_prover.py's)."""
    lab.publish("m", "1.0", model=model_builder.add_model())
    agent = start_agent(**lab.settings())
    bad = lab.crashing_package("m", "2.0", corrupt_models.flipped(corrupt_models.CRASHING_FLIPS[0]))
    lab.move_in(bad, "m")
    inputs = model_builder.add_model().sample_inputs()
    with agent.client() as client:
        client.rescan()
        assert states(client)["m"].version == "1.0"
        reasons = _failed(client, "m")
        assert reasons and all("not a well-formed TensorFlow Lite model" in r
                               for r in reasons), reasons
        client.predict("m", inputs)
    assert agent.alive()


def test_a_failed_version_is_remembered_across_a_restart(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0", model=model_builder.offset_model(2, shape=(1, 8)))
    with agent.client() as client:
        client.rescan()
    agent.stop()
    agent = start_agent(workdir=agent.workdir, **lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        assert any("inputs and outputs" in r for r in _failed(client, "m"))
    restarted = agent.log().split("stopped")[-1]
    assert "package m 2.0" not in restarted  # not loaded again: the same bytes failed


def footprint(start_agent, tmp_path, shape) -> int:
    """What a model of this shape reserves, measured on an agent of its own: the smaller
    of two (an agent's first model check measures a little more than the next ones)."""
    probe_lab = Lab(tmp_path / "probe-lab")
    for i in range(2):
        probe_lab.publish(f"p{i}", "1.0", model=model_builder.offset_model(i, shape=shape))
    probe = start_agent(workdir=tmp_path / "probe", **probe_lab.settings())
    with probe.client() as client:
        reserved = min(m.memory_reserved_bytes for m in client.get_metrics().models)
    probe.stop()
    return reserved


def test_eight_models_in_a_budget_for_five(lab, start_agent, tmp_path):
    each = footprint(start_agent, tmp_path, (1, 262144))
    for i in range(8):
        lab.publish(f"m{i}", "1.0", model=model_builder.offset_model(i + 1, shape=(1, 262144)))
    budget_mb = int(each * 5.5) // 2**20
    agent = start_agent(**lab.settings(edge_agent_memory_budget_mb=budget_mb))
    with agent.client() as client:
        listed = states(client)
        serving = [n for n, m in listed.items() if m.state == "serving"]
        waiting = [n for n, m in listed.items() if m.state == "waiting"]
        assert len(serving) == 5, {n: (m.state, m.state_reason) for n, m in listed.items()}
        assert len(waiting) == 3
        for name in waiting:
            assert "memory budget" in listed[name].state_reason
        for name in serving:
            client.predict(name, {"x": model_builder.offset_model(0, shape=(1, 262144))
                                  .sample_inputs()["x"]})


def test_a_swap_that_does_not_fit_waits_until_memory_frees(lab, start_agent, tmp_path):
    big = (1, 1 << 20)  # 4 MiB of weights: the file, not the runtime's noise, decides
    each = footprint(start_agent, tmp_path, big)
    lab.publish("m", "1.0", model=model_builder.offset_model(1, shape=big))
    # Room for two models: m 1.0 and an application's model fill it.
    agent = start_agent(**lab.settings(edge_agent_memory_budget_mb=int(each * 2.6) // 2**20))
    own = model_builder.offset_model(7, shape=big).write(tmp_path / "own.tflite")
    x = np.zeros(big, np.float32)
    with agent.client() as client:
        client.load_model("app", str(own))
        lab.publish("m", "2.0", model=model_builder.offset_model(2, shape=big))
        client.rescan()
        listed = states(client)["m"]
        assert (listed.state, listed.version) == ("serving", "1.0")
        assert "waits for memory" in listed.state_reason
        assert [v.state for v in listed.versions] == ["waiting", "serving"]
        assert offset_of(client.predict("m", {"x": x})) == 1.0
        client.unload_model("app")  # frees memory: the swap goes on
        client.rescan()
        assert offset_of(client.predict("m", {"x": x})) == 2.0


def _as_nobody(agent, workdir, method: str, *args) -> list:
    log = workdir / f"nobody-{method}.log"

    def run() -> int:
        with AgentClient(agent.socket_path) as client:
            try:
                getattr(client, method)(*args)
                outcome = ["OK", ""]
            except AgentError as e:
                outcome = [e.code.name, e.message]
        os.write(1, json.dumps(outcome).encode() + b"\n")
        return 0

    pid = fork_as(NOBODY, NOBODY, run, str(log))
    _, status = os.waitpid(pid, 0)
    output = log.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, output
    return json.loads(output.strip().splitlines()[-1])


def test_only_root_and_the_agents_user_may_roll_back_or_unpin(lab, start_agent, public_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as a second user")
    workdir = public_dir / "agent"
    workdir.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)
    lab.publish("m", "1.0")
    agent = start_agent(workdir=workdir, edge_agent_socket_mode="0666", **lab.settings())
    lab.publish("m", "2.0")
    with agent.client() as client:
        client.rescan()
    for method, args in (("rollback", ("m",)), ("unpin", ("m",))):
        code, message = _as_nobody(agent, public_dir, method, *args)
        assert code == "PERMISSION_DENIED"
        assert "only root and the agent's own user" in message
    assert _as_nobody(agent, public_dir, "rescan") == ["OK", ""]  # looking is everyone's
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 2.0
        client.rollback("m")
        assert offset_of(client.predict("m", {"x": X})) == 1.0


def test_lifecycle_calls_without_a_repository(start_agent):
    agent = start_agent()
    with agent.client() as client:
        with pytest.raises(AgentError) as refused:
            client.rollback("m")
        assert refused.value.code == StatusCode.FAILED_PRECONDITION
        assert "edge_agent_model_repository" in refused.value.message


def test_a_repository_others_may_write_is_refused_at_start(lab, start_agent):
    from edge_agent.app.root import StartError

    os.chmod(lab.repository, 0o777)
    with pytest.raises(StartError) as refused:
        start_agent(**lab.settings())
    assert refused.value.status == 2
    assert "may be written by group or others" in str(refused.value)
    assert f"chmod go-w '{lab.repository}'" in str(refused.value)


def test_a_model_folder_others_may_write_is_not_read(lab, start_agent):
    lab.publish("m", "1.0")
    lab.publish("n", "1.0")
    os.chmod(lab.repository / "n", 0o777)
    agent = start_agent(**lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        assert "n" not in states(client)
    assert "folder 'n' is not read" in agent.log()


def test_resource_preserving_swaps_where_only_one_version_fits(lab, start_agent, tmp_path):
    big = (1, 1 << 20)
    each = footprint(start_agent, tmp_path, big)
    lab.publish("m", "1.0", model=model_builder.offset_model(1, shape=big))
    agent = start_agent(**lab.settings(edge_agent_memory_budget_mb=int(each * 1.6) // 2**20,
                                       edge_agent_swap_policy="resource_preserving"))
    x = np.zeros(big, np.float32)
    with agent.client() as client:
        lab.publish("m", "2.0", model=model_builder.offset_model(2, shape=big))
        client.rescan()
        assert offset_of(client.predict("m", {"x": x})) == 2.0
        # A new version that fails is followed by the old one, loaded again.
        lab.publish("m", "3.0", model=model_builder.offset_model(3, shape=(1, 8)))
        client.rescan()
        assert offset_of(client.predict("m", {"x": x})) == 2.0
        assert states(client)["m"].version == "2.0"
