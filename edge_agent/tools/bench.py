"""`edge-agent bench`: the Predict path's figures beside their floors and targets (issue 13).

Each figure is printed with the floor it is held to, the ratio and the target:
- server cost: the agent answering a C client that replays a pre-encoded Predict frame
  (benchmarks/frame_bench.c, `replay`), tiny model and a 1x224x224x3 float32 input, against
  in-process invoke (set_tensor, invoke, get_tensor through edge_agent.platform.runtime's choice) plus
  a C ping-pong over a UNIX socket pair moving the same bytes each way (`pingpong`);
- end to end: `AgentClient.predict` against the same floor, and the same Predict through a
  grpcio server over AgentService (edge_agent.tools.grpcio_server) measured in the same run;
- throughput: requests/s of one C client against four on two tiny models, and of one client
  against two on two compute-bound models; beside them the machine's own ceiling: two
  processes invoking the compute model in-process against one;
- memory: the idle RSS, PSS and USS with one small model of the agent and, apart, of its
  model-check helper (its pre-forked child), and the peak memory of a Predict with a 16 MiB
  inline input as a multiple of its frame.
Beside every timed figure, what it cost the agent: its CPU (user + system, from
/proc/PID/stat: every thread of the agent process, exited ones included; and, finer, the
scheduler's runtime of its threads from /proc/PID/task/*/sched) and its voluntary and
involuntary context switches (summed over /proc/PID/task/*/status: the C client keeps its
connections open until they are read, so a thread per connection is still there), per request,
over the timed calls only (frame_bench's replay-sync holds the calls until the first reading).
The agent is always a process of its own (never threads of this one, whose client would share
its interpreter lock), so these are the agent's figures alone.

Floors and figures are measured in alternating rounds of the same run (each round: every floor,
then every agent figure); each figure is the median of its rounds, printed with the spread
(min/median/max). A ratio whose floor moved more than FLOOR_MOVE_LIMIT across the rounds is
marked unreliable instead of reported. The latency rows (server cost, end to end, grpcio) pin
the client to one CPU and every thread of the agent (and the floors' two sides likewise) to
another where the machine gives this process two or more; the throughput rows run unpinned, so
two models keep two cores. The load average is printed, since on a shared machine it says how
far to trust the rest. A section whose dependency is missing (no C compiler or
benchmarks/frame_bench.c, no grpcio) is skipped with the reason.

The agent measured is one this tool starts (this installation's, or `--agent-command`'s, e.g.
another checkout's `.venv/bin/edge-agent`) or one already running (`--agent-socket`, its pid
from SO_PEERCRED); `--compare-command` / `--compare-socket` add a second agent measured in the
same rounds, the two taking turns at going first, so two builds are compared under the same
machine. `--no-pin` leaves the latency rows unpinned; `--json FILE` writes everything,
`--label` names the run in it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edge_agent.tools.launch import agent_command
from edge_agent.tools import model_builder

# The targets: (comparison, bound). "<=" figures are costs, ">=" are gains.
TARGETS: dict[str, tuple[str, float]] = {
    "server_cost_tiny": ("<=", 1.3),
    "server_cost_image": ("<=", 1.3),
    "end_to_end_tiny": ("<=", 1.6),
    "grpcio_over_agent_client": (">=", 8.0),
    "throughput_four_clients_tiny": (">=", 1.5),
    "throughput_two_clients_compute": (">=", 1.8),
    "idle_rss_mb": ("<=", 42.0),
    "peak_16mib_x_frame": ("<=", 1.3),
}
SINK_BYTES = 16 << 20
FRAME_BENCH_SOURCE = Path(__file__).resolve().parents[2] / "benchmarks" / "frame_bench.c"
FRAME_BENCH_BUILT = FRAME_BENCH_SOURCE.parent / "build" / "frame_bench"
# What `make bench` builds frame_bench with, and this tool when it has to.
CC_FLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-pthread")
# A floor that moved more than this across the rounds (max / min - 1) says the machine changed
# under the run: the ratio to it is marked unreliable instead of reported.
FLOOR_MOVE_LIMIT = 0.30
# The keys of the agent measured beside the first (--compare-command, --compare-socket):
# "compared_agent", "compared_figures", and its samples' keys in round_samples.
COMPARED = "compared_"
# The models the bench loads into the agent: (name, which built model).
BENCH_MODELS = (("tiny", "tiny"), ("tiny-b", "tiny"), ("image", "image"),
                ("compute", "compute"), ("compute-b", "compute"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPU_SOURCE = ("user + system of the agent process, /proc/PID/stat (every thread, exited ones "
              "included)")
SWITCH_SOURCE = ("voluntary and involuntary context switches summed over the agent's threads, "
                 "/proc/PID/task/*/status")
# /proc/PID/stat counts clock ticks (10 ms at 100 Hz): over a few thousand fast calls, a few
# microseconds a request. The scheduler's own runtime of each thread (nanoseconds, where the
# kernel has /proc/PID/task/TID/sched) is printed beside it.
THREAD_CPU_SOURCE = ("se.sum_exec_runtime summed over the agent's threads alive at the reading, "
                     "/proc/PID/task/*/sched")


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {"p50_us": statistics.median(ordered) / 1e3,
            "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e3}


def time_calls(call: Callable[[], object], iterations: int, warmup: int = 200,
               server: int | None = None) -> dict[str, Any]:
    """p50 and p99 of `call`; with `server` (a pid), also per_request of that process over
    the timed calls."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = []
    before = usage(server) if server else None
    for _ in range(iterations):
        start = clock()
        call()
        samples.append(clock() - start)
    figures: dict[str, Any] = dict(percentiles(samples))
    if server and before:
        figures.update(per_request(before, usage(server), iterations))
    return figures


def in_process(model: model_builder.BuiltModel, inputs: dict, num_threads: int, iterations: int):
    from edge_agent.platform.runtime import interpreter_module

    interpreter = interpreter_module().Interpreter(model_content=model.content,
                                                   num_threads=num_threads)
    interpreter.allocate_tensors()
    feeds = [(d["index"], inputs[d["name"]]) for d in interpreter.get_input_details()]
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def call():
        for index, array in feeds:
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]
    return time_calls(call, iterations)


def _invoke_worker(content: bytes, inputs: dict, calls: int, ready, spans) -> None:
    from edge_agent.platform.runtime import interpreter_module

    interpreter = interpreter_module().Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    feeds = [(d["index"], inputs[d["name"]]) for d in interpreter.get_input_details()]
    for _ in range(2):
        interpreter.invoke()
    ready.wait()
    start = time.perf_counter()
    for _ in range(calls):
        for index, array in feeds:
            interpreter.set_tensor(index, array)
        interpreter.invoke()
    spans.put((start, time.perf_counter()))


def parallel_invokes_per_s(model: model_builder.BuiltModel, inputs: dict, processes: int,
                           calls: int) -> float:
    """Invokes/s of `processes` processes (no interpreter lock between them), each invoking an
    interpreter of its own `calls` times, started together: what the machine gives parallel
    work at this moment, the ceiling of an agent's gain from several clients."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    ready, spans = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_invoke_worker,
                               args=(model.content, inputs, calls, ready, spans))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    got = [spans.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return processes * calls / (max(end for _, end in got) - min(start for start, _ in got))


def start_agent(workdir: str, num_threads: int, *extra: str,
                command: Sequence[str] | None = None) -> tuple[subprocess.Popen, str]:
    """An agent serving on workdir/agent.sock: this installation's, or `command` (the argv
    that runs `edge-agent`, e.g. another checkout's .venv/bin/edge-agent) with `serve ...`."""
    path = os.path.join(workdir, "agent.sock")
    args = ("serve", "--socket", path, "--set", "edge_agent_allow_unsigned_models=true",
            "--set", f"edge_agent_num_threads={num_threads}", *extra)
    agent = subprocess.Popen([*command, *args] if command else agent_command(*args),
                             stderr=subprocess.DEVNULL)
    wait_for_socket(path, agent)
    return agent, path


def socket_owner(path: str) -> int:
    """The pid of the process listening on the UNIX socket `path` (SO_PEERCRED of a
    connection to it: the process that called listen())."""
    peer = struct.Struct("3i")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        return peer.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, peer.size))[0]


class Agent:
    """The agent under measurement: its pid, its socket, and the process if this tool started
    it (None for one already running, which is left running)."""

    def __init__(self, workdir: str, socket_path: str | None, command: str | None):
        self.process: subprocess.Popen | None = None
        if socket_path:
            self.socket_path = socket_path
            self.source = f"already running on {socket_path}"
        else:
            argv = shlex.split(command) if command else None
            self.process, self.socket_path = start_agent(workdir, 1, command=argv)
            self.source = f"started by the bench: {command or 'this installation'}"
        self.pid = socket_owner(self.socket_path)

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


def wait_for_socket(path: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server for {path} did not start")
        time.sleep(0.05)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM from /proc/PID/status; PSS and USS (the Private_* lines) from
    smaps_rollup. USS is the memory that is the process's alone: pages it shares with its
    forked helper or with another process mapping the same libraries (this one, running the
    benchmark) are left out, so it is a lower bound and PSS sits between the two."""
    figures = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                figures[line.split(":")[0]] = int(line.split()[1])
    uss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_"):
                uss += int(line.split()[1])
            elif line.startswith("Pss:"):
                figures["PSS"] = int(line.split()[1])
    figures["USS"] = uss
    return figures


def unload_all(client) -> None:
    """The bench's models out of an agent it did not start, whichever of them got in."""
    for name, _ in BENCH_MODELS:
        with contextlib.suppress(Exception):
            client.unload_model(name)


def children(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (of any of its threads)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


@dataclass(frozen=True)
class Usage:
    """What a process has cost so far: CPU seconds and its threads' context switches."""
    cpu_s: float
    voluntary: int
    involuntary: int
    threads_cpu_s: float | None  # THREAD_CPU_SOURCE; None where the kernel has no sched file


def usage(pid: int) -> Usage:
    """CPU_SOURCE and SWITCH_SOURCE, read now. A thread that ended since an earlier reading
    takes its context switches with it (its CPU stays in /proc/PID/stat), which is why the C
    client keeps its connections open until the bench has read the agent."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the name: state is field 3, utime 14 and stime 15 (proc(5)).
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    voluntary = involuntary = 0
    threads_ms: float | None = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{task}/status").read_text()
            sched = (Path(f"/proc/{pid}/task/{task}/sched").read_text()
                     if threads_ms is not None else "")
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended between the listing and the reading
        except PermissionError:  # no sched file for this reader
            threads_ms, sched = None, ""
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
        runtime = [line for line in sched.splitlines() if line.startswith("se.sum_exec_runtime")]
        if threads_ms is not None:
            threads_ms = threads_ms + float(runtime[0].split(":")[1]) if runtime else None
    return Usage(cpu_s, voluntary, involuntary,
                 None if threads_ms is None else threads_ms / 1e3)


def per_request(before: Usage, after: Usage, requests: int) -> dict[str, float | None]:
    threads = (None if before.threads_cpu_s is None or after.threads_cpu_s is None
               else (after.threads_cpu_s - before.threads_cpu_s) * 1e6 / requests)
    return {"agent_cpu_us": (after.cpu_s - before.cpu_s) * 1e6 / requests,
            "agent_threads_cpu_us": threads,
            "voluntary_switches": (after.voluntary - before.voluntary) / requests,
            "involuntary_switches": (after.involuntary - before.involuntary) / requests}


def pin(pid: int, cpus: set[int]) -> bool:
    """Every thread of `pid` to `cpus` (threads it starts later inherit their starter's set);
    False where that is not permitted (an agent of another user)."""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.sched_setaffinity(int(task), cpus)
    except PermissionError:
        return False
    return True


def replay_with_usage(program: str, pids: Sequence[int], socket_path: str, iterations: int,
                      frames: Sequence[str], cpus: set[int] | None = None) -> dict[str, Any]:
    """frame_bench replay-sync: its figures, and per_request of the agent `pids[0]` over the
    timed calls only (read after the warm-up and before the connections close). `cpus`: the
    client's threads are pinned there, once it is ready and before its timed calls (not in a
    preexec_fn: Python between fork and exec of this threaded process, grpcio's among its
    threads, is not safe)."""
    client = subprocess.Popen([program, "replay-sync", socket_path, str(iterations), *frames],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    stuck = threading.Timer(600, client.kill)  # an agent that stopped answering
    stuck.start()
    try:
        assert client.stdin is not None and client.stdout is not None
        ready = client.stdout.readline()
        if cpus and ready == "ready\n":
            pin(client.pid, cpus)
        before = usage(pids[0]) if ready == "ready\n" else None
        with contextlib.suppress(BrokenPipeError):
            client.stdin.write("go\n")
            client.stdin.flush()
        line = client.stdout.readline()
        after = usage(pids[0])
        with contextlib.suppress(BrokenPipeError):
            client.stdin.close()
        error = client.stderr.read() if client.stderr else ""
        status = client.wait()
    finally:
        stuck.cancel()
    if status or before is None:
        raise RuntimeError(f"frame_bench replay-sync failed: {error.strip() or ready + line}")
    try:
        figures = json.loads(line)
    except ValueError:
        raise RuntimeError(f"frame_bench replay-sync printed {line!r}") from None
    figures.update(per_request(before, after, figures["calls"]))
    return figures


def request_frame(name: str, inputs: dict) -> tuple[Any, bytes]:
    """The PredictRequest for `inputs` (tensors by name, full metadata, as AgentClient sends
    them) and its whole frame."""
    from edge_agent import agent_pb2 as pb
    from edge_agent.api.rpcs import Method
    from edge_agent.protocol import encode_request, predict_codec

    body = predict_codec.encode_request(name, wire_tensors(inputs))
    return pb.PredictRequest.FromString(body), encode_request(Method.PREDICT, 1, body)


def reply_frame_bytes(model: model_builder.BuiltModel, inputs: dict) -> int:
    from edge_agent.protocol import HEADER, predict_codec

    return HEADER.size + len(predict_codec.encode_response(wire_tensors(model.reference(inputs))))


def wire_tensors(arrays: dict) -> list:
    """(name, DataType, shape, bytes) per array, what the Predict codec encodes."""
    import numpy as np

    from edge_agent.protocol.tensors import data_type_of

    return [(key.encode(), data_type_of(array.dtype), array.shape, np.ascontiguousarray(array))
            for key, array in arrays.items()]


def frame_bench(workdir: str, given: str | None) -> tuple[str | None, str]:
    """The frame_bench program: `given`, else the one `make bench` built, else built here with
    the system C compiler. (None, why) when there is none to be had."""
    if given:
        return (given, "") if os.access(given, os.X_OK) else (None, f"{given} is not executable")
    if os.access(FRAME_BENCH_BUILT, os.X_OK):
        return str(FRAME_BENCH_BUILT), ""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None, "no C compiler (cc) to build benchmarks/frame_bench.c"
    if not FRAME_BENCH_SOURCE.exists():
        return None, f"{FRAME_BENCH_SOURCE} is not here (an installed wheel carries no benchmarks/)"
    built = os.path.join(workdir, "frame_bench")
    run = subprocess.run([compiler, *CC_FLAGS, "-o", built, str(FRAME_BENCH_SOURCE)],
                         capture_output=True, text=True)
    if run.returncode:
        return None, f"building frame_bench failed: {run.stderr.strip()[-500:]}"
    return built, ""


def run_c(program: str, *args: str | int) -> dict[str, float]:
    out = subprocess.run([program, *map(str, args)], capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"frame_bench {args[0]} failed: {out.stderr.strip()}")
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise RuntimeError(f"frame_bench {args[0]} printed {out.stdout!r}") from None


# Every row has these; Run.row fills the spread, the floor's, and the agent's cost.
ROW_DEFAULTS: dict[str, Any] = {
    "value": None, "unit": None, "floor": None, "ratio": None, "target": None, "met": None,
    "spread": None, "floor_spread": None, "floor_moved": None, "unreliable": False,
    "pinned": False, "agent_cpu_us": None, "agent_threads_cpu_us": None,
    "voluntary_switches": None, "involuntary_switches": None}
# What a request cost the agent (per_request), beside each timed row.
COST_PARTS = ("agent_cpu_us", "agent_threads_cpu_us", "voluntary_switches",
              "involuntary_switches")


def figure(value: float, unit: str, floor: float | None = None, ratio: float | None = None,
           target: str | None = None) -> dict:
    """One printed row. `ratio` defaults to value / floor; `target` names a TARGETS entry."""
    if ratio is None and floor:
        ratio = value / floor
    row: dict[str, Any] = dict(ROW_DEFAULTS, value=value, unit=unit, floor=floor, ratio=ratio)
    if target is not None:
        comparison, bound = TARGETS[target]
        checked = value if ratio is None else ratio
        row["target"] = f"{comparison} {bound:g}"
        row["met"] = checked <= bound if comparison == "<=" else checked >= bound
    return row


def peak_x_frame(invoke: Callable[[], Any], frame_bytes: int) -> float:
    """(frame + the most one call held at once) / frame: tracemalloc sees Python's and
    NumPy's allocations, not the runtime's own tensor arena (allocated at load)."""
    tracemalloc.start()
    try:
        invoke()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (frame_bytes + peak) / frame_bytes


def inline_peak(workdir: str) -> float:
    """peak_x_frame of the server side of one Predict (Api.serve on the received body, in this
    process) with a 16 MiB inline input to model_builder.input_sink_model."""
    import numpy as np

    from edge_agent import agent_pb2 as pb
    from edge_agent import config
    from edge_agent.api import rpcs as api
    from edge_agent.errors import StatusCode
    from edge_agent.protocol import HEADER
    from edge_agent.api.rpcs import Method
    from edge_agent.api.service import AgentService
    from edge_agent.api.caller import IN_PROCESS

    service = AgentService(config.from_mapping({
        "edge_agent_socket_path": os.path.join(workdir, "unused.sock"),
        "edge_agent_state_dir": os.path.join(workdir, "inline-state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))
    try:
        path = model_builder.input_sink_model(SINK_BYTES // 4).write(
            os.path.join(workdir, "sink.tflite"))
        service.load_model(pb.LoadModelRequest(name="sink", url=str(path)))
        _, frame = request_frame("sink", {"x": np.ones((1, SINK_BYTES // 4), np.float32)})
        body = frame[HEADER.size:]
        del frame
        front = api.Api(service)
        outcome: list = []
        ratio = peak_x_frame(
            lambda: outcome.append(front.serve(api.BY_METHOD[Method.PREDICT], body, IN_PROCESS)),
            len(body))
        if outcome[0].code != StatusCode.OK:
            raise RuntimeError(f"the 16 MiB Predict failed: {outcome[0]}")
        return ratio
    finally:
        service.close()


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def latency_cpus() -> tuple[set[int], set[int]] | None:
    """(the client's CPU, the agent's CPU) for the latency rows: the first two this process
    may use; None on a machine (or a cpuset) of one CPU."""
    available = sorted(os.sched_getaffinity(0))
    return ({available[0]}, {available[1]}) if len(available) >= 2 else None


class Run:
    """One `edge-agent bench` run: its scratch directory, its agent, the figures so far."""

    def __init__(self, workdir: str, iterations: int, rounds: int, c_bench: str | None,
                 agent_socket: str | None = None, agent_command: str | None = None,
                 compare_socket: str | None = None, compare_command: str | None = None,
                 pin_latency: bool = True):
        self.workdir = workdir
        self.iterations = iterations
        self.rounds = rounds
        self.agent_socket = agent_socket
        self.agent_command = agent_command
        self.compare_socket = compare_socket
        self.compare_command = compare_command
        self.c_bench, c_missing = frame_bench(workdir, c_bench)
        self.all_cpus = os.sched_getaffinity(0)
        # On a VM, an agent woken on another CPU than its client's spends several times the CPU
        # of one sharing the client's (docs/BENCHMARKS.md): --no-pin measures that way too.
        self.cpus = latency_cpus() if pin_latency else None
        self.unpinned_servers: set[int] = set()  # those pin() was not permitted to move
        self.results: dict[str, Any] = {
            "iterations": iterations, "rounds": rounds, "num_threads": 1,
            "load_average_start": list(os.getloadavg()), "cpu_count": os.cpu_count(),
            "figures": {}, "floors": {}, "skipped": {}}
        if c_missing:
            for section in ("server_cost", "c_floor", "throughput"):
                self.results["skipped"][section] = c_missing
        self.models = {"tiny": model_builder.tiny_model(),
                       "image": model_builder.image_model(),
                       # Compute-bound: 0.5-1 ms of invoke on one x86_64 core (XNNPACK) for
                       # 128 KiB each way, so the per-request overhead is a small part.
                       "compute": model_builder.slow_model(width=256, layers=8, batch=128)}
        self.paths = {name: str(built.write(os.path.join(workdir, f"{name}.tflite")))
                      for name, built in self.models.items()}
        self.inputs = {name: built.sample_inputs() for name, built in self.models.items()}
        self.frames: dict[str, str] = {}
        self.frame_bytes: dict[str, tuple[int, int]] = {}
        self.samples: dict[str, list[float]] = {}
        self.costs: dict[str, list[dict[str, float]]] = {}
        # Per agent (its prefix): its idle memory_kib and its model-check helper's (or None).
        self.idle: dict[str, tuple[dict[str, int], dict[str, int] | None]] = {}

    @property
    def no_pinning(self) -> str:
        return "none: one CPU" if len(self.all_cpus) < 2 else "none: --no-pin"

    def frame_file(self, model: str, name: str) -> str:
        """A file with the pre-encoded Predict frame of `model`'s sample inputs under `name`."""
        if name not in self.frames:
            path = os.path.join(self.workdir, f"{name}.frame")
            Path(path).write_bytes(request_frame(name, self.inputs[model])[1])
            self.frames[name] = path
        return self.frames[name]

    def sample(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def measured(self, key: str, value_key: str, figures: dict[str, Any]) -> None:
        """A round's figure and, where read, what it cost the agent per request."""
        self.sample(key, figures[value_key])
        if "agent_cpu_us" in figures:
            self.costs.setdefault(key, []).append(
                {part: figures[part] for part in COST_PARTS})

    def calls(self, model: str) -> int:
        """Calls a round for `model`: fewer where one call moves or computes more."""
        return max(1, self.iterations // {"tiny": 1, "image": 5, "compute": 10}[model])

    @contextlib.contextmanager
    def pinned(self, *servers: int) -> Iterator[set[int] | None]:
        """The latency rows' placement: this thread on the client's CPU, every thread of each
        of `servers` on the agent's; all back on every CPU after. Yields the client's CPU set
        (None: not pinned)."""
        if self.cpus is None:
            yield None
            return
        client, agent = self.cpus
        os.sched_setaffinity(0, client)
        pinned = [pid for pid in servers if pin(pid, agent)]
        if len(pinned) < len(servers):  # an agent of another user: the rows say so
            self.unpinned_servers.update(set(servers) - set(pinned))
            self.results["skipped"]["latency_pinning"] = (
                f"not permitted to pin pid(s) {sorted(self.unpinned_servers)}: only the client "
                "was pinned")
        try:
            yield client
        finally:
            os.sched_setaffinity(0, self.all_cpus)
            for pid in pinned:
                pin(pid, self.all_cpus)

    def floor_round(self) -> None:
        calls = self.calls("compute")
        alone, together = (parallel_invokes_per_s(
            self.models["compute"], self.inputs["compute"], n, calls) for n in (1, 2))
        self.sample("parallel_ceiling_compute", together / alone)
        client, agent = self.cpus or (None, None)
        for name in ("tiny", "image"):
            # The runtime alone, on the CPU the agent gets for the latency rows.
            os.sched_setaffinity(0, agent or self.all_cpus)
            try:
                self.sample(f"in_process_{name}_us", in_process(
                    self.models[name], self.inputs[name], 1, self.calls(name))["p50_us"])
            finally:
                os.sched_setaffinity(0, self.all_cpus)
            if self.c_bench is not None:
                request, reply = self.frame_bytes[name]
                placement = (min(client), min(agent)) if client and agent else ()
                self.sample(f"c_pingpong_{name}_us", run_c(
                    self.c_bench, "pingpong", request, reply, self.calls(name),
                    *placement)["p50_us"])

    def replay(self, agent: Agent, iterations: int, frames: Sequence[str],
               cpus: set[int] | None = None) -> dict[str, Any]:
        assert self.c_bench is not None
        return replay_with_usage(self.c_bench, [agent.pid], agent.socket_path, iterations,
                                 frames, cpus)

    def agent_round(self, client, agent: Agent, grpc: tuple[Callable, int] | None,
                    prefix: str = "") -> None:
        """One round of every agent figure of `agent`, kept under `prefix` + the figure's key
        (COMPARED for the agent measured beside the first)."""
        inputs = self.inputs["tiny"]
        with self.pinned(agent.pid, *([grpc[1]] if grpc else [])) as client_cpus:
            self.measured(prefix + "agent_client_tiny_us", "p50_us", time_calls(
                lambda: client.predict("tiny", inputs), self.calls("tiny"), server=agent.pid))
            if self.c_bench is not None:
                for name in ("tiny", "image"):
                    self.measured(prefix + f"server_cost_{name}_us", "p50_us", self.replay(
                        agent, self.calls(name), [self.frame_file(name, name)], client_cpus))
            if grpc is not None:
                self.measured("grpcio_tiny_us", "p50_us", time_calls(
                    grpc[0], self.calls("tiny"), server=grpc[1]))
        if self.c_bench is None:
            return
        for model, clients in (("tiny", 4), ("compute", 2)):  # unpinned: every core
            frames = [self.frame_file(model, model), self.frame_file(model, f"{model}-b")]
            self.measured(prefix + f"requests_per_s_one_client_{model}", "requests_per_s",
                          self.replay(agent, self.calls(model), frames[:1]))
            self.measured(prefix + f"requests_per_s_{clients}_clients_{model}",
                          "requests_per_s",
                          self.replay(agent, self.calls(model), (frames * clients)[:clients]))

    def start_agents(self, stack: contextlib.ExitStack) -> list[tuple[str, Agent, Any]]:
        """The agent measured and, with a compared one, that one too: (prefix, agent, client),
        each with the bench's models loaded and its idle memory read after the first."""
        from edge_agent.client import AgentClient

        wanted = [("", self.workdir, self.agent_socket, self.agent_command)]
        if self.compare_socket or self.compare_command:
            directory = os.path.join(self.workdir, "compared")
            os.makedirs(directory)
            os.chmod(directory, 0o755)
            wanted.append((COMPARED, directory, self.compare_socket, self.compare_command))
        started = []
        for prefix, directory, socket_path, command in wanted:
            agent = Agent(directory, socket_path, command)
            stack.callback(agent.close)
            client = stack.enter_context(AgentClient(agent.socket_path))
            if agent.process is None:  # someone else's agent: leave it as it was
                stack.callback(unload_all, client)
            client.load_model("tiny", self.paths["tiny"])
            time.sleep(1.0)  # start-up transients settle before the idle figures
            helpers = children(agent.pid)
            self.idle[prefix] = (memory_kib(agent.pid),
                                 memory_kib(helpers[0]) if len(helpers) == 1 else None)
            self.results[prefix + "agent"] = {
                "source": agent.source, "pid": agent.pid, "helper_pids": helpers,
                "cpu": CPU_SOURCE, "threads_cpu": THREAD_CPU_SOURCE,
                "context_switches": SWITCH_SOURCE,
                "latency_pinning": ({"client_cpu": min(self.cpus[0]),
                                     "agent_cpu": min(self.cpus[1])}
                                    if self.cpus else self.no_pinning),
                "throughput_pinning": "none"}
            if len(helpers) != 1:
                self.results["skipped"][prefix + "model_check_helper"] = (
                    f"the agent has {len(helpers)} child processes, not one helper")
            for name, model in BENCH_MODELS[1:]:
                client.load_model(name, self.paths[model])
            started.append((prefix, agent, client))
        return started

    def agent_figures(self) -> None:
        """The rounds, each measuring every floor and every agent figure once: a figure and
        its floor are measured in the same stretches of time, whatever the machine does. With
        a compared agent, both agents in every round, taking turns at going first."""
        for name in ("tiny", "image"):
            self.frame_bytes[name] = (os.path.getsize(self.frame_file(name, name)),
                                      reply_frame_bytes(self.models[name], self.inputs[name]))
        with contextlib.ExitStack() as stack:
            agents = self.start_agents(stack)
            grpc = stack.enter_context(self.grpcio_server())
            for turn in range(self.rounds):
                self.floor_round()
                for prefix, agent, client in (agents if turn % 2 == 0 else agents[::-1]):
                    self.agent_round(client, agent, None if prefix else grpc, prefix)
        self.results["round_samples"] = self.samples  # each round's figure, for the spread
        self.results["round_costs"] = self.costs
        median = {key: statistics.median(values) for key, values in self.samples.items()}
        floors = self.results["floors"]
        floors["parallel_ceiling_compute"] = median["parallel_ceiling_compute"]
        for name in ("tiny", "image"):
            floors[f"frame_bytes_{name}"] = list(self.frame_bytes[name])
            for kind in ("in_process", "c_pingpong"):
                if f"{kind}_{name}_us" in median:
                    floors[f"{kind}_{name}_us"] = median[f"{kind}_{name}_us"]
        floors["spread"] = {key: spread(values) for key, values in self.samples.items()
                            if key.startswith(("in_process_", "c_pingpong_", "parallel_"))}
        self.results["figures"] = self.agent_rows("")
        if len(agents) > 1:
            self.results[COMPARED + "figures"] = self.agent_rows(COMPARED)

    def agent_rows(self, prefix: str) -> dict[str, dict]:
        """The rows of the agent whose samples are under `prefix`, against the floors of the
        same rounds (a throughput's: that agent's own one-client figure)."""
        figures = {}
        if self.c_bench is not None:
            for name in ("tiny", "image"):
                figures[f"server_cost_{name}_us"] = self.row(
                    prefix + f"server_cost_{name}_us", "us", self.floor_rounds(name),
                    target=f"server_cost_{name}", pinned=True)
        floor = self.floor_rounds("tiny")  # None without the C floor: then no verdict
        figures["agent_client_tiny_us"] = self.row(
            prefix + "agent_client_tiny_us", "us", floor,
            target="end_to_end_tiny" if floor else None, pinned=True)
        if not prefix and "grpcio_tiny_us" in self.samples:
            figures["grpcio_tiny_us"] = self.row(
                "grpcio_tiny_us", "us", self.samples["agent_client_tiny_us"],
                target="grpcio_over_agent_client", pinned=True)
        if self.c_bench is not None:
            for model, clients, target in (("tiny", 4, "throughput_four_clients_tiny"),
                                           ("compute", 2, "throughput_two_clients_compute")):
                alone = prefix + f"requests_per_s_one_client_{model}"
                figures[f"requests_per_s_one_client_{model}"] = self.row(alone, "req/s")
                figures[f"requests_per_s_{clients}_clients_{model}"] = self.row(
                    prefix + f"requests_per_s_{clients}_clients_{model}", "req/s",
                    self.samples[alone], target=target)
        return figures

    def row(self, key: str, unit: str, floor_rounds: list[float] | None = None,
            target: str | None = None, pinned: bool = False) -> dict:
        """The printed row of `key`: its median over the rounds against the median of its
        floor's rounds, the spread of both, what it cost the agent per request (medians), and
        the verdict unless the floor moved more than FLOOR_MOVE_LIMIT within the run."""
        values = self.samples[key]
        floor = statistics.median(floor_rounds) if floor_rounds else None
        row = figure(statistics.median(values), unit, floor, target=target)
        row["spread"] = spread(values)
        row["pinned"] = pinned and self.cpus is not None and not self.unpinned_servers
        if floor_rounds:
            row["floor_spread"] = spread(floor_rounds)
            row["floor_moved"] = max(floor_rounds) / min(floor_rounds) - 1
            if row["floor_moved"] > FLOOR_MOVE_LIMIT:
                row.update(unreliable=True, ratio=None, met=None)
        for part in COST_PARTS:
            parts = [cost[part] for cost in self.costs.get(key, []) if cost[part] is not None]
            if parts:
                row[part] = statistics.median(parts)
        return row

    @contextlib.contextmanager
    def grpcio_server(self) -> Iterator[tuple[Callable[[], Any], int] | None]:
        """A Predict of the tiny model through a grpcio server over AgentService (a process of
        its own, edge_agent.tools.grpcio_server) and that process's pid; None, and the reason
        noted, without grpcio."""
        try:
            import grpc  # noqa: F401 (only whether it is there)
        except ImportError:
            self.results["skipped"]["grpcio"] = "grpcio is not installed"
            yield None
            return
        from edge_agent.tools.grpcio_server import grpc_predict

        directory = os.path.join(self.workdir, "grpcio")
        os.makedirs(directory)
        socket_path = os.path.join(directory, "grpcio.sock")
        server = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.tools.grpcio_server", directory, socket_path],
            stderr=subprocess.DEVNULL)
        try:
            wait_for_socket(socket_path, server)
            request, _ = request_frame("tiny", self.inputs["tiny"])
            with grpc_predict(socket_path, self.paths["tiny"], request) as call:
                yield call, server.pid
        finally:
            server.kill()
            server.wait()

    def floor_rounds(self, name: str) -> list[float] | None:
        """Each round's floor of a `name` Predict: in-process invoke + C ping-pong."""
        if f"c_pingpong_{name}_us" not in self.samples:
            return None
        return [a + b for a, b in zip(self.samples[f"in_process_{name}_us"],
                                      self.samples[f"c_pingpong_{name}_us"])]

    def memory(self) -> None:
        for prefix, (agent, helper) in self.idle.items():
            figures = self.results[prefix + "figures"]
            figures["idle_rss_mb"] = figure(agent["VmRSS"] / 1024, "MB", target="idle_rss_mb")
            figures["idle_pss_mb"] = figure(agent["PSS"] / 1024, "MB")
            figures["idle_uss_mb"] = figure(agent["USS"] / 1024, "MB")
            if helper is not None:
                for part, key in (("VmRSS", "rss"), ("PSS", "pss"), ("USS", "uss")):
                    figures[f"helper_idle_{key}_mb"] = figure(helper[part] / 1024, "MB")
        self.results["figures"]["peak_16mib_x_frame"] = figure(
            inline_peak(self.workdir), "x", target="peak_16mib_x_frame")


def run_bench(iterations: int, rounds: int = 3, c_bench: str | None = None,
              agent_socket: str | None = None, agent_command: str | None = None,
              label: str | None = None, compare_socket: str | None = None,
              compare_command: str | None = None, compare_label: str | None = None,
              pin_latency: bool = True) -> dict:
    from edge_agent.platform.runtime import interpreter_module, runtime_name

    try:
        interpreter_module()
    except ImportError as err:
        return {"skipped": {"all": f"no TFLite runtime here: {err}"}, "figures": {}}
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as workdir:
        # Readable by all: the benchmark's clients may run as another user than the agent.
        os.chmod(workdir, 0o755)
        run = Run(workdir, iterations, rounds, c_bench, agent_socket, agent_command,
                  compare_socket, compare_command, pin_latency)
        run.results["label"] = label
        if compare_socket or compare_command:
            run.results[COMPARED + "label"] = compare_label
        run.results["runtime"] = runtime_name()
        run.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run.agent_figures()
        run.memory()
    run.results["load_average_end"] = list(os.getloadavg())
    return run.results


LABELS = {
    "server_cost_tiny_us": "server cost, tiny (C client replaying frames)",
    "server_cost_image_us": "server cost, 1x224x224x3 float32",
    "agent_client_tiny_us": "end to end, AgentClient.predict tiny",
    "grpcio_tiny_us": "grpcio server, tiny (floor: AgentClient)",
    "requests_per_s_one_client_tiny": "one C client, tiny",
    "requests_per_s_4_clients_tiny": "four C clients, two tiny models",
    "requests_per_s_one_client_compute": "one C client, compute model",
    "requests_per_s_2_clients_compute": "two C clients, two compute models",
    "idle_rss_mb": "idle RSS, one small model",
    "idle_pss_mb": "idle PSS, one small model",
    "idle_uss_mb": "idle USS (Private_*), one small model",
    "helper_idle_rss_mb": "model-check helper idle RSS",
    "helper_idle_pss_mb": "model-check helper idle PSS",
    "helper_idle_uss_mb": "model-check helper idle USS",
    "peak_16mib_x_frame": "peak memory, 16 MiB inline input",
}


def print_agent(agent: dict, name: str) -> None:
    print(f"{name}: pid {agent['pid']}, {agent['source']}; model-check helper pid(s) "
          f"{agent.get('helper_pids')}")


def print_rows(figures: dict[str, dict]) -> None:
    print(f"{'figure':45s} {'value':>9s} {'unit':5s} {'min..max':>17s} {'floor':>7s} "
          f"{'moved':>5s} {'ratio':>6s} {'target':>6s} {'met':>3s} {'cpu/req':>8s} "
          f"{'thr/req':>8s} {'vcs/req':>7s} {'ics/req':>7s} pin")
    for key, row in figures.items():
        floor = "" if row["floor"] is None else f"{row['floor']:.1f}"
        moved = "" if row["floor_moved"] is None else f"{row['floor_moved']:.0%}"
        ratio = "unrel." if row["unreliable"] else (
            "" if row["ratio"] is None else f"{row['ratio']:.2f}")
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        span = "" if row["spread"] is None else (
            f"{row['spread']['min']:.1f}..{row['spread']['max']:.1f}")
        cpu = "" if row["agent_cpu_us"] is None else f"{row['agent_cpu_us']:.1f}us"
        threads = ("" if row["agent_threads_cpu_us"] is None
                   else f"{row['agent_threads_cpu_us']:.1f}us")
        vcs = "" if row["voluntary_switches"] is None else f"{row['voluntary_switches']:.2f}"
        ics = "" if row["involuntary_switches"] is None else f"{row['involuntary_switches']:.2f}"
        pinned = "yes" if row["pinned"] else ""
        print(f"{LABELS.get(key, key):45s} {row['value']:9.1f} {row['unit']:5s} {span:>17s} "
              f"{floor:>7s} {moved:>5s} {ratio:>6s} {row['target'] or '':>6s} {met:>3s} "
              f"{cpu:>8s} {threads:>8s} {vcs:>7s} {ics:>7s} {pinned}")


def side_by_side(results: dict) -> dict[str, dict[str, float | None]]:
    """Per figure of both agents: the compared agent's value and its CPU per request (the
    threads' runtime where read, else the clock ticks') as multiples of the first's."""
    table = {}
    for key, theirs in results[COMPARED + "figures"].items():
        ours = results["figures"].get(key)
        if ours is None:
            continue
        cpu = "agent_threads_cpu_us" if ours["agent_threads_cpu_us"] and \
            theirs["agent_threads_cpu_us"] is not None else "agent_cpu_us"
        table[key] = {
            "value_x": theirs["value"] / ours["value"],
            "cpu_x": theirs[cpu] / ours[cpu] if ours[cpu] and theirs[cpu] is not None else None}
    return table


def print_table(results: dict) -> None:
    if "all" in results["skipped"]:
        print(f"skipped: {results['skipped']['all']}")
        return
    start, end = results["load_average_start"], results["load_average_end"]
    label = f" [{results['label']}]" if results.get("label") else ""
    print(f"edge-agent bench{label}: {results['iterations']} calls a round (image /5, compute "
          f"/10), median of {results['rounds']} rounds, runtime {results['runtime']}, "
          f"num_threads 1")
    print(f"load average {start[0]:.2f} at the start, {end[0]:.2f} at the end (1 min), "
          f"{results['cpu_count']} CPUs")
    agent = results["agent"]
    print_agent(agent, "agent")
    pinning = agent["latency_pinning"]
    print("latency rows: " + (
        f"pinned (pin=yes), client on CPU {pinning['client_cpu']}, agent's threads on CPU "
        f"{pinning['agent_cpu']}" if isinstance(pinning, dict) else f"unpinned ({pinning})")
        + "; throughput rows unpinned")
    print(f"cpu/req: {agent['cpu']}; thr/req: {agent['threads_cpu']}; vcs/ics per req: "
          f"{agent['context_switches']}; over the timed calls only")
    floors = results["floors"]
    cells = [f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
             for key, value in floors.items() if key != "spread"]
    print("floors: " + ", ".join(cells))
    for key, cell in floors.get("spread", {}).items():
        print(f"  floor {key}: min {cell['min']:.2f} median {cell['median']:.2f} "
              f"max {cell['max']:.2f}")
    print_rows(results["figures"])
    if COMPARED + "figures" in results:
        name = results.get(COMPARED + "label") or "compared agent"
        print()
        print_agent(results[COMPARED + "agent"], f"{name} (measured in the same rounds)")
        print_rows(results[COMPARED + "figures"])
        print(f"\n{name} / agent{label}, the same rounds:")
        for key, cell in side_by_side(results).items():
            cpu = "" if cell["cpu_x"] is None else f", CPU per request x{cell['cpu_x']:.2f}"
            print(f"  {LABELS.get(key, key):45s} value x{cell['value_x']:.2f}{cpu}")
    print("floor of server cost and end to end: in-process invoke + C ping-pong of the same "
          "frame sizes, each round's; of grpcio: AgentClient; of a throughput: the one-client "
          "figure; moved: how far the floor moved across the rounds (max/min - 1); unrel.: "
          f"moved more than {FLOOR_MOVE_LIMIT:.0%}, no ratio reported; "
          "parallel_ceiling_compute: two processes invoking the compute model in-process / one "
          "(what the machine allows now)")
    for section, reason in results["skipped"].items():
        print(f"skipped {section}: {reason}")


def run(args) -> int:
    results = run_bench(args.iterations, args.rounds, args.c_bench,
                        agent_socket=args.agent_socket, agent_command=args.agent_command,
                        label=args.label, compare_socket=args.compare_socket,
                        compare_command=args.compare_command,
                        compare_label=args.compare_label, pin_latency=not args.no_pin)
    if COMPARED + "figures" in results:
        results["side_by_side"] = side_by_side(results)
    if args.json == "-":
        print(json.dumps(results, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0
