"""Predict server cost and throughput with C clients replaying frames, beside their floors.

Server cost: one C client replaying a frame (benchmarks/frame_bench.c, `replay`) on the tiny
model and on the 1x224x224x3 float32 image model, p50, against the floor (in-process invoke,
edge_agent.tools.bench.in_process, plus a C round trip moving the same bytes between two C
processes: `frame_bench pingpong`) and their ratio (issue 13's target: within 1.3x).

Throughput: starts one agent (`edge-agent serve`, num_threads 1), loads two tiny models ([1,4] float32
a + b) and two compute-bound ones (model_builder.slow_model), and runs frame_bench's
replaying clients (one thread and connection per client, one pre-encoded Predict frame
replayed, one request in flight, no client library), all started together once connected
and warmed up. Prints
requests/s for one client on one model and for N clients spread over two models, and their
ratio; the single client's p50 is the server cost of `make c-bench`'s kind (C client
replaying frames). With each figure, the agent's CPU time per request and the cores it kept
busy (/proc/PID/stat): where the agent stays near one core with several clients, its Python
(serialised by the interpreter lock) is the limit; where it does not, the cores are. Also the
load average before the run, since the machine may be shared.

    make benchmarks/build/frame_bench
    .venv/bin/python benchmarks/bench_concurrency.py benchmarks/build/frame_bench [--iterations N]
        [--clients N] [--repeat N] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from edge_agent.client import AgentClient
from edge_agent.tools import model_builder
from edge_agent.tools.bench import in_process, reply_frame_bytes, request_frame, start_agent


def floor_p50_us(program: str, request_bytes: int, reply_bytes: int, iterations: int) -> float:
    out = subprocess.run([program, "pingpong", str(request_bytes), str(reply_bytes),
                          str(iterations)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["p50_us"]


def frame_file(workdir: str, name: str, inputs: dict) -> str:
    path = os.path.join(workdir, f"{name}.frame")
    with open(path, "wb") as f:
        f.write(request_frame(name, inputs)[1])
    return path


# Round trips each frame_bench client makes before the timed ones (benchmarks/frame_bench.c).
FRAME_BENCH_WARM_UP = 200


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_clients(program: str, socket_path: str, frames: list[str], iterations: int,
                agent_pid: int) -> dict:
    """One replaying client per frame (frame_bench replay: a thread each, released together
    by a barrier after their warm-up); requests/s from the barrier to the last one's end and
    the p50 of all round trips, as frame_bench times them; the agent's CPU per request and
    the cores it kept busy over the whole program, warm-up calls counted."""
    cpu_before, started = cpu_seconds(agent_pid), time.monotonic()
    done = subprocess.run([program, "replay", socket_path, str(iterations), *frames],
                          capture_output=True, text=True, timeout=600)
    wall, cpu = time.monotonic() - started, cpu_seconds(agent_pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"the replaying clients failed: {done.stderr.strip()}")
    figures = json.loads(done.stdout)
    requests = figures["calls"] + FRAME_BENCH_WARM_UP * len(frames)
    return {"clients": len(frames), "requests_per_s": figures["requests_per_s"],
            "p50_us": figures["p50_us"],
            "agent_cpu_us_per_request": cpu / requests * 1e6,
            "agent_cores": cpu / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program", help="the built frame_bench (make benchmarks/build/frame_bench)")
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict = {"load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="edge-agent-concurrency-") as workdir:
        agent, path = start_agent(workdir, 1)
        try:
            frames = {}
            results["server_cost"] = {}
            with AgentClient(path) as client:
                for name, model, iterations in (
                        ("tiny", model_builder.tiny_model(), args.iterations),
                        ("image-1x224x224x3", model_builder.image_model(), args.iterations // 20)):
                    client.load_model(name, str(model.write(os.path.join(workdir, f"{name}.tflite"))))
                    inputs = model.sample_inputs(seed=1)
                    frame = frame_file(workdir, name, inputs)
                    server = statistics.median(run_clients(args.program, path, [frame], iterations,
                                                           agent.pid)["p50_us"]
                                               for _ in range(args.repeat))
                    local = in_process(model, inputs, 1, iterations)["p50_us"]
                    floor = floor_p50_us(args.program, os.path.getsize(frame),
                                         reply_frame_bytes(model, inputs), iterations)
                    results["server_cost"][name] = {
                        "agent_p50_us": round(server, 1), "in_process_p50_us": round(local, 1),
                        "c_floor_p50_us": round(floor, 1),
                        "ratio": round(server / (local + floor), 2)}
                    client.unload_model(name)
            with AgentClient(path) as client:
                for kind, build in (("tiny", model_builder.tiny_model),
                                    ("slow", model_builder.slow_model)):
                    model = build()
                    model_path = str(model.write(os.path.join(workdir, f"{kind}.tflite")))
                    for copy in ("a", "b"):
                        name = f"{kind}-{copy}"
                        client.load_model(name, model_path)
                        frames[name] = frame_file(workdir, name, model.sample_inputs(seed=1))
            for kind, iterations in (("tiny", args.iterations), ("slow", args.iterations // 50)):
                one = [frames[f"{kind}-a"]]
                many = [frames[f"{kind}-{'ab'[i % 2]}"] for i in range(args.clients)]
                runs = {"one": [], "many": []}
                for _ in range(args.repeat):
                    runs["one"].append(run_clients(args.program, path, one, iterations, agent.pid))
                    runs["many"].append(run_clients(args.program, path, many, iterations,
                                                    agent.pid))
                alone = statistics.median(r["requests_per_s"] for r in runs["one"])
                together = statistics.median(r["requests_per_s"] for r in runs["many"])
                results[kind] = {
                    "one_client_requests_per_s": round(alone),
                    "one_client_p50_us": round(statistics.median(
                        r["p50_us"] for r in runs["one"]), 1),
                    f"{args.clients}_clients_two_models_requests_per_s": round(together),
                    "ratio": round(together / alone, 2)}
                for label, key in (("one_client", "one"), (f"{args.clients}_clients", "many")):
                    for figure, digits in (("agent_cpu_us_per_request", 1), ("agent_cores", 2)):
                        results[kind][f"{label}_{figure}"] = round(statistics.median(
                            r[figure] for r in runs[key]), digits)
        finally:
            agent.terminate()
            agent.wait(10)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    load = ", ".join(f"{v:.2f}" for v in results.pop("load_average"))
    print(f"Predict, C clients replaying frames (load average before: {load})")
    for name, figures in results.pop("server_cost").items():
        print(f"  server cost, {name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    for kind, figures in results.items():
        print(f"  {kind}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
