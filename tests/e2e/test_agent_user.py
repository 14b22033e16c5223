"""The agent as its own unprivileged user, as install/edge-agent.service runs it: with
CAP_IPC_OWNER it attaches the 0400 SysV segments that the original agent's clients make; the
permission check against the caller's credentials stays the gate. Without it, a clear
PERMISSION_DENIED that says how to fix it."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.app import cli
from edge_agent.platform import runtime
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError, StatusCode
from edge_agent.shm_client import SysVSegment

from privileges import CAP_IPC_OWNER, NOBODY, fork_as, project_unreachable_reason

# What the agent imports, lazily or not, on the paths these tests take.
AGENT_MODULES = ("grp", "pwd", "edge_agent.transport.framed_front", "edge_agent.api.service",
                 "edge_agent.models.engine",
                 "edge_agent.capture.capture_calls", "edge_agent.platform.systemd", "edge_agent.platform.boards",
                 "edge_agent.shm.segments", "edge_agent.models.model_files")


def _preload_agent() -> None:
    for name in AGENT_MODULES:
        importlib.import_module(name)
    runtime.interpreter_module()


pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")]
CAPABILITY_NAMES = {CAP_IPC_OWNER: "ipc_owner"}


def _start_as_nobody(public_python, capabilities: tuple[int, ...], config: Path,
                     log: Path) -> int:
    """The agent as nobody: a forked child (privileges.fork_as) where everything it imports
    lazily is reachable by nobody; else a public copy of this Python and the agent
    (privileges.PublicPython) run as nobody by setpriv, with `capabilities` ambient."""
    if project_unreachable_reason() is None:
        return fork_as(NOBODY, NOBODY, lambda: cli.main(["serve", "--config", str(config)]),
                       str(log), capabilities, preload=_preload_agent)
    if shutil.which("setpriv") is None:
        pytest.skip("the agent lives where nobody cannot reach it, and setpriv (util-linux) "
                    "is missing to run a public copy of it")
    caps = ",".join(f"+{CAPABILITY_NAMES[c]}" for c in capabilities)
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if caps:
        prefix += [f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set=-all,{caps}"]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*prefix, "env", *(f"{k}={v}" for k, v in public_python.env.items()),
             *public_python.command, "-m", "edge_agent", "serve", "--config", str(config)],
            stdout=out, stderr=out, cwd=config.parent)
    process.returncode = 0  # reaped with os.waitpid below, not through Popen
    return process.pid


@pytest.fixture
def start_agent_as_nobody(model_files, public_python):
    """start(capabilities) → the socket path of an agent running as nobody."""
    started = []

    def start(capabilities: tuple[int, ...], **settings) -> str:
        directory = Path(tempfile.mkdtemp(prefix="edge-agent-user-"))
        directory.chmod(0o755)
        os.chown(directory, NOBODY, NOBODY)
        socket_path = str(directory / "agent.sock")
        config = directory / "agent.json"
        config.write_text(json.dumps({
            "edge_agent_socket_path": socket_path, "edge_agent_socket_mode": "0666",
            "edge_agent_state_dir": str(directory / "state"),
            "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1,
            **settings}))
        shutil.copy(model_files["add"], directory / "add.tflite")
        (directory / "add.tflite").chmod(0o644)
        log = directory / "agent.log"
        pid = _start_as_nobody(public_python, capabilities, config, log)
        started.append((pid, directory))
        _wait_until_serving(pid, socket_path, log)
        return socket_path

    yield start
    for pid, directory in started:
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        log = (directory / "agent.log").read_text(errors="replace")
        shutil.rmtree(directory, ignore_errors=True)
        assert os.waitstatus_to_exitcode(status) == 0, log


def _wait_until_serving(pid: int, socket_path: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise RuntimeError(f"the agent exited ({status}): {log.read_text(errors='replace')}")
        try:
            with AgentClient(socket_path) as client:
                client.list_models()
            return
        except (OSError, AgentError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)


def _owner_read_only_segment(array: np.ndarray) -> tuple[SysVSegment, object]:
    """What the original agent's example client does: a segment only its owner may read."""
    segment = SysVSegment.create(array.nbytes, mode=0o400)  # root may still write it
    return segment, segment.write(array)


def test_with_cap_ipc_owner_the_agents_user_reads_its_callers_0400_segment(start_agent_as_nobody):
    socket_path = start_agent_as_nobody((CAP_IPC_OWNER,))
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = np.full((1, 4), 0.5, np.float32)
    segment, tensor = _owner_read_only_segment(a)
    try:
        with AgentClient(socket_path) as client:
            client.load_model("add", str(Path(socket_path).parent / "add.tflite"))
            outputs = client.predict("add", [tensor, b])
        np.testing.assert_array_equal(next(iter(outputs.values())), a + b)
    finally:
        segment.free()


def test_without_it_the_agent_says_permission_denied_and_how_to_fix_it(start_agent_as_nobody):
    socket_path = start_agent_as_nobody(())
    a = np.ones((1, 4), np.float32)
    segment, tensor = _owner_read_only_segment(a)
    try:
        with AgentClient(socket_path) as client:
            client.load_model("add", str(Path(socket_path).parent / "add.tflite"))
            with pytest.raises(AgentError) as info:
                client.predict("add", [tensor, a])
            assert info.value.code == StatusCode.PERMISSION_DENIED, info.value.message
            assert "CAP_IPC_OWNER" in info.value.message
            assert f"SysV segment {segment.shmid}" in info.value.message
            # The agent keeps serving the same client.
            assert [m.name for m in client.list_models()] == ["add"]
    finally:
        segment.free()


def test_a_package_passed_as_a_descriptor_needs_no_right_of_the_agents_user(
        start_agent_as_nobody, tmp_path):
    """The client's package is 0600 in a 0700 directory: the agent's user could not open it,
    and needs not: it reads the archive through the descriptor the client passed."""
    from package_cases import Signer

    keys = Path(tempfile.mkdtemp(prefix="edge-agent-keys-"))
    keys.chmod(0o755)
    try:
        signer = Signer(keys / "signer")
        socket_path = start_agent_as_nobody((), sagemaker_edge_core_root_certs_path=str(
            signer.trust), edge_agent_allow_unsigned_models=False)
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        package = signer.package(private / "demo.tar.gz")
        package.chmod(0o600)
        with AgentClient(socket_path) as client, open(package, "rb") as f:
            info = client.load_model_from_file("demo", f)
            assert info.url == "fd:0"
            with pytest.raises(AgentError) as refused:  # by path: not the agent's to read
                client.load_model("by-path", str(package))
            assert refused.value.code == StatusCode.FAILED_PRECONDITION, refused.value.message
    finally:
        shutil.rmtree(keys, ignore_errors=True)
