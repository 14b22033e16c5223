"""The health check systemd's watchdog relies on (systemd.agent_answers), against the agent
in a thread and against no agent."""
from __future__ import annotations

from edge_agent.platform import systemd


def test_agent_answers_its_own_health_check(agent, tmp_path):
    assert systemd.agent_answers(agent.socket_path, timeout=10)
    assert not systemd.agent_answers(str(tmp_path / "nobody.sock"), timeout=10)
