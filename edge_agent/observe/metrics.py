"""The agent's own metrics: cheap counters and fixed-bucket histograms kept on the call paths,
and the GetMetrics snapshot built from them when someone asks (the RPC, a Prometheus scrape,
the textfile writer, the MQTT heartbeat). docs/METRICS.md lists what each means.

Cost on the predict path is two calls into C, and no lock of its own:
- a model's per-prediction counters (edge_agent.observe._metrics.PredictCounters: two fixed-bucket
  histograms, bytes, shared-memory inputs) are updated in C holding the GIL throughout, so
  a reader sees each prediction whole; its failures are counted under the model's lock;
- calls by RPC and status (edge_agent.observe._metrics.CallCounts, one per front) likewise, in C
  holding the GIL, so the calls of every thread add up exactly without a lock.
Readers take no model lock: every counter only grows, as Prometheus expects. (Without the
build, or with EDGE_AGENT_PUREPYTHON=1, the same classes come from the pure-Python twin,
edge_agent/observe/_metrics_py.py, which takes a lock of each object's own instead.)
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterable

from edge_agent import agent_pb2 as pb
from edge_agent import pure_python
from edge_agent.errors import StatusCode
from edge_agent.platform.memory import resident_bytes

# The counters: the compiled ones (cext/_metrics.pyx), else their pure-Python twin, the seam of
# the frame splitter's (edge_agent/observe/_metrics_py.py; EDGE_AGENT_PUREPYTHON=1 forces it).
if pure_python():
    from edge_agent.observe._metrics_py import CallCounts, PredictCounters
else:
    try:
        from edge_agent.observe._metrics import CallCounts, PredictCounters
    except ModuleNotFoundError as missing:  # no build; a broken or stale one is an error
        if missing.name != "edge_agent.observe._metrics":
            raise
        from edge_agent.observe._metrics_py import CallCounts, PredictCounters

# Upper bounds in seconds: a tiny model's ~50 µs call up to a large model on a slow board.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OK = int(StatusCode.OK)


def fill_histogram(message: pb.Histogram, counts: list[int], total: float) -> None:
    """`counts`: per bucket of LATENCY_BUCKETS, not cumulative, the last one +Inf."""
    message.bucket_upper_bounds.extend(LATENCY_BUCKETS)
    message.bucket_counts.extend(counts)
    message.sum_seconds = total
    message.count = sum(counts)


class ModelMetrics:
    """One loaded model's counters.

    A successful prediction costs one call into C (edge_agent.observe._metrics.PredictCounters: two
    histogram updates, three adds, under the GIL throughout, so a reader sees all of it or
    none); `succeeded` is that call itself, bound here, so it costs no Python frame either.
    What can be derived is not counted: the number of successful predictions is the predict
    histogram's count, less those `retracted` (counted, then failed: see failed()); the
    inline inputs are `inputs_per_call` per prediction less the shared ones. `errors`:
    failed predictions by status code, counted under the model's lock."""
    __slots__ = ("package_name", "package_version", "load_seconds", "loaded_at",
                 "inputs_per_call", "counters", "succeeded", "retracted", "errors")

    def __init__(self, load_seconds: float = 0.0, package_name: str = "",
                 package_version: str = ""):
        self.package_name = package_name
        self.package_version = package_version
        self.load_seconds = load_seconds
        self.loaded_at = time.time()
        self.inputs_per_call = 0  # set by the LoadedModel, which knows its inputs
        self.counters = PredictCounters(LATENCY_BUCKETS)
        # succeeded(started, invoke_seconds, shared, input_bytes, output_bytes): a prediction
        # whose outputs are in the reply; `started`: time.perf_counter() at the request.
        self.succeeded = self.counters.succeeded
        self.retracted = 0
        self.errors: dict[int, int] = {}

    def failed(self, code: int, after_success: bool = False) -> None:
        """A prediction that answered `code`; `after_success`: it was counted a success
        already (its shared memory turned out truncated after the outputs were made). Under
        the lock."""
        if after_success:
            self.retracted += 1
        code = int(code)
        self.errors[code] = self.errors.get(code, 0) + 1

    def fill(self, message: pb.ModelMetrics, counters: bool) -> None:
        message.package_name = self.package_name
        message.package_version = self.package_version
        message.load_seconds = self.load_seconds
        message.loaded_at_unix_seconds = self.loaded_at
        if not counters:
            return
        (predict, predict_sum, invoke, invoke_sum, message.input_bytes, message.output_bytes,
         message.shared_memory_inputs) = self.counters.state()
        fill_histogram(message.predict_seconds, predict, predict_sum)
        fill_histogram(message.invoke_seconds, invoke, invoke_sum)
        ran = message.predict_seconds.count
        codes = {OK: ran - self.retracted, **self.errors.copy()}
        for code, count in sorted(codes.items()):
            message.predictions.add(code=StatusCode(code).name, count=count)
        message.inline_inputs = ran * self.inputs_per_call - message.shared_memory_inputs


def _ignore(*_) -> None:
    pass


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class AgentMetrics:
    """What the agent counts beyond its models: calls, connections, the start time.

    `enabled` false (edge_agent_metrics): no per-call counters are kept, and the snapshot
    carries only what the agent holds anyway (models, memory, capture state, CPU, RSS)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.started_at = time.time()
        self._started = time.monotonic()
        self._calls: dict[str, CallCounts] = {}  # by front
        self._connections: dict[str, Callable[[], int]] = {}

    def watch_connections(self, front: str, count: Callable[[], int]) -> None:
        """`count()` says how many connections `front` has open (read at snapshot time)."""
        self._connections[front] = count

    def call_counter(self, front: str) -> Callable[[str, int], None]:
        """count(rpc, code) for the calls of `front` (framed, grpc): a front binds it once, so
        a counted call costs no extra frame; a no-op when the counters are off."""
        if not self.enabled:
            return _ignore
        return self._calls.setdefault(front, CallCounts()).count

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    def snapshot(self, models: Iterable, budget, capture, config,
                 lifecycle=None) -> pb.GetMetricsResponse:
        """The GetMetrics answer. `models`: the loaded LoadedModels; `budget`: the
        MemoryBudget; `capture`: the CaptureService (it fills in its own part);
        `lifecycle`: the model repository's manager, when there is one (it fills in the
        states of its names)."""
        from edge_agent import __version__

        response = pb.GetMetricsResponse(
            agent_version=__version__, device_name=config.sagemaker_edge_core_device_name,
            fleet_name=config.sagemaker_edge_core_device_fleet_name,
            start_time_unix_seconds=self.started_at, uptime_seconds=self.uptime,
            counters_kept=self.enabled, memory_budget_bytes=budget.total,
            memory_budget_used_bytes=budget.used, resident_memory_bytes=resident_bytes(),
            cpu_seconds=_cpu_seconds())
        for model in models:
            message = response.models.add(name=model.name, delegate=model.delegate,
                                          memory_reserved_bytes=model.footprint,
                                          source=model.source)
            if model.metrics is not None:
                model.metrics.fill(message, self.enabled)
        for front, counter in sorted(self._calls.copy().items()):
            for (rpc, code), count in sorted(counter.counted().items()):
                response.calls.add(front=front, rpc=rpc, code=StatusCode(code).name,
                                   count=count)
        for front, count in sorted(self._connections.items()):
            response.connections.add(front=front, open=count())
        managed = set()
        if lifecycle is not None:
            managed = lifecycle.fill_metrics(response.model_states)
        for model in models:
            if model.name not in managed:
                response.model_states.add(name=model.name, source=model.source, state="serving",
                                          version=model.version,
                                          since_unix_seconds=model.loaded_at)
        response.model_states.sort(key=lambda s: s.name)
        capture.fill_metrics(response.capture)
        return response


# --- the JSON document: heartbeats and `edge-agent client metrics --json` --------------------

def _histogram_document(h: pb.Histogram) -> dict:
    return {"count": h.count, "sum_seconds": h.sum_seconds,
            "bucket_upper_bounds": list(h.bucket_upper_bounds),
            "bucket_counts": list(h.bucket_counts)}


def document(m: pb.GetMetricsResponse) -> dict:
    """A GetMetricsResponse as plain JSON types (numbers as numbers, unlike protobuf's JSON
    mapping of 64-bit integers); docs/METRICS.md shows one."""
    models = []
    for model in m.models:
        entry = {"name": model.name, "source": model.source,
                 "package_name": model.package_name,
                 "package_version": model.package_version, "delegate": model.delegate,
                 "memory_reserved_bytes": model.memory_reserved_bytes,
                 "load_seconds": model.load_seconds,
                 "loaded_at_unix_seconds": model.loaded_at_unix_seconds}
        if m.counters_kept:
            entry.update({
                "predictions": {c.code: c.count for c in model.predictions},
                "predict_seconds": _histogram_document(model.predict_seconds),
                "invoke_seconds": _histogram_document(model.invoke_seconds),
                "input_bytes": model.input_bytes, "output_bytes": model.output_bytes,
                "shared_memory_inputs": model.shared_memory_inputs,
                "inline_inputs": model.inline_inputs})
        models.append(entry)
    c = m.capture
    return {
        "device": m.device_name, "fleet": m.fleet_name, "agent_version": m.agent_version,
        "start_time_unix_seconds": m.start_time_unix_seconds,
        "uptime_seconds": m.uptime_seconds, "counters_kept": m.counters_kept,
        "models": models,
        "calls": [{"front": x.front, "rpc": x.rpc, "code": x.code, "count": x.count}
                  for x in m.calls],
        "connections": {x.front: x.open for x in m.connections},
        "capture": {"accepted": c.accepted, "delivered": c.delivered, "failed": c.failed,
                    "backlog": c.backlog, "journal_bytes": c.journal_bytes,
                    "journal_limit_bytes": c.journal_limit_bytes, "last_error": c.last_error,
                    "last_error_unix_seconds": c.last_error_unix_seconds},
        "memory": {"budget_bytes": m.memory_budget_bytes,
                   "budget_used_bytes": m.memory_budget_used_bytes,
                   "resident_bytes": m.resident_memory_bytes},
        "cpu_seconds": m.cpu_seconds,
        "model_states": [{"name": x.name, "source": x.source, "state": x.state,
                          "reason": x.reason, "version": x.version,
                          "since_unix_seconds": x.since_unix_seconds,
                          "swaps": {c.result: c.count for c in x.swaps}}
                         for x in m.model_states],
    }


# --- the table of `edge-agent client metrics` --------------------------------------------

def quantile(h: pb.Histogram, q: float) -> float | None:
    """The q-quantile estimated as Prometheus's histogram_quantile does: linear within the
    bucket it falls in; the highest bound when it falls above them all; None when empty."""
    if not h.count:
        return None
    rank = q * h.count
    seen, lower = 0, 0.0
    for bound, count in zip(h.bucket_upper_bounds, h.bucket_counts):
        if count and seen + count >= rank:
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound
    return h.bucket_upper_bounds[-1] if h.bucket_upper_bounds else None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{days}d" if days else "") + f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _columns(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]


def table(m: pb.GetMetricsResponse) -> str:
    """A GetMetricsResponse as text a person reads."""
    c = m.capture
    lines = [
        f"edge-agent {m.agent_version}  device {m.device_name or '-'}  fleet "
        f"{m.fleet_name or '-'}  up {_duration(m.uptime_seconds)}",
        f"memory budget {_size(m.memory_budget_used_bytes)} of {_size(m.memory_budget_bytes)}"
        f"  RSS {_size(m.resident_memory_bytes)}  CPU {m.cpu_seconds:.1f} s  connections "
        + (", ".join(f"{x.front} {x.open}" for x in m.connections) or "-"),
        "",
    ]
    if not m.counters_kept:
        lines.append("(edge_agent_metrics is off: no per-call counters)")
    rows = [("MODEL", "PACKAGE", "DELEGATE", "MEMORY", "LOAD S", "OK", "ERRORS", "P50 MS",
             "P99 MS", "INVOKE P50 MS", "IN", "OUT", "SHM IN")]
    for x in m.models:
        codes = {p.code: p.count for p in x.predictions}
        ok = codes.pop("OK", 0)
        rows.append((
            x.name, f"{x.package_name} {x.package_version}" if x.package_name else "-",
            x.delegate or "-", _size(x.memory_reserved_bytes), f"{x.load_seconds:.3f}",
            ok if m.counters_kept else "-",
            (", ".join(f"{k} {v}" for k, v in codes.items()) or "0") if m.counters_kept else "-",
            _ms(quantile(x.predict_seconds, 0.5)), _ms(quantile(x.predict_seconds, 0.99)),
            _ms(quantile(x.invoke_seconds, 0.5)), _size(x.input_bytes), _size(x.output_bytes),
            f"{x.shared_memory_inputs}/{x.shared_memory_inputs + x.inline_inputs}"))
    lines += _columns(rows) if m.models else ["no models loaded"]
    if m.calls:
        lines += [""] + _columns([("FRONT", "RPC", "CODE", "CALLS")] +
                                 [(x.front, x.rpc, x.code, x.count) for x in m.calls])
    lines += ["", f"capture: accepted {c.accepted}  delivered {c.delivered}  failed {c.failed}  "
              f"backlog {c.backlog}  journal {_size(c.journal_bytes)} of "
              f"{_size(c.journal_limit_bytes)}"]
    if c.last_error:
        lines.append(f"  last error ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c.last_error_unix_seconds))}): "
                     f"{c.last_error}")
    return "\n".join(lines) + "\n"
