"""Unit tests: modules called in process, no agent serving a socket. Here `in_process` and
`start_in_process` give an AgentService with the configuration `edge-agent serve` tests use,
and a client that speaks to it through the one RPC table (edge_agent.api.rpcs) instead of a socket:
the same requests, replies and status codes as over the wire, encoded by AgentClient's own
methods."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from agents import agent_settings

from edge_agent import config as config_module
from edge_agent.api.rpcs import BY_METHOD, Api
from edge_agent.api.caller import IN_PROCESS
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.service import AgentService


class InProcessClient(AgentClient):
    """AgentClient whose calls go to Api.invoke in this process: what the fronts do with a
    request's body, without the framing."""

    def __init__(self, api: Api):  # no socket: AgentClient.__init__ would connect one
        self.socket_path = "(in process)"
        self._api = api

    def close(self) -> None:
        pass

    def call(self, method, request, response_type: type | None = None, fds=()):
        rpc = BY_METHOD.get(method)
        caller = dataclasses.replace(IN_PROCESS, fds=tuple(fds))
        code, reply = (self._api.unknown(method) if rpc is None
                       else self._api.serve(rpc, request.SerializeToString(), caller))
        if code != StatusCode.OK:
            raise AgentError(code, reply)
        return (response_type or rpc.response_type).FromString(reply)


class InProcessAgent:
    """An AgentService configured as tests/agents.py configures the served agent."""

    def __init__(self, workdir: Path, overrides: dict | None = None):
        settings = agent_settings(
            workdir, {"edge_agent_socket_path": str(workdir / "unused.sock"), **(overrides or {})})
        self.service = AgentService(config_module.from_mapping(settings))
        self.api = Api(self.service)

    def client(self) -> InProcessClient:
        return InProcessClient(self.api)

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
