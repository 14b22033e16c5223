"""The composition root: one configuration in, a serving agent out.

App builds what the configuration asks for, in order — the agent service (with its capture
service), the pending budget both fronts share, the framed socket, the gRPC front when
configured, the observers (Prometheus exposition, MQTT heartbeat) — and stops them in the
reverse order. It is the one place where the parts meet: `edge-agent serve` runs it with
signal handling (App.run); the tests start it in a thread of their own process (App.start,
App.stop) on a private socket, the same agent without a process around it.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Callable

from edge_agent import __version__
from edge_agent.config import AgentConfig

if TYPE_CHECKING:  # imported in start(): `edge-agent client ...` needs none of them
    from edge_agent.transport.grpc_front import GrpcServer
    from edge_agent.models.lifecycle.manager import ModelManager
    from edge_agent.transport.framed_front import SocketServer
    from edge_agent.api.service import AgentService
    from edge_agent.platform.systemd import Notifier
    from edge_agent.transport.front_core import FrontLoop

log = logging.getLogger("edge_agent")

# The original unit's KillSignal is SIGHUP; SIGTERM is systemd's default, SIGINT a terminal's.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How long calls in progress on the framed socket get to be answered at stop (the gRPC
# front's grace is the same).
STOP_GRACE_SECONDS = 2.0


class StartError(Exception):
    """The agent could not start; nothing it started is left running. `status` is the exit
    status of `edge-agent serve`: 2 for a configuration error, 1 for anything else."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class App:
    """The agent of one configuration: start() binds and serves in threads, stop() stops
    gracefully (calls in progress answered, captures flushed, socket files removed)."""

    def __init__(self, config: AgentConfig, make_capture: Callable | None = None,
                 config_source: str = "embedded default configuration"):
        self.config = config
        self._make_capture = make_capture  # None: the real CaptureService
        self._config_source = config_source  # for the start-up log line
        self.stop_grace_seconds = STOP_GRACE_SECONDS
        # Made by start(); the methods that use them run only after it succeeded.
        self.service: AgentService = None  # type: ignore[assignment]
        self.server: SocketServer = None  # type: ignore[assignment]
        self.grpc_server: GrpcServer | None = None
        self.observers: list = []
        self.models: ModelManager | None = None  # the model repository's manager, if any
        self.fleet = None  # the fleet deployment's source (edge_agent.fleet.board), if any
        self._fleet_link = None  # its MQTT connection, if a broker is configured
        self._notifier: Notifier = None  # type: ignore[assignment]
        self.fronts: FrontLoop = None  # type: ignore[assignment]  # the event loop
        self._serving: threading.Thread | None = None

    @property
    def socket_path(self) -> str:
        return self.config.edge_agent_socket_path

    @property
    def serving(self) -> bool:
        """Started, and the fronts' loop still serving."""
        return self._serving is not None and self._serving.is_alive()

    def start(self) -> "App":
        """Bind every front and serve in threads; raises StartError (having undone what it
        started) when a part cannot start."""
        from edge_agent.platform import boards
        from edge_agent.platform import systemd
        from edge_agent import config as config_module
        from edge_agent.transport.pending import PendingBudget
        from edge_agent.errors import AgentError
        from edge_agent.transport.framed_front import ServerError, SocketServer
        from edge_agent.transport.front_core import FrontLoop
        from edge_agent.api.service import AgentService

        config = self.config
        grpc_path = config.edge_agent_grpc_socket_path
        if grpc_path and os.path.abspath(grpc_path) == os.path.abspath(config.edge_agent_socket_path):
            raise StartError(f"configuration error: the gRPC socket and the framed socket are "
                             f"both {grpc_path}; give edge_agent_socket_path another path", 2)
        if self._make_capture is None:
            from edge_agent.capture.capture_calls import CaptureService
            self._make_capture = CaptureService
        try:
            # Checks settings only a service can (capture's Cloud).
            self.service = AgentService(config, make_capture=self._make_capture)
        except config_module.ConfigError as e:
            raise StartError(f"configuration error: {e}", 2) from None
        pending = PendingBudget(  # one budget for both fronts
            config.pending_budget_bytes, config.edge_agent_connection_reserve_bytes)
        # One event loop serves every connection of both fronts (edge_agent.transport).
        self.fronts = FrontLoop()
        self.server = SocketServer(self.service, config, pending, self.fronts)
        try:
            self.server.bind()
        except (ServerError, OSError) as e:  # OSError: its directory cannot be made
            self.service.close()
            raise StartError(str(e), 1) from None
        if grpc_path:
            from edge_agent.transport import grpc_front
            try:
                self.grpc_server = grpc_front.start(self.service, config, pending=pending,
                                                    fronts=self.fronts)
            except (ServerError, OSError) as e:
                self._close_framed_socket()
                self.service.close()
                raise StartError(f"edge_agent_grpc_socket_path: {e}", 1) from None
        try:
            # Before READY=1: applications find the repository's models after any restart
            # (clients that connect meanwhile wait in the listen backlog).
            self.models, self.fleet = _start_models(self.service, config, systemd.notify)
            extra = self.fleet.heartbeat_fields if self.fleet is not None else None
            self.observers = _start_observers(self.service, config, extra)
            if self.fleet is not None and config.edge_agent_mqtt_url:
                from edge_agent.fleet.link import FleetLink
                self._fleet_link = FleetLink(config, self.fleet.trigger).start()
                self.fleet.set_publisher(self._fleet_link.publish)
        except (config_module.ConfigError, AgentError, OSError) as e:
            for observer in self.observers:
                observer.stop()
            if self.fleet is not None:
                self.fleet.stop()
            if self.models is not None:
                self.models.stop()
            self._close_framed_socket()
            self.service.close()
            if isinstance(e, AgentError):
                raise StartError(f"model repository: {e.message}", 2) from None
            if isinstance(e, OSError):  # the state directory cannot hold the models' state
                raise StartError(f"model repository: {e}", 1) from None
            raise StartError(f"configuration error: {e}", 2) from None
        log.info("edge-agent %s: %s", __version__, self._config_source)
        boards.log_board(config)
        for note in config_module.compatibility_notes(config):
            log.info("%s", note)
        self._notifier = systemd.Notifier()  # READY=1 and the watchdog, when systemd runs it
        # The watchdog is fed from the loop itself: a stuck loop is noticed.
        self._notifier.ready(config.edge_agent_socket_path, self.fronts.loop.every)
        self._serving = threading.Thread(target=self.fronts.run, daemon=True,
                                         name="edge-agent-loop")
        self._serving.start()
        return self

    def _close_framed_socket(self) -> None:
        """Before the loop runs: close and remove the fronts' sockets, close the loop."""
        self.fronts.stop(0)
        self.fronts.run()  # returns at once: nothing is connected yet

    def request_stop(self) -> None:
        """Ask the fronts to stop: they stop accepting, and the calls in progress get up to
        stop_grace_seconds (safe from a signal handler: a write to the loop's pipe)."""
        self.fronts.stop(self.stop_grace_seconds)

    def wait(self) -> None:
        """Until the fronts' loop has ended (request_stop)."""
        # A join with a timeout, in a loop: the main thread stays responsive to signals.
        serving = self._serving
        while serving is not None and serving.is_alive():
            serving.join(0.5)

    def stop(self) -> None:
        """Stop in the order that loses nothing: systemd hears STOPPING=1, both fronts stop
        accepting and remove their sockets, the calls in progress are answered (up to
        stop_grace_seconds; gRPC clients get GOAWAY), the observers send their last figures,
        the service flushes captures."""
        if self._serving is None:
            return
        self._notifier.stopping()
        self.request_stop()
        self.wait()
        self._serving = None
        for observer in self.observers:
            observer.stop()  # the heartbeat says offline; the textfile gets the final counts
        if self.fleet is not None:
            self.fleet.stop()
        if self._fleet_link is not None:
            self._fleet_link.stop()
        if self.models is not None:
            self.models.stop()
        self.service.close()
        log.info("stopped")

    def run(self) -> None:
        """start(), serve until SIGTERM, SIGINT or SIGHUP, stop(). Main thread only (signals)."""
        self.start()
        previous = {signum: signal.signal(signum, lambda *_: self.request_stop())
                    for signum in STOP_SIGNALS}
        try:
            self.wait()
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def __enter__(self) -> "App":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _start_models(service, config: AgentConfig, notify: Callable[[str], object]):
    """The model repository's manager, its models loaded, watching, and the fleet
    deployment's source feeding it when configured; (None, None) without a repository.
    AgentError when the repository may not be used."""
    if not config.edge_agent_model_repository:
        return None, None
    from edge_agent.models.lifecycle.manager import ModelManager
    from edge_agent.models.lifecycle.repository import check_repository

    check_repository(config.edge_agent_model_repository)
    manager = ModelManager(service, config, notify=notify)
    service.lifecycle = manager
    fleet = None
    if config.edge_agent_deployment_url:
        from edge_agent.fleet.board import make_source
        fleet = make_source(config, manager)
        fleet.prime()  # the versions the fleet had chosen before a restart serve at start
    manager.start_up()
    log.info("model repository %s: %s", config.edge_agent_model_repository, manager.summary())
    manager.start()
    if fleet is not None:
        fleet.start()
    return manager, fleet


def _start_observers(service, config: AgentConfig, extra: Callable[[], dict] | None = None) -> list:
    """The Prometheus exposition and the MQTT heartbeat the configuration asks for, started
    (each imports its library only then); raises ConfigError, having stopped those it
    started, when one cannot start."""
    from edge_agent.config import ConfigError

    started: list = []
    try:
        if config.edge_agent_metrics_listen or config.edge_agent_metrics_textfile:
            from edge_agent.observe import exposition
            started.append(exposition.start(service.get_metrics, config))
        if config.edge_agent_mqtt_url:
            try:
                from edge_agent.observe import heartbeat
            except ImportError:
                raise ConfigError("edge_agent_mqtt_url is set but paho-mqtt is not installed "
                                  "(pip install edge-agent[mqtt])") from None
            started.append(heartbeat.start(service.get_metrics, config, extra))
    except ConfigError:
        for observer in started:
            observer.stop()
        raise
    return started
