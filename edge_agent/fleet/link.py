"""The board's MQTT link for deployments: a message on edge-agent/<fleet>/deployment wakes
the fleet source (whatever it says: the bucket stays the only source of truth), and the
device's status is published, retained, on edge-agent/<fleet>/<device>/deployment.

Its own connection (client id `<heartbeat client id>-deployment`), with the heartbeat's
broker url and TLS settings (edge_agent.observe.heartbeat); paho-mqtt reconnects with backoff and
the subscription is renewed on each connection.
"""
from __future__ import annotations

import logging
from typing import Callable

import paho.mqtt.client as mqtt

from edge_agent.observe import heartbeat
from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)


def trigger_topic(fleet: str) -> str:
    return f"edge-agent/{fleet}/deployment"


def status_topic(fleet: str, device: str) -> str:
    return f"edge-agent/{fleet}/{device}/deployment"


class FleetLink:
    def __init__(self, config: AgentConfig, on_trigger: Callable[[], None]):
        self.fleet = config.sagemaker_edge_core_device_fleet_name
        self.device = config.sagemaker_edge_core_device_name
        self._on_trigger = on_trigger
        tls, self.host, self.port, username, password = heartbeat._broker(config.edge_agent_mqtt_url)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=heartbeat.client_id(config) + "-deployment")
        if username is not None:
            client.username_pw_set(username, password)
        if tls:
            heartbeat.Heartbeat._set_tls(client, config)
        client.reconnect_delay_set(heartbeat.RECONNECT_MIN_SECONDS, heartbeat.RECONNECT_MAX_SECONDS)
        client.on_connect = self._on_connect
        client.on_message = lambda client, userdata, message: self._on_trigger()
        self.client = client
        self._last = ""  # the last status, published again on each (re)connection

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT (deployment): %s:%d refused the connection: %s", self.host,
                        self.port, reason_code)
            return
        client.subscribe(trigger_topic(self.fleet), qos=1)
        if self._last:
            self.publish(self._last)

    def publish(self, status: str) -> None:
        self._last = status
        if self.client.is_connected():
            self.client.publish(status_topic(self.fleet, self.device), status, qos=1, retain=True)

    def start(self) -> "FleetLink":
        self.client.connect_async(self.host, self.port, keepalive=heartbeat.KEEPALIVE_SECONDS)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets(sockpair_only=True)
