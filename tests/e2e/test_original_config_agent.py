"""The original agent's configuration file, as its documentation's sample has it, unchanged,
is an agent process's configuration. (The file's keys in process:
tests/unit/test_original_config.py.)"""
from __future__ import annotations

import shutil
from pathlib import Path

from edge_agent.client import AgentClient

from agents import AgentProcess

SAMPLE = Path(__file__).parent.parent / "original" / "sagemaker_edge_config.json"


def test_an_agent_serves_with_the_sample_file(tmp_path):
    """The file itself, unchanged, is the agent's configuration; only where to serve and keep
    state come from the command line."""
    config_file = tmp_path / "sagemaker_edge_config.json"
    shutil.copy(SAMPLE, config_file)
    agent = AgentProcess(tmp_path, config_file=config_file,
                         args=("--socket", str(tmp_path / "agent.sock"),
                               "--set", f"edge_agent_state_dir={tmp_path / 'state'}"))
    agent.start()
    try:
        with AgentClient(agent.socket_path) as client:
            assert client.list_models() == []
    finally:
        assert agent.stop() == 0
    log = agent.log()
    assert "configuration error" not in log
    assert "sagemaker_edge_provider_provider_path (/agent_demo/lib/libprovider_aws.so) has no effect" in log
    assert "sagemaker_edge_telemetry_libsystemd_path" in log
