"""The MQTT heartbeat: the metrics document (edge_agent.observe.metrics.document) published every
edge_agent_heartbeat_period_seconds to edge_agent_heartbeat_topic on edge_agent_mqtt_url.

paho-mqtt is an optional extra (`pip install edge-agent[mqtt]`), imported only when
edge_agent_mqtt_url is set. Its network thread connects, and reconnects with backoff
(1 s doubling to 60 s) after an outage; the heartbeat thread publishes only while connected
and drops a beat otherwise. Neither shares a lock with the call paths, which never wait on
the broker: a broker that is down or slow costs a prediction nothing.

Every message is retained, so a dashboard that subscribes later sees each device's last
state at once. The last will, on the same topic, says the device is offline: the broker
publishes it when the agent dies or its connection drops; a clean stop publishes it itself.
"""
from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from typing import Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from edge_agent import agent_pb2 as pb
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.observe.metrics import document

log = logging.getLogger(__name__)

RECONNECT_MIN_SECONDS = 1
RECONNECT_MAX_SECONDS = 60
KEEPALIVE_SECONDS = 60
QOS = 1
STOP_PUBLISH_SECONDS = 2.0  # the offline message of a clean stop gets this long to go out


def _topic_part(text: str, default: str) -> str:
    """A topic level: MQTT's separators and wildcards would change what the topic means."""
    cleaned = "".join("_" if ch in "/+#" else ch for ch in text)
    return cleaned or default


def topic(config: AgentConfig) -> str:
    if config.edge_agent_heartbeat_topic:
        if "+" in config.edge_agent_heartbeat_topic or "#" in config.edge_agent_heartbeat_topic:
            raise ConfigError(f"edge_agent_heartbeat_topic: {config.edge_agent_heartbeat_topic!r} "
                              "has a wildcard (+ or #); a message needs a plain topic")
        return config.edge_agent_heartbeat_topic
    fleet = _topic_part(config.sagemaker_edge_core_device_fleet_name, "default")
    device = _topic_part(config.sagemaker_edge_core_device_name, socket.gethostname())
    return f"edge-agent/{fleet}/{device}/heartbeat"


def client_id(config: AgentConfig) -> str:
    """The thing name where one is set (AWS IoT policies often require it), else the device."""
    return (config.edge_agent_iot_thing_name or config.sagemaker_edge_core_device_name
            or f"edge-agent-{socket.gethostname()}")


def _broker(url: str) -> tuple[bool, str, int, str | None, str | None]:
    """(tls, host, port, username, password) of an mqtt:// or mqtts:// url."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"edge_agent_mqtt_url: expected mqtt://HOST[:PORT] or "
                          f"mqtts://HOST[:PORT], got {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"edge_agent_mqtt_url: bad port in {url!r}") from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return tls, parts.hostname, port, username, password


class Heartbeat:
    def __init__(self, snapshot: Callable[[], pb.GetMetricsResponse], config: AgentConfig,
                 extra: Callable[[], dict] | None = None):
        self._snapshot = snapshot
        self._extra = extra  # more fields (the fleet deployment's applied sequence)
        self.config = config
        self.topic = topic(config)
        self.period = config.edge_agent_heartbeat_period_seconds
        tls, self.host, self.port, username, password = _broker(config.edge_agent_mqtt_url)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-agent-heartbeat",
                                        daemon=True)
        self.published = 0  # heartbeats handed to the broker connection (for the log)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(config))
        if username is not None:
            client.username_pw_set(username, password)
        if tls:
            self._set_tls(client, config)
        client.will_set(self.topic, self._offline(), qos=QOS, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self.client = client

    @staticmethod
    def _set_tls(client, config: AgentConfig) -> None:
        cert = config.sagemaker_edge_provider_aws_cert_file
        key = config.sagemaker_edge_provider_aws_cert_pk_file
        if bool(cert) != bool(key):
            raise ConfigError("edge_agent_mqtt_url: an mqtts:// broker with a client certificate "
                              "needs both sagemaker_edge_provider_aws_cert_file and "
                              "sagemaker_edge_provider_aws_cert_pk_file")
        try:
            client.tls_set(ca_certs=config.sagemaker_edge_provider_aws_ca_cert_file or None,
                           certfile=cert or None, keyfile=key or None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"edge_agent_mqtt_url: cannot use the device certificate, key or "
                              f"CA (sagemaker_edge_provider_aws_*): {e}") from None

    def _identity(self) -> dict:
        return {"device": self.config.sagemaker_edge_core_device_name,
                "fleet": self.config.sagemaker_edge_core_device_fleet_name}

    def _offline(self) -> str:
        return json.dumps({**self._identity(), "online": False})

    def message(self) -> str:
        """One heartbeat: the metrics document, marked online and stamped."""
        return json.dumps({"online": True, "time_unix_seconds": time.time(),
                           **document(self._snapshot()),
                           **(self._extra() if self._extra is not None else {})})

    # --- paho's network thread ----------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.host, self.port,
                        reason_code)
            return
        log.info("MQTT: connected to %s:%d; heartbeats to %s every %g s", self.host, self.port,
                 self.topic, self.period)
        self._publish()  # at once: a reconnected device shows up without waiting a period

    def _on_connect_fail(self, client, userdata) -> None:
        # Each try of the backoff (1 s doubling to 60 s): a broker down, a certificate refused.
        log.warning("MQTT: cannot connect to %s:%d; retrying", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._stopping.is_set():
            log.warning("MQTT: disconnected from %s:%d (%s); reconnecting", self.host,
                        self.port, reason_code)

    # --- the heartbeat thread -----------------------------------------------------------------

    def _publish(self) -> None:
        if not self.client.is_connected():
            return  # dropped: a stale beat queued for the reconnection would say nothing new
        try:
            self.client.publish(self.topic, self.message(), qos=QOS, retain=True)
            self.published += 1
        except Exception:  # a fault of ours must not end the heartbeats
            log.exception("MQTT: cannot publish a heartbeat")

    def _run(self) -> None:
        while not self._stopping.wait(self.period):
            self._publish()

    def start(self) -> "Heartbeat":
        # connect_async: the first connection is made by the network thread, so an
        # unreachable broker delays nothing here either.
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_SECONDS)
        self.client.loop_start()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Say offline (a clean disconnect sends no will), then disconnect."""
        self._stopping.set()
        self._thread.join(5)
        if self.client.is_connected():
            info = self.client.publish(self.topic, self._offline(), qos=QOS, retain=True)
            try:
                info.wait_for_publish(STOP_PUBLISH_SECONDS)
            except (RuntimeError, ValueError):
                pass  # not sent: the broker then never saw a clean disconnect either
        self.client.disconnect()
        self.client.loop_stop()
        # loop_start() made a socket pair that wakes paho's loop; paho closes it only when the
        # client is freed, and the callbacks bound here put the client in a reference cycle
        # (freed at some later garbage collection): an agent stopped in a process that goes on
        # (App.stop in process) would keep two sockets open until then. Closed now.
        self.client._reset_sockets(sockpair_only=True)


def start(snapshot: Callable[[], pb.GetMetricsResponse], config: AgentConfig,
          extra: Callable[[], dict] | None = None) -> Heartbeat | None:
    """The heartbeat the configuration asks for, started; None when edge_agent_mqtt_url is
    empty."""
    if not config.edge_agent_mqtt_url:
        return None
    return Heartbeat(snapshot, config, extra).start()
