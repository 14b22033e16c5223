"""The gRPC front on h2 against a grpcio server over the same service: a tiny-model Predict
through each, and the framed socket beside them.

    .venv/bin/python benchmarks/bench_grpc_front.py [--iterations 2000] [--json]

Each server runs in a process of its own; the client is grpcio (the framed socket: the
agent's AgentClient) in this process. `h2`: the agent's own front (`edge-agent serve` with
edge_agent_grpc_socket_path). `grpcio`: a grpcio server (what the agent used before the h2
front, with a thread pool of edge_agent_grpc_max_workers) over the same AgentService and the
same RPC table (edge_agent.tools.grpcio_server, started by this script: `--serve-grpcio`).
Also: each server process's RSS after the calls. Medians, not means: the machines are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.tools import model_builder  # noqa: E402
from edge_agent.tools.bench import (request_frame, rss_mb, time_calls,  # noqa: E402
                                    wait_for_socket)
from edge_agent.tools.grpcio_server import grpc_predict, serve_grpcio  # noqa: E402


def measure(socket_path: str, model_path: str, iterations: int) -> dict:
    request, _ = request_frame("tiny", model_builder.tiny_model().sample_inputs())
    with grpc_predict(socket_path, model_path, request) as predict:
        return time_calls(predict, iterations)


def run(iterations: int) -> dict:
    from edge_agent.client import AgentClient

    results = {"iterations": iterations}
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-grpc-") as workdir:
        model_path = str(model_builder.tiny_model().write(os.path.join(workdir, "tiny.tflite")))
        framed = os.path.join(workdir, "agent.sock")
        h2_socket = os.path.join(workdir, "h2.sock")
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "serve", "--socket", framed,
             "--set", "edge_agent_allow_unsigned_models=true", "--set", "edge_agent_num_threads=1",
             "--set", f"edge_agent_state_dir={workdir}/state",
             "--set", f"edge_agent_grpc_socket_path={h2_socket}"], stderr=subprocess.DEVNULL)
        try:
            wait_for_socket(h2_socket, agent)
            results["h2"] = measure(h2_socket, model_path, iterations)
            with AgentClient(framed) as client:
                inputs = model_builder.tiny_model().sample_inputs()
                results["framed"] = time_calls(lambda: client.predict("tiny", inputs), iterations)
            results["h2"]["rss_mb"] = rss_mb(agent.pid)
        finally:
            agent.terminate()
            agent.wait(10)
        grpcio_socket = os.path.join(workdir, "grpcio.sock")
        server = subprocess.Popen([sys.executable, __file__, "--serve-grpcio", workdir,
                                   grpcio_socket], stderr=subprocess.DEVNULL)
        try:
            wait_for_socket(grpcio_socket, server)
            results["grpcio"] = measure(grpcio_socket, model_path, iterations)
            results["grpcio"]["rss_mb"] = rss_mb(server.pid)
        finally:
            server.kill()
            server.wait()
    results["grpcio_over_h2_p50"] = results["grpcio"]["p50_us"] / results["h2"]["p50_us"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-grpcio", nargs=2, metavar=("WORKDIR", "SOCKET"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_grpcio:
        serve_grpcio(*args.serve_grpcio)
        return 0
    results = run(args.iterations)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"tiny Predict, {args.iterations} calls each (microseconds; RSS of the server process)")
    for name in ("h2", "grpcio", "framed"):
        r = results[name]
        rss = f"  RSS {r['rss_mb']:.1f} MB" if "rss_mb" in r else ""
        print(f"{name:8s} p50 {r['p50_us']:8.1f}  p99 {r['p99_us']:8.1f}{rss}")
    print(f"grpcio p50 / h2 p50 = {results['grpcio_over_h2_p50']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
