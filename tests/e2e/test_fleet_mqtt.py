"""A board (an agent process) with a broker (real Mosquitto, TLS client certificates) and a bucket (SeaweedFS):
a message on edge-agent/<fleet>/deployment makes it read the documents at once, its status
is retained on edge-agent/<fleet>/<device>/deployment, its heartbeat carries the applied
sequence; a package whose bytes are not those the document names is reported failed and
nothing changes (docs/FLEET.md)."""
from __future__ import annotations

import dataclasses
import json
import queue

import pytest
from capture_helpers import wait_for
from fleet_helpers import Fleet
from lifecycle_helpers import X, offset_of

from edge_agent.app.cli import main
from edge_agent.fleet import document as d

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
pytest.importorskip("certificates", reason="needs cryptography")

from mqtt_broker import needs_broker  # noqa: E402

pytestmark = [needs_broker, pytest.mark.native_only]


class Watcher:
    """edge-agent/plant/# as an operator's console sees it; can publish a trigger."""

    def __init__(self, broker, pki):
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="console")
        self.client.tls_set(ca_certs=str(pki["ca"].cert_path),
                            certfile=str(pki["monitor"].cert_path),
                            keyfile=str(pki["monitor"].key_path))
        self.client.on_connect = lambda c, *_: c.subscribe("edge-agent/plant/#", qos=1)
        self.client.on_message = lambda c, u, m: self.messages.put(
            (m.topic, json.loads(m.payload)))
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()

    def wait(self, topic, predicate, what):
        while True:
            try:
                got, message = self.messages.get(timeout=60)
            except queue.Empty:
                raise AssertionError(f"no message on {topic} where {what}") from None
            if got == topic and predicate(message):
                return message

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


@pytest.fixture
def fleet(tmp_path, s3, s3_prefix, start_agent):
    fleet = Fleet(tmp_path / "fleet", s3, s3_prefix)
    yield fleet
    fleet.client.close()


@pytest.fixture
def watcher(broker, pki, start_agent):
    w = Watcher(broker, pki)
    yield w
    w.close()


def serving(agent):
    with agent.client() as client:
        return offset_of(client.predict("m", {"x": X}))


def test_a_message_reads_at_once_and_status_is_retained(fleet, broker, pki, watcher,
                                                         start_agent, capsys):
    v1, v2 = fleet.upload("m", "1.0"), fleet.upload("m", "2.0")
    fleet.put(fleet.document({"m": v1}))
    agent = start_agent(**fleet.settings(
        "b-1", edge_agent_deployment_poll_seconds=3600.0,
        edge_agent_deployment_trigger_min_seconds=0.2,
        edge_agent_mqtt_url=f"mqtts://127.0.0.1:{broker.port}",
        sagemaker_edge_provider_aws_ca_cert_file=str(pki["ca"].cert_path),
        sagemaker_edge_provider_aws_cert_file=str(pki["device"].cert_path),
        sagemaker_edge_provider_aws_cert_pk_file=str(pki["device"].key_path),
        edge_agent_heartbeat_period_seconds=0.2))
    status_topic = "edge-agent/plant/b-1/deployment"
    watcher.wait(status_topic, lambda m: m["sequence"] == 1 and
                 m["models"]["m"]["state"] == "serving", "sequence 1 serves")
    watcher.wait("edge-agent/plant/b-1/heartbeat",
                 lambda m: m.get("deployment", {}).get("sequence") == 1, "the heartbeat says 1")
    # Polls are an hour apart: only the message makes the board read sequence 2.
    fleet.put(fleet.document({"m": v1}, [d.Stage({"m": v2}, devices=("b-1",))]))
    for _ in range(5):
        watcher.client.publish("edge-agent/plant/deployment", "{}", qos=1)
    watcher.wait(status_topic, lambda m: m["sequence"] == 2 and
                 m["models"]["m"]["state"] == "serving", "sequence 2 serves")
    assert serving(agent) == 2.0
    # The status is retained: a console that subscribes later sees it at once.
    late = Watcher(broker, pki)  # noqa
    try:
        late.wait(status_topic, lambda m: m["sequence"] == 2, "the retained status")
    finally:
        late.close()
    # Sequence 3 names a package whose bytes are not those named: failed, 2.0 serves on.
    tampered = dataclasses.replace(v1, version="3.0", sha256="0" * 64)
    fleet.put(fleet.document({"m": tampered}))
    watcher.client.publish("edge-agent/plant/deployment", "{}", qos=1)
    message = watcher.wait(status_topic, lambda m: m["sequence"] == 3 and
                           m["models"]["m"]["state"] == "failed", "the tampered package failed")
    assert "not the one the document names" in message["models"]["m"]["reason"]
    assert serving(agent) == 2.0
    repository = fleet.root / "repository-b-1" / "m"
    assert not [p for p in repository.iterdir() if p.name.startswith("3.0")]
    wait_for(lambda: fleet.status("b-1")["sequence"] == 3, 30, 0.1, "the status object")
    # `fleet status` from the retained messages agrees (a fleet without status objects).
    capsys.readouterr()
    assert main(["fleet", "status", "--url", fleet.url, "--fleet", "plant", "--json",
                 "--mqtt-url", f"mqtts://127.0.0.1:{broker.port}",
                 "--mqtt-ca", str(pki["ca"].cert_path),
                 "--mqtt-cert", str(pki["monitor"].cert_path),
                 "--mqtt-key", str(pki["monitor"].key_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["device"], r["sequence"], r["state"], r["serving"]) for r in rows] == \
        [("b-1", 3, "failed", "2.0")]
