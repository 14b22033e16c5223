"""LoadModel with the caller's rights, and the ownership policy, against a real agent with a
second user on its socket: a client run as `nobody` (a forked child that switched users)
next to the agent's root."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import package_cases as cases
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder
from privileges import NOBODY, fork_as

def _call_all(socket_path: str, calls) -> list:
    """Each call's outcome: [code name or "OK", message, url or {name: url}]."""
    results = []
    with AgentClient(socket_path) as client:
        for method, *args in calls:
            try:
                value = getattr(client, method)(*args)
            except AgentError as e:
                results.append([e.code.name, e.message])
                continue
            if method == "list_models":
                value = {m.name: m.url for m in value}
            elif method in ("load_model", "describe_model"):
                value = value.url
            results.append(["OK", value])
    return results


def as_nobody(agent, *calls) -> list:
    """Run the client calls as nobody:nogroup without supplementary groups, in a forked
    child (privileges.fork_as), and return their outcomes."""
    log = agent.workdir.parent / f"nobody-{len(os.listdir(agent.workdir.parent))}.log"

    def run() -> int:
        # To the log itself (fd 1), not sys.stdout, which pytest may have replaced.
        os.write(1, json.dumps(_call_all(agent.socket_path, calls)).encode() + b"\n")
        return 0

    pid = fork_as(NOBODY, NOBODY, run, str(log))
    _, status = os.waitpid(pid, 0)
    output = log.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, output
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture
def second_user(public_dir):
    """Skips unless this process may switch users (root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as a second user")
    return public_dir


@pytest.fixture
def shared_agent(start_agent, second_user):
    """An agent whose socket (in a directory everyone may search) any user may use."""
    def start(**overrides):
        workdir = second_user / "agent"
        workdir.mkdir(mode=0o755)
        os.chmod(workdir, 0o755)
        return start_agent(workdir=workdir, edge_agent_socket_mode="0666", **overrides)
    return start


def private_model(root: Path) -> Path:
    """A model in a 0700 directory, itself 0600: only its owner (root) may read it."""
    directory = root / "private"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    path = model_builder.add_model().write(directory / "model.tflite")
    os.chmod(path, 0o600)
    return path


def public_model(root: Path, name: str = "open.tflite") -> Path:
    path = model_builder.add_model().write(root / name)
    os.chmod(path, 0o644)
    return path


def shape_of(message: str, path: Path) -> str:
    return message.replace(str(path), "<path>")


def test_another_user_cannot_load_what_it_cannot_read_and_learns_nothing(shared_agent,
                                                                         second_user):
    root = second_user
    agent = shared_agent()
    secret = private_model(root)
    missing_beside = secret.parent / "missing.tflite"
    missing = root / "missing.tflite"
    denied, beside, elsewhere = as_nobody(agent, ["load_model", "m", str(secret)],
                                          ["load_model", "m", str(missing_beside)],
                                          ["load_model", "m", str(missing)])
    # Exactly as a missing file: same code, same message but for the path.
    assert denied[0] == beside[0] == elsewhere[0] == "NOT_FOUND"
    assert shape_of(denied[1], secret) == shape_of(beside[1], missing_beside) \
        == shape_of(elsewhere[1], missing) == "no model at '<path>'"
    # Through a link it may read, or a file:// url: the same.
    link = root / "link.tflite"
    link.symlink_to(secret)
    via_link, via_url = as_nobody(agent, ["load_model", "m", str(link)],
                                  ["load_model", "m", f"file://{secret}"])
    assert via_link == ["NOT_FOUND", f"no model at '{link}'"]
    assert via_url == ["NOT_FOUND", f"no model at '{secret}'"]
    # What it may read, it loads; the owner (root) loads the private one as before.
    loaded, listed = as_nobody(agent, ["load_model", "mine", str(public_model(root))],
                               ["list_models"])
    assert loaded[0] == "OK" and list(listed[1]) == ["mine"]
    with agent.client() as client:
        assert client.load_model("secret", str(secret)).url == str(secret)
        assert sorted(m.name for m in client.list_models()) == ["mine", "secret"]
    assert agent.alive()


def test_packages_are_read_with_the_callers_rights(shared_agent, second_user):
    root = second_user
    signer = cases.Signer(root / "keys")
    os.chmod(root / "keys", 0o755)
    agent = shared_agent(sagemaker_edge_core_root_certs_path=str(signer.trust))
    private = signer.package(root / "private-pkg")
    os.chmod(private, 0o700)
    archive = signer.package(root / "private.tar.gz")
    os.chmod(archive, 0o600)
    # A package it may list whose model file it may not read.
    half = signer.package(root / "half-pkg")
    os.chmod(half / "demo.tflite", 0o600)
    readable = signer.package(root / "open-pkg")
    got = as_nobody(agent, ["load_model", "a", str(private)], ["load_model", "b", str(archive)],
                    ["load_model", "c", str(half)], ["load_model", "d", str(readable)])
    assert got[0] == ["NOT_FOUND", f"no model at '{private}'"]
    assert got[1] == ["NOT_FOUND", f"no model at '{archive}'"]
    assert got[2][0] == "FAILED_PRECONDITION"
    assert got[2][1] == f"package '{half}': cannot read 'demo.tflite': Permission denied"
    assert got[3] == ["OK", str(readable)]
    with agent.client() as client:  # root: as before
        for name, path in (("a", private), ("b", archive), ("c", half)):
            assert client.load_model(name, str(path)).name == name


def test_a_nul_in_the_url_is_invalid_argument(agent):
    with agent.client() as client:
        for url in ("/tmp/model\0.tflite", "file:///tmp/\0"):
            with pytest.raises(AgentError) as info:
                client.load_model("m", url)
            assert info.value.code == StatusCode.INVALID_ARGUMENT
            assert "NUL" in info.value.message
        assert client.list_models() == []


# --- edge_agent_model_access --------------------------------------------------------------

def test_owner_policy_hides_urls_and_refuses_unloads_of_others_models(shared_agent,
                                                                      second_user):
    root = second_user
    agent = shared_agent(edge_agent_model_access="owner")
    roots_model = public_model(root, "root.tflite")
    theirs = public_model(root, "theirs.tflite")
    with agent.client() as client:
        client.load_model("roots", str(roots_model))
    got = as_nobody(agent, ["load_model", "theirs", str(theirs)], ["list_models"],
                    ["describe_model", "roots"], ["unload_model", "roots"],
                    ["describe_model", "theirs"])
    assert got[0] == ["OK", str(theirs)]  # its own model's url, in the LoadModel reply too
    assert got[1] == ["OK", {"roots": "", "theirs": str(theirs)}]
    assert got[2] == ["OK", ""]
    assert got[3][0] == "PERMISSION_DENIED"
    assert "loaded by another user" in got[3][1] and "edge_agent_model_access" in got[3][1]
    assert got[4] == ["OK", str(theirs)]
    with agent.client() as client:  # root sees every url and may unload any model
        assert {m.name: m.url for m in client.list_models()} == {
            "roots": str(roots_model), "theirs": str(theirs)}
        client.unload_model("theirs")
    unloaded = as_nobody(agent, ["load_model", "again", str(theirs)], ["unload_model", "again"])
    assert unloaded == [["OK", str(theirs)], ["OK", None]]  # its own: yes


def test_shared_policy_is_as_before(shared_agent, second_user):
    agent = shared_agent()
    roots_model = public_model(second_user, "root.tflite")
    with agent.client() as client:
        client.load_model("roots", str(roots_model))
    got = as_nobody(agent, ["list_models"], ["unload_model", "roots"])
    assert got == [["OK", {"roots": str(roots_model)}], ["OK", None]]
