"""The MQTT heartbeat against a real Mosquitto broker on 127.0.0.1 that requires TLS client
certificates: counters that match the calls made, a broker outage that predictions do not
notice, heartbeats resuming after it, the last will on kill -9, offline on a clean stop."""
from __future__ import annotations

import json
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import AgentError

from capture_helpers import wait_for

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed "
                           "(pip install edge-agent[mqtt])")
certificates = pytest.importorskip("certificates", reason="needs cryptography")
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto broker (Debian's "
                                "`mosquitto` package; make system-deps installs it)")

TOPIC = "edge-agent/fleet-a/dev-1/heartbeat"
ADD_INPUTS = {"a": np.ones((1, 4), np.float32), "b": np.full((1, 4), 2, np.float32)}


class Mosquitto:
    """A broker on one loopback port; TLS only, client certificates required."""

    def __init__(self, directory: Path, ca, server):
        self.directory = directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join([
            "per_listener_settings false",
            "persistence false",
            # Run as root, mosquitto switches to its own user, which cannot read the keys here.
            "user root",
            f"listener {self.port} 127.0.0.1",
            f"cafile {ca.cert_path}",
            f"certfile {server.cert_path}",
            f"keyfile {server.key_path}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            "log_type all",
        ]) + "\n")
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

        def listening():
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, what="mosquitto to listen")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Monitor:
    """A subscriber to the heartbeat topic with a certificate of its own, as a fleet's
    dashboard would be; re-subscribes after each reconnection."""

    def __init__(self, broker: Mosquitto, ca, cert):
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="monitor")
        self.client.tls_set(ca_certs=str(ca.cert_path), certfile=str(cert.cert_path),
                            keyfile=str(cert.key_path))
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
        self.client.on_message = lambda c, u, message: self.messages.put(
            json.loads(message.payload))
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()

    def wait(self, predicate, what: str, timeout: float = 60.0) -> dict:
        """The first message that satisfies predicate, within timeout (a bound, not a
        measured time: a healthy run sees it within a few heartbeats)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no heartbeat where {what}") from None
            if predicate(message):
                return message

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def pki(tmp_path):
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = certificates.issue(directory, "ca")
    return {"ca": ca, "server": certificates.issue(directory, "server", ca, server=True),
            "device": certificates.issue(directory, "device", ca),
            "monitor": certificates.issue(directory, "monitor", ca)}


@pytest.fixture
def broker(tmp_path, pki):
    directory = tmp_path / "broker"
    directory.mkdir()
    b = Mosquitto(directory, pki["ca"], pki["server"]).start()
    yield b
    b.stop()


@pytest.fixture
def monitor(broker, pki):
    m = Monitor(broker, pki["ca"], pki["monitor"])
    yield m
    m.close()


def heartbeat_agent(start_agent, broker, pki, **overrides):
    return start_agent(
        edge_agent_mqtt_url=f"mqtts://127.0.0.1:{broker.port}",
        sagemaker_edge_provider_aws_ca_cert_file=str(pki["ca"].cert_path),
        sagemaker_edge_provider_aws_cert_file=str(pki["device"].cert_path),
        sagemaker_edge_provider_aws_cert_pk_file=str(pki["device"].key_path),
        sagemaker_edge_core_device_name="dev-1", sagemaker_edge_core_device_fleet_name="fleet-a",
        edge_agent_heartbeat_period_seconds=0.2, **overrides)


def counts(message: dict, model: str = "add") -> dict | None:
    for entry in message.get("models", []):
        if entry["name"] == model:
            return entry["predictions"]
    return None


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
