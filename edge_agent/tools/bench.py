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
- memory: the agent's idle RSS, PSS and USS with one small model, and the peak memory of a Predict
  with a 16 MiB inline input as a multiple of its frame.
Medians of --rounds rounds of p50s (or requests/s); the load average is printed, since on a
shared machine it says how far to trust the rest. A section whose dependency is missing (no C
compiler or benchmarks/frame_bench.c, no grpcio) is skipped with the reason.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator

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


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {"p50_us": statistics.median(ordered) / 1e3,
            "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e3}


def time_calls(call: Callable[[], object], iterations: int, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(iterations):
        start = clock()
        call()
        samples.append(clock() - start)
    return percentiles(samples)


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


def start_agent(workdir: str, num_threads: int, *extra: str) -> tuple[subprocess.Popen, str]:
    path = os.path.join(workdir, "agent.sock")
    agent = subprocess.Popen(
        agent_command("serve", "--socket", path,
                      "--set", "edge_agent_allow_unsigned_models=true",
                      "--set", f"edge_agent_num_threads={num_threads}", *extra),
        stderr=subprocess.DEVNULL)
    wait_for_socket(path, agent)
    return agent, path


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


def figure(value: float, unit: str, floor: float | None = None, ratio: float | None = None,
           target: str | None = None) -> dict:
    """One printed row. `ratio` defaults to value / floor; `target` names a TARGETS entry."""
    if ratio is None and floor:
        ratio = value / floor
    row: dict[str, Any] = {"value": value, "unit": unit, "floor": floor, "ratio": ratio,
                           "target": None, "met": None}
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
    """peak_x_frame of the server side of one Predict (Api.invoke on the received body, in this
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


class Run:
    """One `edge-agent bench` run: its scratch directory, its agent, the figures so far."""

    def __init__(self, workdir: str, iterations: int, rounds: int, c_bench: str | None):
        self.workdir = workdir
        self.iterations = iterations
        self.rounds = rounds
        self.c_bench, c_missing = frame_bench(workdir, c_bench)
        self.results: dict[str, Any] = {
            "iterations": iterations, "rounds": rounds, "num_threads": 1,
            "load_average_start": list(os.getloadavg()), "figures": {}, "floors": {},
            "skipped": {}}
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
        self.idle: dict[str, int] = {}

    def frame_file(self, model: str, name: str) -> str:
        """A file with the pre-encoded Predict frame of `model`'s sample inputs under `name`."""
        if name not in self.frames:
            path = os.path.join(self.workdir, f"{name}.frame")
            Path(path).write_bytes(request_frame(name, self.inputs[model])[1])
            self.frames[name] = path
        return self.frames[name]

    def sample(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def calls(self, model: str) -> int:
        """Calls a round for `model`: fewer where one call moves or computes more."""
        return max(1, self.iterations // {"tiny": 1, "image": 5, "compute": 10}[model])

    def floor_round(self) -> None:
        calls = self.calls("compute")
        alone, together = (parallel_invokes_per_s(
            self.models["compute"], self.inputs["compute"], n, calls) for n in (1, 2))
        self.sample("parallel_ceiling_compute", together / alone)
        for name in ("tiny", "image"):
            self.sample(f"in_process_{name}_us", in_process(
                self.models[name], self.inputs[name], 1, self.calls(name))["p50_us"])
            if self.c_bench is not None:
                request, reply = self.frame_bytes[name]
                self.sample(f"c_pingpong_{name}_us", run_c(
                    self.c_bench, "pingpong", request, reply, self.calls(name))["p50_us"])

    def replay(self, socket_path: str, iterations: int, *frames: str) -> dict[str, float]:
        assert self.c_bench is not None
        return run_c(self.c_bench, "replay", socket_path, iterations, *frames)

    def agent_round(self, client, path: str) -> None:
        inputs = self.inputs["tiny"]
        self.sample("agent_client_tiny_us", time_calls(
            lambda: client.predict("tiny", inputs), self.calls("tiny"))["p50_us"])
        if self.c_bench is None:
            return
        for name in ("tiny", "image"):
            self.sample(f"server_cost_{name}_us", self.replay(
                path, self.calls(name), self.frame_file(name, name))["p50_us"])
        for model, clients in (("tiny", 4), ("compute", 2)):
            frames = [self.frame_file(model, model), self.frame_file(model, f"{model}-b")]
            self.sample(f"requests_per_s_one_client_{model}", self.replay(
                path, self.calls(model), frames[0])["requests_per_s"])
            self.sample(f"requests_per_s_{clients}_clients_{model}", self.replay(
                path, self.calls(model), *(frames * clients)[:clients])["requests_per_s"])

    def agent_figures(self) -> None:
        """The rounds, each measuring every floor and every agent figure once: a figure and
        its floor are measured in the same stretches of time, whatever the machine does."""
        from edge_agent.client import AgentClient

        for name in ("tiny", "image"):
            self.frame_bytes[name] = (os.path.getsize(self.frame_file(name, name)),
                                      reply_frame_bytes(self.models[name], self.inputs[name]))
        agent, path = start_agent(self.workdir, 1)
        grpcio = contextlib.ExitStack()
        try:
            grpc_call = grpcio.enter_context(self.grpcio_server())
            with AgentClient(path) as client:
                client.load_model("tiny", self.paths["tiny"])
                time.sleep(1.0)  # start-up transients settle before the idle figures
                self.idle = memory_kib(agent.pid)
                for name in ("tiny-b", "image", "compute", "compute-b"):
                    client.load_model(name, self.paths[name.split("-")[0]])
                for _ in range(self.rounds):
                    self.floor_round()
                    self.agent_round(client, path)
                    if grpc_call is not None:
                        self.sample("grpcio_tiny_us", time_calls(
                            grpc_call, self.calls("tiny"))["p50_us"])
        finally:
            grpcio.close()
            agent.terminate()
            agent.wait(10)
        self.results["round_samples"] = self.samples  # each round's figure, for the spread
        median = {key: statistics.median(values) for key, values in self.samples.items()}
        floors = self.results["floors"]
        floors["parallel_ceiling_compute"] = median["parallel_ceiling_compute"]
        for name in ("tiny", "image"):
            floors[f"frame_bytes_{name}"] = list(self.frame_bytes[name])
            for kind in ("in_process", "c_pingpong"):
                if f"{kind}_{name}_us" in median:
                    floors[f"{kind}_{name}_us"] = median[f"{kind}_{name}_us"]
        figures = self.results["figures"]
        if self.c_bench is not None:
            for name in ("tiny", "image"):
                figures[f"server_cost_{name}_us"] = figure(
                    median[f"server_cost_{name}_us"], "us", self.floor(name),
                    target=f"server_cost_{name}")
        floor = self.floor("tiny")  # None without the C floor: then no verdict
        figures["agent_client_tiny_us"] = figure(
            median["agent_client_tiny_us"], "us", floor,
            target="end_to_end_tiny" if floor else None)
        if "grpcio_tiny_us" in median:
            figures["grpcio_tiny_us"] = figure(
                median["grpcio_tiny_us"], "us", median["agent_client_tiny_us"],
                target="grpcio_over_agent_client")
        if self.c_bench is not None:
            for model, clients, target in (("tiny", 4, "throughput_four_clients_tiny"),
                                           ("compute", 2, "throughput_two_clients_compute")):
                alone = median[f"requests_per_s_one_client_{model}"]
                figures[f"requests_per_s_one_client_{model}"] = figure(alone, "req/s")
                figures[f"requests_per_s_{clients}_clients_{model}"] = figure(
                    median[f"requests_per_s_{clients}_clients_{model}"], "req/s", alone,
                    target=target)

    @contextlib.contextmanager
    def grpcio_server(self) -> Iterator[Callable[[], Any] | None]:
        """A Predict of the tiny model through a grpcio server over AgentService (a process of
        its own, edge_agent.tools.grpcio_server); None, and the reason noted, without grpcio."""
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
                yield call
        finally:
            server.kill()
            server.wait()

    def floor(self, name: str) -> float | None:
        floors = self.results["floors"]
        if f"c_pingpong_{name}_us" not in floors:
            return None
        return floors[f"in_process_{name}_us"] + floors[f"c_pingpong_{name}_us"]

    def memory(self) -> None:
        figures = self.results["figures"]
        figures["idle_rss_mb"] = figure(self.idle["VmRSS"] / 1024, "MB", target="idle_rss_mb")
        figures["idle_pss_mb"] = figure(self.idle["PSS"] / 1024, "MB")
        figures["idle_uss_mb"] = figure(self.idle["USS"] / 1024, "MB")
        figures["peak_16mib_x_frame"] = figure(
            inline_peak(self.workdir), "x", target="peak_16mib_x_frame")


def run_bench(iterations: int, rounds: int = 3, c_bench: str | None = None) -> dict:
    from edge_agent.platform.runtime import interpreter_module, runtime_name

    try:
        interpreter_module()
    except ImportError as err:
        return {"skipped": {"all": f"no TFLite runtime here: {err}"}, "figures": {}}
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as workdir:
        # Readable by all: the benchmark's clients may run as another user than the agent.
        os.chmod(workdir, 0o755)
        run = Run(workdir, iterations, rounds, c_bench)
        run.results["runtime"] = runtime_name()
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
    "peak_16mib_x_frame": "peak memory, 16 MiB inline input",
}


def print_table(results: dict) -> None:
    if "all" in results["skipped"]:
        print(f"skipped: {results['skipped']['all']}")
        return
    start, end = results["load_average_start"], results["load_average_end"]
    print(f"edge-agent bench: {results['iterations']} calls a round (image /5, compute /10), "
          f"median of {results['rounds']} rounds, runtime {results['runtime']}, num_threads 1")
    print(f"load average {start[0]:.2f} at the start, {end[0]:.2f} at the end (1 min), "
          f"{os.cpu_count()} CPUs")
    floors = results["floors"]
    cells = [f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
             for key, value in floors.items()]
    print("floors: " + ", ".join(cells))
    print(f"{'figure':42s} {'value':>10s} {'unit':5s} {'floor':>10s} {'ratio':>6s} "
          f"{'target':>7s}  met")
    for key, row in results["figures"].items():
        floor = "" if row["floor"] is None else f"{row['floor']:.1f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        print(f"{LABELS.get(key, key):42s} {row['value']:10.1f} {row['unit']:5s} {floor:>10s} "
              f"{ratio:>6s} {row['target'] or '':>7s}  {met}")
    print("floor of server cost and end to end: in-process invoke + C ping-pong of the same "
          "frame sizes; of a throughput: the one-client figure; parallel_ceiling_compute: two "
          "processes invoking the compute model in-process / one (what the machine allows now)")
    for section, reason in results["skipped"].items():
        print(f"skipped {section}: {reason}")


def run(args) -> int:
    results = run_bench(args.iterations, args.rounds, args.c_bench)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0
