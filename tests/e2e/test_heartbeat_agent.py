"""The MQTT heartbeat of agent processes (tests/mqtt_broker.py's broker): the last will
says offline when the agent is killed with SIGKILL, a clean stop says offline itself. (The
heartbeat's content and a broker outage: tests/integration/test_heartbeat.py.)"""
from __future__ import annotations

import signal

import pytest

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed "
                    "(pip install edge-agent[mqtt])")
pytest.importorskip("certificates", reason="needs cryptography")

# The broker's fixtures (pki, broker, monitor) are registered by tests/conftest.py.
from mqtt_broker import heartbeat_agent, needs_broker  # noqa: E402

pytestmark = needs_broker


def test_last_will_on_kill_and_offline_on_a_clean_stop(start_agent, broker, monitor, pki, tmp_path):
    agent = heartbeat_agent(start_agent, broker, pki)
    monitor.wait(lambda m: m.get("online") is True, "the agent is online")
    agent.stop(signal.SIGKILL)
    will = monitor.wait(lambda m: m.get("online") is False, "the last will says offline")
    assert will == {"device": "dev-1", "fleet": "fleet-a", "online": False}

    again = heartbeat_agent(start_agent, broker, pki)
    monitor.wait(lambda m: m.get("online") is True, "the new agent is online")
    again.stop(signal.SIGTERM)
    assert monitor.wait(lambda m: m.get("online") is False, "a clean stop says offline")["device"] == "dev-1"
    assert "Traceback" not in again.log()
