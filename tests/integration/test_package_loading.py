"""Signed packages end to end: the CLI makes and checks them, a real agent loads only good ones."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import package_cases as cases
from fifo_helpers import fifo, returns
from edge_agent.packaging import packages
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder


@pytest.fixture
def signer(tmp_path) -> cases.Signer:
    return cases.Signer(tmp_path / "keys")


@pytest.fixture
def signed_agent(start_agent, signer):
    """An agent that trusts `signer` and refuses unsigned models."""
    return start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                       edge_agent_allow_unsigned_models=False,
                       edge_agent_max_package_bytes=cases.BOMB_LIMIT)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args],
                          capture_output=True, text=True, timeout=60)


def load_refused(agent, path: Path, code: StatusCode = StatusCode.FAILED_PRECONDITION) -> str:
    """Load `path`, expect `code`; check the agent still serves and kept nothing. The message."""
    with agent.client() as client:
        with pytest.raises(AgentError) as info:
            client.load_model("demo", str(path))
        assert info.value.code == code, info.value
        assert client.list_models() == []
    assert unpacked_leftovers(agent) == []
    return info.value.message


def unpacked_leftovers(agent) -> list[Path]:
    unpack_dir = agent.workdir / "state" / "packages"
    return list(unpack_dir.iterdir()) if unpack_dir.exists() else []


def predicts_demo(client, name: str = "demo") -> None:
    demo = model_builder.demo_model()
    inputs = demo.sample_inputs(seed=3)
    outputs = client.predict(name, [inputs["features"]])
    np.testing.assert_allclose(outputs["scores"], demo.reference(inputs)["scores"], rtol=1e-5)


@pytest.mark.parametrize("out_name", ["demo.tar.gz", "demo-package"])
def test_cli_keygen_package_verify_then_load_and_predict(start_agent, tmp_path, out_name):
    key = tmp_path / "signing.key"
    assert cli("keygen", str(key)).returncode == 0
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    trust = tmp_path / "trust"
    trust.mkdir(mode=0o755)
    (trust / "signing.pub").write_bytes(Path(str(key) + ".pub").read_bytes())
    model = model_builder.demo_model().write(tmp_path / "demo.tflite")
    out = tmp_path / out_name
    built = cli("package", str(model), "--name", "demo", "--version", "2.1",
                "--target", packages.Target.host().architecture, "--key", str(key), "-o", str(out))
    assert built.returncode == 0, built.stderr
    checked = cli("verify", str(out), "--trust", str(trust))
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout and "demo 2.1" in checked.stdout

    agent = start_agent(sagemaker_edge_core_root_certs_path=str(trust),
                        edge_agent_allow_unsigned_models=False)
    with agent.client() as client:
        info = client.load_model("demo", str(out))
        assert info.url == str(out)
        assert [t.name for t in info.inputs] == ["features"]
        # The manifest's version, as written (its full form would be 2.1.0).
        assert info.version == "2.1" and client.describe_model("demo").version == "2.1"
        assert [m.version for m in client.list_models()] == ["2.1"]
        predicts_demo(client)
    assert "package demo 2.1" in agent.log()
    assert unpacked_leftovers(agent) == []


@pytest.mark.parametrize("version, reason", [("latest", "'latest' is not a number"),
                                              ("1.2.3.4", "at most three"),
                                              ("v2", "without the leading 'v'")])
def test_cli_package_refuses_a_version_that_does_not_parse(signer, tmp_path, version, reason):
    model = model_builder.demo_model().write(tmp_path / "demo.tflite")
    out = tmp_path / "pkg"
    built = cli("package", str(model), "--name", "demo", "--version", version, "--target",
                packages.Target.host().architecture, "--key", signer.key_path, "-o", str(out))
    assert built.returncode != 0 and not out.exists()
    assert "INVALID_ARGUMENT" in built.stderr and "version does not parse" in built.stderr
    assert reason in built.stderr


def test_a_bare_model_has_no_version(start_agent, model_files):
    agent = start_agent(edge_agent_allow_unsigned_models=True)
    with agent.client() as client:
        assert client.load_model("add", str(model_files["add"])).version == ""
        assert client.describe_model("add").version == ""


def test_cli_verify_fails_on_a_tampered_package(signer, tmp_path):
    directory = signer.package(tmp_path / "pkg")
    cases.flip_model_byte(directory, signer)
    result = cli("verify", str(directory), "--trust", str(signer.trust))
    assert result.returncode == 1
    assert "FAILED_PRECONDITION" in result.stderr and "sha256 of 'demo.tflite'" in result.stderr


def test_file_url_of_a_package_loads(signed_agent, signer, tmp_path):
    out = signer.package(tmp_path / "pkg.tar.gz")
    with signed_agent.client() as client:
        client.load_model("demo", f"file://{out}")
        predicts_demo(client)


@pytest.mark.parametrize("tamper", sorted(cases.TAMPERING))
def test_a_tampered_package_never_loads(signed_agent, signer, tmp_path, tamper):
    directory = signer.package(tmp_path / "pkg")
    reason = cases.TAMPERING[tamper](directory, signer)
    archive = cases.pack(directory, tmp_path / "pkg.tar.gz")
    for path in (directory, archive):
        assert reason in load_refused(signed_agent, path)


@pytest.mark.parametrize("case", sorted(cases.HOSTILE))
def test_a_hostile_archive_is_refused_and_leaves_nothing(signed_agent, signer, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    members, reason = cases.HOSTILE[case](outside)
    path = cases.pack(signer.package(tmp_path / "pkg"), tmp_path / "hostile.tar.gz", members)
    assert reason in load_refused(signed_agent, path)
    assert cases.escaped(tmp_path) == []
    assert signed_agent.alive()


def test_a_package_with_a_fifo_for_its_signature_is_refused_and_frees_the_name(
        signed_agent, signer, tmp_path):
    directory = signer.package(tmp_path / "pkg")
    signature = directory / packages.SIGNATURE_NAME
    signature.rename(tmp_path / "manifest.sig.saved")
    with fifo(signature):
        message = returns(lambda: load_refused(signed_agent, directory))
    assert "'manifest.sig' is not a regular file (it is a FIFO)" in message
    (tmp_path / "manifest.sig.saved").rename(signature)
    with signed_agent.client() as client:
        client.load_model("demo", str(directory))  # the name was not left reserved
        predicts_demo(client)


def test_a_trust_folder_others_may_write_is_refused(signed_agent, signer, tmp_path):
    out = signer.package(tmp_path / "pkg.tar.gz")
    os.chmod(signer.trust, 0o777)
    assert "written by group or others" in load_refused(signed_agent, out)
    os.chmod(signer.trust, 0o755)
    with signed_agent.client() as client:
        client.load_model("demo", str(out))


def test_a_package_for_another_architecture_is_refused(signed_agent, signer, tmp_path):
    here = packages.Target.host().architecture
    other = next(a for a in ("aarch64", "armv7l", "x86_64") if a != here)
    out = signer.package(tmp_path / "pkg.tar.gz", target=other)
    message = load_refused(signed_agent, out)
    assert f"built for {other}/cpu" in message and f"this machine is {here}" in message


def test_an_edgetpu_package_is_refused_without_the_delegate(signed_agent, signer, tmp_path):
    out = signer.package(tmp_path / "pkg.tar.gz",
                         target=f"{packages.Target.host().architecture}/edgetpu")
    message = load_refused(signed_agent, out)
    assert "edgetpu" in message and "available: cpu" in message


def test_unsigned_models_load_only_when_allowed(start_agent, signer, model_files):
    strict = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                         edge_agent_allow_unsigned_models=False)
    assert "unsigned" in load_refused(strict, model_files["demo"])
    lenient = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                          edge_agent_allow_unsigned_models=True)
    with lenient.client() as client:
        client.load_model("demo", str(model_files["demo"]))
        predicts_demo(client)


def test_a_package_without_trusted_keys_configured_says_which_key_to_set(start_agent, signer,
                                                                         tmp_path):
    agent = start_agent(edge_agent_allow_unsigned_models=True)
    message = load_refused(agent, signer.package(tmp_path / "pkg.tar.gz"))
    assert "sagemaker_edge_core_root_certs_path" in message


def test_a_missing_package_is_not_found(signed_agent, tmp_path):
    load_refused(signed_agent, tmp_path / "nothing.tar.gz", StatusCode.NOT_FOUND)


def test_a_package_larger_than_the_memory_budget_is_refused_before_reading(start_agent, signer,
                                                                          tmp_path):
    agent = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                        edge_agent_memory_budget_mb=1)
    big = model_builder.fully_connected_model(in_features=1024, out_features=512)  # 2 MiB
    out = signer.package(tmp_path / "pkg", model=big)
    assert "memory budget" in load_refused(agent, out, StatusCode.RESOURCE_EXHAUSTED)
