"""Predict throughput with several C clients at once, against one client alone.

Starts one agent (`edge-agent serve`, num_threads 1), loads two tiny models ([1,4] float32
a + b) and two compute-bound ones (model_builder.slow_model), and runs c_replay_bench
processes (benchmarks/c_replay_bench.c: one pre-encoded Predict frame replayed, one request
in flight, no client library), all started together once connected and warmed up. Prints
requests/s for one client on one model and for N clients spread over two models, and their
ratio; the single client's p50 is the server cost of `make c-bench`'s kind (C client
replaying frames). Also the load average before the run, since the machine may be shared.

    cc -O2 -o /tmp/c_replay_bench benchmarks/c_replay_bench.c
    .venv/bin/python benchmarks/bench_concurrency.py /tmp/c_replay_bench [--iterations N]
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

from edge_agent import agent_pb2 as pb
from edge_agent.client import AgentClient
from edge_agent.protocol import Method, encode_request
from edge_agent.tensors import add_array
from edge_agent.tools import model_builder
from edge_agent.tools.bench import start_agent


def frame_file(workdir: str, name: str, inputs: dict) -> str:
    request = pb.PredictRequest(name=name)
    for key, array in inputs.items():
        add_array(request.tensors, key, array)
    path = os.path.join(workdir, f"{name}.frame")
    with open(path, "wb") as f:
        f.write(encode_request(Method.PREDICT, 1, request.SerializeToString()))
    return path


def run_clients(program: str, socket_path: str, frames: list[str], iterations: int) -> dict:
    """One c_replay_bench per frame, released together; requests/s over the slowest one's
    time (all ran for the whole of it), and the median of their p50s."""
    clients = [subprocess.Popen([program, socket_path, frame, str(iterations)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for frame in frames]
    for client in clients:
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("a replaying client failed before it was ready")
    for client in clients:  # the go line: each client starts at once on reading it
        client.stdin.write("go\n")
        client.stdin.flush()
    results = []
    for client in clients:
        out, _ = client.communicate(timeout=600)
        if client.returncode != 0:
            raise RuntimeError(f"a replaying client failed ({client.returncode})")
        p50_ns, total_ns = (int(v) for v in out.split())
        results.append((p50_ns, total_ns))
    slowest = max(total for _, total in results)
    return {"clients": len(frames), "requests_per_s": len(frames) * iterations / (slowest / 1e9),
            "p50_us": statistics.median(p50 for p50, _ in results) / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program", help="the built c_replay_bench")
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
                    runs["one"].append(run_clients(args.program, path, one, iterations))
                    runs["many"].append(run_clients(args.program, path, many, iterations))
                alone = statistics.median(r["requests_per_s"] for r in runs["one"])
                together = statistics.median(r["requests_per_s"] for r in runs["many"])
                results[kind] = {
                    "one_client_requests_per_s": round(alone),
                    "one_client_p50_us": round(statistics.median(
                        r["p50_us"] for r in runs["one"]), 1),
                    f"{args.clients}_clients_two_models_requests_per_s": round(together),
                    "ratio": round(together / alone, 2)}
        finally:
            agent.terminate()
            agent.wait(10)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    load = ", ".join(f"{v:.2f}" for v in results.pop("load_average"))
    print(f"Predict throughput, C clients replaying frames (load average before: {load})")
    for kind, figures in results.items():
        print(f"  {kind}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
