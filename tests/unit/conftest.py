"""Unit tests: modules called in process, no agent serving a socket, no child process, no socket
at all: `no_process_nor_socket` (autouse) fails a test that starts a process or creates a
socket, with a message that says where such a test belongs. Here `in_process` and
`start_in_process` give an AgentService with the configuration `edge-agent serve` tests use,
and an AgentClient that speaks to it over edge_agent.client.InMemoryTransport (Api.serve, what
the fronts call with a request's body) instead of a socket: the same requests, replies and
status codes as over the wire, encoded and decoded by the RPC table's codecs."""
from __future__ import annotations

import _posixsubprocess
import _socket
import json
import multiprocessing.process
import os
import socket
import subprocess
from pathlib import Path

import numpy.testing  # noqa: F401  # imported once here: its import runs lscpu (SVE check)
import pytest
import urllib3  # noqa: F401  # imported once here: its import opens a socket (IPv6 check)
from agents import agent_settings

from edge_agent import config as config_module
from edge_agent.api.caller import IN_PROCESS, Caller
from edge_agent.api.rpcs import Api
from edge_agent.api.service import AgentService
from edge_agent.client import AgentClient, InMemoryTransport
from edge_agent.models import model_check, model_check_child


ELSEWHERE = ("unit tests start no child process and open no socket: a test that needs one "
             "goes to tests/integration (the agent in a thread) or tests/e2e (where the process "
             "is the point); one about logic uses a fake behind the interface")


@pytest.fixture(autouse=True)
def no_process_nor_socket(monkeypatch, request):
    """Makes every way of starting a process and of creating a socket fail the test: os.fork,
    _posixsubprocess.fork_exec (subprocess keeps its own reference to it; multiprocessing's
    spawn uses it too), the os.posix_spawn/os.system/exec family, multiprocessing's start,
    socket.socket (socketpair and fromfd make one too) and the C module's _socket.socket and
    _socket.socketpair. The failure is pytest's own (a
    BaseException), so no `except Exception` of the code under test can swallow it; one
    swallowed anyway still fails the test at teardown."""
    attempts: list[str] = []

    def refuse(what: str):
        def refused(*args, **kwargs):
            attempts.append(what)
            pytest.fail(f"{what}: {ELSEWHERE}", pytrace=True)
        return refused

    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"os.{name}()"))
    child = refuse("a child process (subprocess, multiprocessing)")
    monkeypatch.setattr(_posixsubprocess, "fork_exec", child)
    monkeypatch.setattr(subprocess, "_fork_exec", child)  # subprocess's own reference to it
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start",
                        refuse("multiprocessing.Process.start()"))
    monkeypatch.setattr(socket.socket, "__init__", refuse("a socket"))
    monkeypatch.setattr(socket, "socketpair", refuse("socket.socketpair()"))
    # The C module's own names, which socket.py wraps: code that calls them directly.
    monkeypatch.setattr(_socket, "socket", refuse("a socket (_socket.socket)"))
    monkeypatch.setattr(_socket, "socketpair", refuse("_socket.socketpair()"))
    yield
    call = getattr(request.node, "call_report", None)
    if attempts and call is not None and not call.failed:
        pytest.fail(f"{', '.join(attempts)} (the error was caught): {ELSEWHERE}")


class InProcessProver:
    """The model check (edge_agent.models.model_check.Prover) run in the test's own process:
    the same check of the bytes (model_check_child._check: the runtime loads, allocates and
    invokes the model, runs a package's test vectors) and the same mapping of its outcome to
    a Proof or a status (model_check._outcome), without the process that isolates it from a
    crash and measures its memory (the peak is reported as 0). tests/e2e/test_prover.py and
    the integration and e2e tests prove the process itself."""
    has_helper = False

    def prove(self, content: bytes, config, what: str, memory_limit: int, vectors=None):
        result = model_check_child._check(bytes(content), model_check._child_settings(config),
                                          None if vectors is None else vectors.to_bytes())
        ending = model_check._Ending(0, False, (json.dumps(result) + "\n").encode())
        return model_check._outcome(ending, what, config.edge_agent_model_probe_timeout_seconds,
                                    memory_limit, 0.0, validating=vectors is not None)

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def in_process_model_check(monkeypatch):
    """Every AgentService of a unit test checks models with InProcessProver: the real Prover
    forks its helper process as the service is made."""
    monkeypatch.setattr("edge_agent.api.service.Prover", InProcessProver)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps the test's own report on the item, for the guard's teardown: a refusal that
    already failed the test is not reported twice."""
    report = yield
    if report.when == "call":
        item.call_report = report
    return report


class InProcessAgent:
    """An AgentService configured as tests/agents.py configures the served agent."""

    def __init__(self, workdir: Path, overrides: dict | None = None):
        settings = agent_settings(
            workdir, {"edge_agent_socket_path": str(workdir / "unused.sock"), **(overrides or {})})
        self.service = AgentService(config_module.from_mapping(settings))
        self.api = Api(self.service)

    def client(self, caller: Caller = IN_PROCESS) -> AgentClient:
        """An AgentClient over an InMemoryTransport to this service's Api."""
        return AgentClient(transport=InMemoryTransport(self.api, caller))

    def close(self) -> None:
        self.service.close()


@pytest.fixture
def start_in_process(tmp_path):
    """start_in_process(**config_overrides) → an InProcessAgent, closed after the test."""
    made: list[InProcessAgent] = []

    def start(**overrides) -> InProcessAgent:
        directory = tmp_path / f"service{len(made)}"
        directory.mkdir()
        made.append(InProcessAgent(directory, overrides))
        return made[-1]

    yield start
    for agent in made:
        agent.close()


@pytest.fixture
def in_process(start_in_process) -> InProcessAgent:
    """An in-process agent that accepts unsigned models, with the embedded defaults otherwise."""
    return start_in_process()
