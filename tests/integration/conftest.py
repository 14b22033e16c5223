"""Integration tests: the composed agent (edge_agent.app.root.App) in a thread of the test process,
serving a private socket in tmp_path — the same fronts, service and runtime as `edge-agent
serve`, without a process start per test. Here `agent` and `start_agent` are that agent (the
root conftest's are processes: tests/e2e, where the process is the point). Each agent's
threads and file descriptors are checked in teardown: stopping it must leave none behind."""
from __future__ import annotations

from pathlib import Path

import pytest
from agents import AgentInThread, agent_threads, assert_nothing_left, open_fds



@pytest.fixture
def start_agent(tmp_path):
    """start_agent(**config_overrides) → a running AgentInThread, stopped after the test and
    checked for leaked threads and descriptors."""
    fds_before, threads_before = open_fds(), agent_threads()
    agents: list[AgentInThread] = []

    def start(workdir: Path | None = None, **overrides) -> AgentInThread:
        directory = workdir or tmp_path / f"agent{len(agents)}"
        directory.mkdir(parents=True, exist_ok=True)
        agent = AgentInThread(directory, overrides)
        agents.append(agent)  # before it starts: one that fails half-way is still stopped
        return agent.start()

    yield start
    for agent in agents:
        agent.stop()
    assert_nothing_left(fds_before, threads_before)


@pytest.fixture
def agent(start_agent) -> AgentInThread:
    """A running agent that accepts unsigned models, with the embedded defaults otherwise."""
    return start_agent()
