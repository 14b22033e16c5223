"""The MQTT heartbeat of the agent in a thread against a real Mosquitto broker on 127.0.0.1
that requires TLS client certificates (tests/mqtt_broker.py): counters that match the calls
made, a broker outage that predictions do not notice, heartbeats resuming after it. (The last
will on kill -9 and offline on a clean stop: tests/e2e/test_heartbeat_agent.py.)"""
from __future__ import annotations

import queue
import ssl

import numpy as np
import pytest

from edge_agent.errors import AgentError

from capture_helpers import wait_for

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed "
                           "(pip install edge-agent[mqtt])")
pytest.importorskip("certificates", reason="needs cryptography")

# The broker's fixtures (pki, broker, monitor) are registered by tests/conftest.py.
from mqtt_broker import ADD_INPUTS, counts, heartbeat_agent, needs_broker  # noqa: E402

pytestmark = needs_broker


def test_heartbeats_carry_the_counters_of_the_calls_made(start_agent, broker, monitor, pki,
                                                         model_files):
    agent = heartbeat_agent(start_agent, broker, pki)
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))
        for _ in range(3):
            client.predict("add", ADD_INPUTS)
        with pytest.raises(AgentError):
            client.predict("add", [np.ones((1, 3), np.float32)] * 2)
    beat = monitor.wait(lambda m: counts(m) == {"OK": 3, "INVALID_ARGUMENT": 1},
                        "add shows 3 OK and 1 INVALID_ARGUMENT")
    assert beat["online"] is True and beat["device"] == "dev-1" and beat["fleet"] == "fleet-a"
    assert beat["agent_version"] and beat["uptime_seconds"] > 0
    [model] = beat["models"]
    assert model["predict_seconds"]["count"] == 3 and model["input_bytes"] == 3 * 32
    assert model["delegate"] and model["memory_reserved_bytes"] > 0
    framed = {(c["rpc"], c["code"]): c["count"] for c in beat["calls"] if c["front"] == "framed"}
    assert framed[("Predict", "OK")] == 3 and framed[("Predict", "INVALID_ARGUMENT")] == 1
    assert beat["memory"]["resident_bytes"] > 0 and beat["cpu_seconds"] > 0
    assert beat["capture"]["backlog"] == 0


def test_a_broker_outage_does_not_touch_predictions_and_heartbeats_resume(
        start_agent, broker, monitor, pki, model_files):
    agent = heartbeat_agent(start_agent, broker, pki)
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))
        monitor.wait(lambda m: counts(m) == {"OK": 0}, "the model is loaded")
        broker.stop()
        wait_for(lambda: "MQTT: disconnected" in agent.log(), what="the agent to see the outage")
        # The broker is down for all of these: each must be answered, and right.
        for _ in range(20):
            np.testing.assert_array_equal(client.predict("add", ADD_INPUTS)["sum"],
                                          np.full((1, 4), 3, np.float32))
        assert agent.log().count("MQTT: connected") == 1  # still the outage: no reconnection
        broker.start()
        beat = monitor.wait(lambda m: counts(m) == {"OK": 20}, "the outage's 20 predictions show")
    assert beat["online"] is True
    assert agent.alive()


def test_the_broker_refuses_a_client_without_a_certificate(broker, pki):
    """The fixture is what the tests claim: no client certificate, no connection."""
    results: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stranger")
    client.tls_set(ca_certs=str(pki["ca"].cert_path))
    client.on_connect = lambda c, u, f, reason, p: results.put(not reason.is_failure)
    client.on_disconnect = lambda *_: results.put(False)
    try:
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        assert results.get(timeout=30) is False
    except (ssl.SSLError, OSError):
        pass  # refused during the handshake itself
    finally:
        client.loop_stop()


def test_heartbeats_carry_each_models_version_and_state(start_agent, broker, monitor, pki,
                                                        tmp_path):
    from lifecycle_helpers import Lab

    lab = Lab(tmp_path / "lab")
    lab.publish("m", "1.0")
    agent = heartbeat_agent(start_agent, broker, pki, **lab.settings())
    lab.publish("m", "2.0")
    with agent.client() as client:
        client.rescan()

    def states(message: dict) -> dict:
        return {s["name"]: (s["version"], s["state"], s["source"])
                for s in message.get("model_states", [])}

    beat = monitor.wait(lambda m: states(m).get("m") == ("2.0", "serving", "repository"),
                        "m 2.0 serving from the repository")
    assert beat["model_states"][0]["swaps"]["ok"] == 2
