"""A real Mosquitto broker on 127.0.0.1 that requires TLS client certificates, a monitor that
subscribes to the heartbeat topic as a fleet's dashboard would, and their fixtures: shared by
tests/integration/test_heartbeat.py (the agent in a thread) and tests/e2e/test_heartbeat_agent.py
(agent processes). A test module using them skips itself where paho-mqtt, cryptography or
mosquitto is missing (`needs_broker`, pytest.importorskip); the fixtures import those
only when used, because tests/conftest.py registers this module for every test."""
from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from capture_helpers import wait_for

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto broker (Debian's "
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
        import paho.mqtt.client as mqtt

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
        # The socket pair loop_start() made, which paho closes only when the client is freed
        # (as edge_agent.observe.heartbeat does at stop): not left for start_agent's descriptor check.
        self.client._reset_sockets(sockpair_only=True)


@pytest.fixture
def pki(tmp_path):
    import certificates

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
