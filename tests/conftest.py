"""Shared fixtures: a real agent process on a private socket, and the project's test models.

tests/integration/conftest.py replaces `agent` and `start_agent` there by the agent in a
thread; the classes and helpers live in tests/agents.py (importable by name)."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from agents import ROOT, AgentProcess, public_directory

from edge_agent.tools import model_builder

pytest_plugins = ["s3server", "mqtt_broker"]


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


@pytest.fixture
def public_dir():
    with public_directory() as directory:
        yield directory


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket where systemd would listen: (NOTIFY_SOCKET value, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(30)  # a bound for a broken agent, not a timing assumption
    yield str(path), sock
    sock.close()


@pytest.fixture(scope="session")
def public_python():
    """privileges.PublicPython: a Python (and the agent) that another user may run."""
    import shutil
    import tempfile

    from privileges import PublicPython

    directory = tempfile.mkdtemp(prefix="edge-agent-public-python-")
    os.chmod(directory, 0o755)
    try:
        yield PublicPython.make(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def make_service(tmp_path):
    """make_service(**settings) → an AgentService capturing to tmp_path/out, closed after the
    test (the capture service's tests, unit and integration)."""
    services = []

    def make(**overrides):
        settings = {
            "edge_agent_state_dir": str(tmp_path / "state"),
            "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "out"),
            "sagemaker_edge_core_capture_data_push_period_seconds": 0.05,
            "edge_agent_capture_retry_max_seconds": 0.05,
            "edge_agent_capture_flush_seconds": 0.5,
        }
        settings.update(overrides)
        from edge_agent.api.service import AgentService
        from edge_agent.platform import boards
        service = AgentService(boards.load(None, settings))
        services.append(service)
        return service

    yield make
    for service in services:
        service.close()
