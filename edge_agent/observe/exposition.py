"""Prometheus exposition: the GetMetrics snapshot as metric families (prometheus-client), served
over HTTP on edge_agent_metrics_listen and/or written to edge_agent_metrics_textfile.

No prometheus-client object is touched on a call path: the collector builds its families from
a fresh snapshot at each scrape or write. Names, types and labels: docs/METRICS.md.
"""
from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.exposition import MetricsHandler, write_to_textfile

from edge_agent import agent_pb2 as pb
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.transport.socket_files import ServerError, bind_socket, remove_socket_file

log = logging.getLogger(__name__)

Snapshot = Callable[[], pb.GetMetricsResponse]
# A scraper that stops mid-request is dropped after this long (it holds one thread).
REQUEST_TIMEOUT_SECONDS = 10.0
# Scrapes served at once; a connection beyond them is closed at once, so a flood of idle
# connections costs this many threads at most.
MAX_CONCURRENT_SCRAPES = 8


def _buckets(h: pb.Histogram) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, from the snapshot's per-bucket counts."""
    pairs, running = [], 0
    for bound, count in zip(h.bucket_upper_bounds, h.bucket_counts):
        running += count
        pairs.append((repr(float(bound)), running))
    pairs.append(("+Inf", h.count))
    return pairs


def families(m: pb.GetMetricsResponse) -> Iterator:
    """The metric families of one snapshot."""
    info = InfoMetricFamily("edge_agent", "The agent: version, device and fleet.")
    info.add_metric([], {"version": m.agent_version, "device": m.device_name,
                         "fleet": m.fleet_name})
    yield info
    yield GaugeMetricFamily("edge_agent_start_time_seconds",
                            "When the agent started, seconds since the epoch.",
                            value=m.start_time_unix_seconds)
    yield GaugeMetricFamily("edge_agent_uptime_seconds", "Seconds since the agent started.",
                            value=m.uptime_seconds)
    yield GaugeMetricFamily("edge_agent_resident_memory_bytes",
                            "The agent process's resident memory (RSS).",
                            value=m.resident_memory_bytes)
    yield CounterMetricFamily("edge_agent_cpu_seconds", "CPU time the agent process used, "
                              "user and system.", value=m.cpu_seconds)
    yield GaugeMetricFamily("edge_agent_memory_budget_bytes",
                            "The memory budget of the loaded models (edge_agent_memory_budget_mb).",
                            value=m.memory_budget_bytes)
    yield GaugeMetricFamily("edge_agent_memory_budget_used_bytes",
                            "Bytes of the memory budget the loaded models reserve.",
                            value=m.memory_budget_used_bytes)
    yield from _model_families(m)
    connections = GaugeMetricFamily("edge_agent_connections",
                                    "Client connections open now, by front.", labels=["front"])
    for c in m.connections:
        connections.add_metric([c.front], c.open)
    yield connections
    if m.counters_kept:
        calls = CounterMetricFamily("edge_agent_calls", "Calls answered, by front, RPC and "
                                    "status code.", labels=["front", "rpc", "code"])
        for c in m.calls:
            calls.add_metric([c.front, c.rpc, c.code], c.count)
        yield calls
    yield from _capture_families(m.capture)


def _model_families(m: pb.GetMetricsResponse) -> Iterator:
    info = InfoMetricFamily("edge_agent_model", "A loaded model: its package, version, "
                            "delegate and source (repository or application).", labels=["model"])
    memory = GaugeMetricFamily("edge_agent_model_memory_bytes", "Bytes a model reserves "
                               "against the memory budget.", labels=["model"])
    load = GaugeMetricFamily("edge_agent_model_load_seconds", "How long loading the model "
                             "took.", labels=["model"])
    loaded = GaugeMetricFamily("edge_agent_model_loaded_time_seconds", "When the model was "
                               "loaded, seconds since the epoch.", labels=["model"])
    for model in m.models:
        info.add_metric([model.name], {"package": model.package_name,
                                       "version": model.package_version,
                                       "delegate": model.delegate,
                                       "source": model.source})
        memory.add_metric([model.name], model.memory_reserved_bytes)
        load.add_metric([model.name], model.load_seconds)
        loaded.add_metric([model.name], model.loaded_at_unix_seconds)
    yield from (info, memory, load, loaded)
    yield from _lifecycle_families(m)
    if not m.counters_kept:
        return
    predictions = CounterMetricFamily("edge_agent_predictions", "Predictions answered, by "
                                      "model and status code.", labels=["model", "code"])
    predict = HistogramMetricFamily("edge_agent_predict_seconds", "Time of a successful "
                                    "prediction in the agent, from the decoded request to the "
                                    "outputs in the reply.", labels=["model"])
    invoke = HistogramMetricFamily("edge_agent_invoke_seconds", "Time of the runtime's "
                                   "invoke in a successful prediction.", labels=["model"])
    input_bytes = CounterMetricFamily("edge_agent_predict_input_bytes", "Bytes of input "
                                      "tensors predicted on.", labels=["model"])
    output_bytes = CounterMetricFamily("edge_agent_predict_output_bytes", "Bytes of output "
                                       "tensors returned.", labels=["model"])
    inputs = CounterMetricFamily("edge_agent_predict_inputs", "Input tensors of successful "
                                 "predictions, by how they came: shared memory or inline.",
                                 labels=["model", "transport"])
    for model in m.models:
        labels = [model.name]
        for c in model.predictions:
            predictions.add_metric([model.name, c.code], c.count)
        predict.add_metric(labels, _buckets(model.predict_seconds),
                           model.predict_seconds.sum_seconds)
        invoke.add_metric(labels, _buckets(model.invoke_seconds), model.invoke_seconds.sum_seconds)
        input_bytes.add_metric(labels, model.input_bytes)
        output_bytes.add_metric(labels, model.output_bytes)
        inputs.add_metric([model.name, "shm"], model.shared_memory_inputs)
        inputs.add_metric([model.name, "inline"], model.inline_inputs)
    yield from (predictions, predict, invoke, input_bytes, output_bytes, inputs)


MODEL_STATES = ("serving", "loading", "validating", "failed", "blocked", "waiting")


def _lifecycle_families(m: pb.GetMetricsResponse) -> Iterator:
    state = GaugeMetricFamily("edge_agent_model_state", "1 for the state a model name is in "
                              "(serving, loading, validating, failed, blocked, waiting), 0 for "
                              "the others.", labels=["model", "source", "state"])
    swaps = CounterMetricFamily("edge_agent_model_swaps", "Versions of a repository model "
                                "tried since start, by result: ok (swapped in), failed, "
                                "waiting (for memory).", labels=["model", "result"])
    for s in m.model_states:
        for name in MODEL_STATES:
            state.add_metric([s.name, s.source, name], 1 if s.state == name else 0)
        for c in s.swaps:
            swaps.add_metric([s.name, c.result], c.count)
    yield from (state, swaps)


def _capture_families(c: pb.CaptureMetrics) -> Iterator:
    yield CounterMetricFamily("edge_agent_capture_accepted", "Captures acknowledged.",
                              value=c.accepted)
    yield CounterMetricFamily("edge_agent_capture_delivered", "Captures delivered.",
                              value=c.delivered)
    yield CounterMetricFamily("edge_agent_capture_failed", "Captures that failed for good.",
                              value=c.failed)
    yield GaugeMetricFamily("edge_agent_capture_backlog", "Captures acknowledged and not yet "
                            "delivered or failed.", value=c.backlog)
    yield GaugeMetricFamily("edge_agent_capture_journal_bytes", "Disk the capture journal "
                            "uses.", value=c.journal_bytes)
    yield GaugeMetricFamily("edge_agent_capture_journal_limit_bytes", "Disk the capture "
                            "journal may use (edge_agent_capture_max_spool_mb).",
                            value=c.journal_limit_bytes)
    error = GaugeMetricFamily("edge_agent_capture_last_error_time_seconds", "When the last "
                              "capture delivery or journal error happened (absent: none since "
                              "start); the error is its label.", labels=["error"])
    if c.last_error:
        error.add_metric([c.last_error[:200]], c.last_error_unix_seconds)
    yield error


class AgentCollector:
    """A prometheus-client collector: one snapshot per collect()."""

    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot

    def collect(self) -> Iterator:
        return families(self._snapshot())


def registry(snapshot: Snapshot) -> CollectorRegistry:
    """The agent's metrics. Its process's CPU and memory are edge_agent_* too, not the usual
    process_*: node_exporter, which reads the textfile, exports process_* of its own."""
    result = CollectorRegistry(auto_describe=False)
    result.register(AgentCollector(snapshot))
    return result


# --- the HTTP listener --------------------------------------------------------------------

def _handler(registry_: CollectorRegistry) -> type:
    # factory() makes the handler class at run time, so mypy cannot know the base.
    class Handler(MetricsHandler.factory(registry_)):  # type: ignore[misc]
        timeout = REQUEST_TIMEOUT_SECONDS

        def address_string(self) -> str:  # a UNIX peer has no address
            return str(self.client_address or "unix")

    return Handler


class _Bounded(socketserver.ThreadingMixIn):
    """A thread per scrape, at most MAX_CONCURRENT_SCRAPES of them."""
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_SCRAPES)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: the scraper retries next time
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _TcpServer(_Bounded, socketserver.TCPServer):
    """Not http.server.HTTPServer: its bind looks the host's name up, which may wait on DNS."""
    allow_reuse_address = True


class _TcpServer6(_TcpServer):
    address_family = socket.AF_INET6


class _UnixServer(_Bounded, socketserver.UnixStreamServer):
    pass


def parse_listen(listen: str) -> tuple[str, int] | str:
    """(host, port) for HOST:PORT or [V6]:PORT, a path for /path; ConfigError otherwise."""
    if listen.startswith("/"):
        return listen
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"edge_agent_metrics_listen: expected HOST:PORT (127.0.0.1:9464), "
                          f"[IPV6]:PORT or an absolute socket path, got {listen!r}")
    return host, int(port)


def _bind(listen: str, handler: type, config: AgentConfig) -> socketserver.BaseServer:
    where = parse_listen(listen)
    if isinstance(where, str):
        # The agent socket's own binding (mode from birth, group, a live agent's path refused),
        # handed to socketserver in place of the socket it would make.
        try:
            listener = bind_socket(where, config)
        except ServerError as e:
            raise ConfigError(f"edge_agent_metrics_listen: {e}") from None
        listener.settimeout(None)
        server = _UnixServer(where, handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listener
        server.server_address = where
        return server
    host, port = where
    server_class = _TcpServer6 if ":" in host else _TcpServer
    return server_class((host, port), handler)


class Exposition:
    """The HTTP listener and the textfile writer, each when configured."""

    address: Any  # socketserver's server_address: (host, port[, ...]) or a socket path

    def __init__(self, snapshot: Snapshot, config: AgentConfig):
        self.config = config
        self.registry = registry(snapshot)
        self.textfile = config.edge_agent_metrics_textfile
        self.period = config.edge_agent_metrics_textfile_period_seconds
        self._server: socketserver.BaseServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.address = None  # where the listener listens, once started
        self._socket_inode = 0  # the socket file's inode, when it listens on a UNIX socket

    def start(self) -> "Exposition":
        """Bind the listener (ConfigError if it cannot) and start the threads."""
        listen = self.config.edge_agent_metrics_listen
        if listen:
            try:
                self._server = _bind(listen, _handler(self.registry), self.config)
            except OSError as e:
                raise ConfigError(f"edge_agent_metrics_listen: cannot listen on {listen}: "
                                  f"{e.strerror or e}") from None
            self.address = self._server.server_address
            if isinstance(self.address, str):
                self._socket_inode = os.stat(self.address).st_ino
            self._thread(self._server.serve_forever, "edge-agent-metrics-http")
            log.info("Prometheus metrics on %s", self.address if isinstance(self.address, str)
                     else "%s:%d" % self.address[:2])
        if self.textfile:
            if not self.textfile.endswith(".prom"):
                log.warning("edge_agent_metrics_textfile %s: node_exporter reads only files "
                            "ending in .prom", self.textfile)
            self.write_textfile()  # a bad path shows at start, not a period later
            self._thread(self._write_periodically, "edge-agent-metrics-textfile")
        return self

    def _thread(self, target: Callable, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def write_textfile(self) -> bool:
        """Replace the textfile: written beside it, then renamed over it, so a reader sees the
        old file or the new one, never a part."""
        try:
            write_to_textfile(self.textfile, self.registry)
            return True
        except OSError as e:
            log.error("cannot write the metrics textfile %s: %s", self.textfile, e.strerror or e)
            return False

    def _write_periodically(self) -> None:
        while not self._stopping.wait(self.period):
            self.write_textfile()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if isinstance(self.address, str):
                # Only our own file: another agent may have taken the path since.
                remove_socket_file(self.address, self._socket_inode)
        for thread in self._threads:
            thread.join(5)
        if self.textfile:
            self.write_textfile()  # the counters as they were at the end


def start(snapshot: Snapshot, config: AgentConfig) -> Exposition | None:
    """The exposition the configuration asks for, started; None when it asks for none."""
    if not (config.edge_agent_metrics_listen or config.edge_agent_metrics_textfile):
        return None
    return Exposition(snapshot, config).start()
