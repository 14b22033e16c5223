"""Shared fixtures: a real agent process on a private socket, and the project's test models."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edge_agent.client import AgentClient
from edge_agent.tools import model_builder

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["s3server"]


class AgentProcess:
    """`edge-agent serve` in its own process, as a board runs it."""

    def __init__(self, workdir: Path, overrides: dict | None = None, config_file: Path | None = None,
                 args: tuple[str, ...] = ()):
        self.workdir = workdir
        self.args = args  # more `serve` arguments (--board NAME...)
        self.socket_path = str(workdir / "agent.sock")
        self.log_path = workdir / "agent.log"
        settings = {
            "edge_agent_socket_path": self.socket_path,
            "edge_agent_state_dir": str(workdir / "state"),
            "edge_agent_allow_unsigned_models": True,
            "edge_agent_num_threads": 1,
        }
        settings.update(overrides or {})
        self.socket_path = settings["edge_agent_socket_path"]
        self.config_path = config_file or workdir / "agent.json"
        if config_file is None:
            self.config_path.write_text(json.dumps(settings))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "AgentProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            try:
                with AgentClient(self.socket_path) as client:
                    client.list_models()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.process.kill()  # not left running: no fixture will stop it
                    self.process.wait()
                    raise RuntimeError(f"agent did not start:\n{self.log()}")
                time.sleep(0.05)

    def command(self) -> list[str]:
        """What starts the agent (a subclass may start it another way: as another user...)."""
        return [sys.executable, "-m", "edge_agent", "serve", "--config", str(self.config_path),
                *self.args]

    def client(self, **kwargs) -> AgentClient:
        return AgentClient(self.socket_path, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def start_agent(tmp_path):
    """start_agent(**config_overrides) → a running AgentProcess, stopped after the test."""
    agents: list[AgentProcess] = []

    def start(workdir: Path | None = None, **overrides) -> AgentProcess:
        directory = workdir or tmp_path / f"agent{len(agents)}"
        directory.mkdir(parents=True, exist_ok=True)
        agent = AgentProcess(directory, overrides).start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def agent(start_agent) -> AgentProcess:
    """A running agent that accepts unsigned models, with the embedded defaults otherwise."""
    return start_agent()


@pytest.fixture(scope="session")
def recording_delegate(tmp_path_factory) -> str:
    """tests/delegate/recording_delegate.c built as a shared library, as a vendor's delegate
    is shipped (the delegate tests, and the parallelism tests that use its barrier)."""
    library = tmp_path_factory.mktemp("delegate") / "librecording_delegate.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(library),
                    str(ROOT / "tests" / "delegate" / "recording_delegate.c")], check=True)
    return str(library)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """The project's test models written once per session, by name."""
    directory = tmp_path_factory.mktemp("models")
    models = {
        "add": model_builder.add_model(),
        "fc": model_builder.fully_connected_model(),
        "quant-uint8": model_builder.quantized_add_model("uint8"),
        "quant-int8": model_builder.quantized_add_model("int8"),
        "multi": model_builder.multi_output_model(),
        "dynamic": model_builder.dynamic_batch_model(),
        "custom": model_builder.custom_op_model(),
        "slow": model_builder.slow_model(),
        "demo": model_builder.demo_model(),
    }
    return {name: m.write(directory / f"{name}.tflite") for name, m in models.items()}


@contextlib.contextmanager
def public_directory(prefix: str = "edge-agent-test-"):
    """A directory every user may search and read (tmp_path lies in a 0700 tree), removed
    afterwards: for what another user must reach."""
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        os.chmod(directory, 0o755)
        yield Path(directory)


@pytest.fixture
def public_dir():
    with public_directory() as directory:
        yield directory
