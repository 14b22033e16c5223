"""Unit tests: modules called in process, no agent serving a socket. Here `in_process` and
`start_in_process` give an AgentService with the configuration `edge-agent serve` tests use,
and an AgentClient that speaks to it over edge_agent.client.InMemoryTransport (Api.serve, what
the fronts call with a request's body) instead of a socket: the same requests, replies and
status codes as over the wire, encoded and decoded by the RPC table's codecs."""
from __future__ import annotations

from pathlib import Path

import pytest
from agents import agent_settings

from edge_agent import config as config_module
from edge_agent.api.caller import IN_PROCESS, Caller
from edge_agent.api.rpcs import Api
from edge_agent.api.service import AgentService
from edge_agent.client import AgentClient, InMemoryTransport


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
