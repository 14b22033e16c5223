"""An application written for the original agent, unchanged, against the gRPC front.

The client (tests/original/original_client.py) runs in a process of its own with stubs that
grpc_tools generates here from tests/original/agent.proto, the original API without this
agent's extensions, and makes its SysV segments as the original's example clients do. The
agent is started with the original command line, `-a SOCKET -c CONFIG`, as root, as the
client's own unprivileged user, or as a user of its own holding only CAP_IPC_OWNER.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from capture_helpers import delivered_ids, disk_manifests
from agents import AgentProcess, public_directory

from edge_agent.shm_client import SysVSegment

pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools generates the original client's stubs")

ORIGINAL = Path(__file__).resolve().parent.parent / "original"
NOBODY = 65534
AGENT_UID = 4243  # a user of the agent's own, as an install makes one (no passwd entry needed)
SUM = {"sum": [11.0, 22.0, 33.0, 44.0]}  # a + b of the client's inputs
CAP_IPC_OWNER = 15


def setpriv(uid: int, *caps: str) -> list[str]:
    """Run as uid (and gid uid) with no supplementary groups and only `caps`, as a unit's
    User= and AmbientCapabilities= would."""
    if not caps:
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    wanted = ",".join(f"+{c}" for c in caps)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            f"--inh-caps={wanted}", f"--ambient-caps={wanted}", f"--bounding-set=-all,{wanted}"]


def as_user(prefix: list[str], python) -> list[str]:
    """`prefix` (setpriv ...) then a Python that user may run (privileges.PublicPython: a
    public copy where this one lives under /root), through env(1) for its environment."""
    return [*prefix, "env", *(f"{k}={v}" for k, v in python.env.items()), *python.command]


@pytest.fixture(scope="module")
def other_users(public_python):
    """Skip unless processes can run as another user (setpriv, root); → the Python they run."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run processes as other users")
    probe = subprocess.run([*as_user(setpriv(AGENT_UID, "ipc_owner"), public_python), "-c",
                            "import edge_agent.api.service, google.protobuf, grpc"],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr  # the public copy has all it needs
    return public_python


@pytest.fixture(scope="module")
def public_dir():
    """One public directory for the module's agent and the tests that use it."""
    with public_directory("edge-agent-grpc-") as directory:
        yield directory


@pytest.fixture(scope="module")
def add_model(public_dir, model_files) -> str:
    path = public_dir / "add.tflite"
    shutil.copy(model_files["add"], path)
    path.chmod(0o644)
    return str(path)


@pytest.fixture(scope="module")
def original_client(public_dir, public_python):
    """run(socket, *steps, user=None) → one result dict per step, from the client process."""
    stubs = public_dir / "stubs"
    stubs.mkdir(mode=0o755)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ORIGINAL}",
                    f"--python_out={stubs}", f"--grpc_python_out={stubs}", "agent.proto"],
                   check=True)
    shutil.copy(ORIGINAL / "original_client.py", stubs)
    for path in stubs.iterdir():
        path.chmod(0o644)

    def run(socket_path: str, *steps: str, user: int | None = None) -> list[dict]:
        python = as_user(setpriv(user), public_python) if user is not None \
            else [sys.executable]
        env = {**os.environ, "PYTHONPATH": str(stubs)}
        if user is not None and public_python.env:
            python = [python[0], *(a for a in python[1:] if not a.startswith("PYTHONPATH="))]
            env["PYTHONPATH"] = os.pathsep.join([str(stubs), public_python.env["PYTHONPATH"]])
        result = subprocess.run(
            [*python, str(stubs / "original_client.py"), socket_path, *steps],
            env=env, cwd=public_dir,
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        replies = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["step"] for r in replies] == list(steps)
        return replies

    return run


class OriginalAgent(AgentProcess):
    """The agent as the original unit starts it: `-a SOCKET -c CONFIG`, maybe as another user."""

    def __init__(self, workdir: Path, prefix: list[str] = (), python=None, **overrides):
        self.grpc_path = str(workdir / "grpc.sock")
        # Another user's agent runs a Python that user may run (other_users).
        self.python = as_user(list(prefix), python) if python is not None \
            else [*prefix, sys.executable]
        super().__init__(workdir, {
            "edge_agent_socket_mode": "0666",  # other users' clients connect
            "sagemaker_edge_core_capture_data_disk_path": str(workdir / "captures"),
            **overrides})

    def command(self) -> list[str]:
        return [*self.python, "-m", "edge_agent", "-a", self.grpc_path,
                "-c", str(self.config_path)]


def start_original_agent(directory: Path, uid: int | None = None, prefix=(), python=None,
                         **overrides):
    directory.mkdir(mode=0o755)
    if uid is not None:
        os.chown(directory, uid, uid)
    return OriginalAgent(directory, list(prefix), python, **overrides).start()


@pytest.fixture(scope="module")
def root_agent(public_dir):
    agent = start_original_agent(public_dir / "root-agent")
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def capable_agent(public_dir, other_users):
    """An agent running as its own unprivileged user with CAP_IPC_OWNER and nothing else."""
    agent = start_original_agent(public_dir / "capable-agent", AGENT_UID,
                                 setpriv(AGENT_UID, "ipc_owner"), other_users)
    yield agent
    agent.stop()


def test_every_rpc_of_the_original_api(root_agent, original_client, add_model):
    capture_id = str(uuid.uuid4())
    replies = original_client(
        root_agent.grpc_path, f"load:add:{add_model}", "list", "describe:add", "predict:add",
        "predict-sysv:add:0400", "predict-sysv:add:0600", f"capture:add:{capture_id}",
        f"status:{capture_id}", "describe:nope", "predict:nope", "unload:add", "list")
    codes = [r["code"] for r in replies]
    assert codes == ["OK"] * 8 + ["NOT_FOUND", "NOT_FOUND", "OK", "OK"], replies
    model = {"name": "add", "url": add_model, "inputs": ["a", "b"], "outputs": ["sum"]}
    assert replies[0]["result"] == model
    assert replies[1]["result"] == [model]
    assert replies[2]["result"] == model
    assert [r["result"] for r in replies[3:6]] == [SUM] * 3
    assert replies[7]["result"] in ("IN_PROGRESS", "SUCCESS")
    assert "no model named 'nope' is loaded" in replies[8]["details"]
    assert replies[11]["result"] == []
    # The framed socket serves the same core, and the agent is still healthy.
    with root_agent.client() as client:
        assert client.list_models() == []


def test_the_client_and_agent_as_one_unprivileged_user(public_dir, other_users, original_client,
                                                       add_model):
    """The original's usual set-up: agent and application run as one user, the segments
    owner-only (0400 after IPC_SET, or 0600)."""
    agent = start_original_agent(public_dir / "nobody-agent", NOBODY, setpriv(NOBODY),
                                 other_users)
    try:
        replies = original_client(agent.grpc_path, f"load:add:{add_model}",
                                  "predict-sysv:add:0400", "predict-sysv:add:0600", user=NOBODY)
        assert [r["code"] for r in replies] == ["OK"] * 3, replies
        assert [r["result"] for r in replies[1:]] == [SUM, SUM]
    finally:
        agent.stop()


def test_an_agent_with_only_cap_ipc_owner_serves_a_clients_0400_segment(
        capable_agent, original_client, add_model):
    with open(f"/proc/{capable_agent.process.pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    assert int(status["Uid"].split()[0]) == AGENT_UID
    assert int(status["CapEff"], 16) == 1 << CAP_IPC_OWNER  # that and nothing else

    capture_id = str(uuid.uuid4())
    replies = original_client(capable_agent.grpc_path, f"load:add:{add_model}",
                              "predict-sysv:add:0400", "predict:add", f"capture:add:{capture_id}",
                              f"status:{capture_id}", "unload:add", user=NOBODY)
    assert [r["code"] for r in replies] == ["OK"] * 6, replies
    assert replies[1]["result"] == replies[2]["result"] == SUM


@pytest.mark.parametrize("which", ["root", "capable"])
def test_a_segment_the_client_could_not_read_is_refused(request, which, original_client,
                                                        add_model, other_users):
    """The agent could attach it (root, or CAP_IPC_OWNER): the caller's rights decide."""
    agent = request.getfixturevalue(f"{which}_agent")
    with agent.client() as client:
        client.load_model("add", add_model)
    segment = SysVSegment.create(32, 0o600)  # root's, owner-only: nobody may not read it
    try:
        segment.write(__import__("numpy").arange(8, dtype="float32"))
        [reply] = original_client(agent.grpc_path, f"predict-shmid:add:{segment.shmid}",
                                  user=NOBODY)
        assert reply["code"] == "PERMISSION_DENIED", reply
        assert f"{segment.shmid}" in reply["details"]
        with agent.client() as client:
            client.unload_model("add")
    finally:
        segment.free()
    assert agent.alive(), agent.log()


def test_the_original_command_line_and_sighup(public_dir, original_client, add_model):
    """`edge-agent -a SOCKET -c CONFIG`, stopped with SIGHUP (the original unit's KillSignal):
    as graceful as SIGTERM: the capture still pending is delivered, the sockets are removed."""
    agent = start_original_agent(
        public_dir / "sighup-agent",
        sagemaker_edge_core_capture_data_push_period_seconds=3600)  # only a flush delivers it
    capture_id = str(uuid.uuid4())
    replies = original_client(agent.grpc_path, f"load:add:{add_model}", f"capture:add:{capture_id}",
                              f"status:{capture_id}")
    assert [r["code"] for r in replies] == ["OK"] * 3 and replies[2]["result"] == "IN_PROGRESS"
    assert os.path.exists(agent.grpc_path) and os.path.exists(agent.socket_path)
    assert agent.stop(signal.SIGHUP) == 0, agent.log()
    assert not os.path.exists(agent.grpc_path)
    assert not os.path.exists(agent.socket_path)
    assert delivered_ids(disk_manifests(agent.workdir / "captures")) == [capture_id]
    assert "stopped" in agent.log()
