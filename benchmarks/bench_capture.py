"""CaptureData latency and sustained durable capture rate, to disk and to a real S3 server.

    .venv/bin/python benchmarks/bench_capture.py [--iterations 2000] [--seconds 5] [--clients 4]

1. Latency: p50/p99 of a CaptureData round trip (one 4 KB tensor, journaled with fdatasync
   before the reply) beside a ListModels round trip, one client; the ratio of the p50s.
2. Throughput: `--clients` processes send 4 KB captures for `--seconds`; captures/s
   acknowledged, and captures/s delivered (until the last one is SUCCESS), to Disk and to
   SeaweedFS on loopback (tests/s3server.py starts it).
Medians, not means: the machines are noisy.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from edge_agent.tools.bench import time_calls  # noqa: E402
from edge_agent.client import AgentClient  # noqa: E402

TENSOR = np.zeros(1024, np.float32)  # 4 KB


def start_agent(workdir: str, settings: dict) -> tuple[subprocess.Popen, str]:
    socket_path = os.path.join(workdir, "agent.sock")
    config = {"edge_agent_socket_path": socket_path,
              "edge_agent_state_dir": os.path.join(workdir, "state"),
              "sagemaker_edge_core_capture_data_disk_path": os.path.join(workdir, "captures"),
              "sagemaker_edge_core_capture_data_buffer_size": 1_000_000,
              "sagemaker_edge_core_capture_data_batch_size": 200,
              "sagemaker_edge_core_capture_data_push_period_seconds": 0.2,
              "edge_agent_capture_max_spool_mb": 1024,
              "edge_agent_capture_status_history": 1_000_000, **settings}
    path = os.path.join(workdir, "agent.json")
    with open(path, "w") as f:
        json.dump(config, f)
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "serve", "--config", path],
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with AgentClient(socket_path) as client:
                client.list_models()
            return agent, socket_path
        except Exception:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start")
            time.sleep(0.05)


def latency(socket_path: str, iterations: int) -> dict:
    with AgentClient(socket_path) as client:
        list_models = time_calls(client.list_models, iterations)
        capture = time_calls(lambda: client.capture_data("m", [TENSOR], []), iterations)
    return {"list_models": list_models, "capture_data": capture,
            "ratio_p50": capture["p50_us"] / list_models["p50_us"]}


def _client_loop(socket_path: str, seconds: float, queue) -> None:
    ids = []
    with AgentClient(socket_path) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ids.append(client.capture_data("m", [TENSOR], []))
    queue.put(ids)


def throughput(socket_path: str, clients: int, seconds: float) -> dict:
    queue = multiprocessing.get_context("fork").Queue()
    start = time.monotonic()
    workers = [multiprocessing.get_context("fork").Process(
        target=_client_loop, args=(socket_path, seconds, queue)) for _ in range(clients)]
    for w in workers:
        w.start()
    ids = [cid for _ in workers for cid in queue.get()]
    for w in workers:
        w.join()
    acknowledged = time.monotonic() - start
    with AgentClient(socket_path) as client:
        # Batches are delivered in order: when the last capture is done, all are (checked).
        while client.get_capture_data_status(ids[-1]) == "IN_PROGRESS":
            time.sleep(0.01)
        delivered = time.monotonic() - start
        statuses = {client.get_capture_data_status(cid) for cid in ids[:: max(1, len(ids) // 200)]}
    return {"captures": len(ids), "acknowledged_per_s": len(ids) / acknowledged,
            "delivered_per_s": len(ids) / delivered, "statuses_sampled": sorted(statuses)}


def run(args) -> dict:
    results = {"clients": args.clients, "seconds": args.seconds, "tensor_bytes": TENSOR.nbytes,
               "fsync": not args.no_fsync}
    settings = {"edge_agent_capture_fsync": not args.no_fsync}
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as workdir:
        os.makedirs(os.path.join(workdir, "disk"))
        agent, socket_path = start_agent(os.path.join(workdir, "disk"), settings)
        try:
            results["latency_disk"] = latency(socket_path, args.iterations)
            results["disk"] = throughput(socket_path, args.clients, args.seconds)
        finally:
            agent.terminate()
            agent.wait()
        from s3server import SeaweedS3
        s3 = SeaweedS3(Path(workdir) / "seaweedfs").start()
        try:
            os.makedirs(os.path.join(workdir, "s3"))
            agent, socket_path = start_agent(os.path.join(workdir, "s3"), {**settings, **s3.agent_settings("bench")})
            try:
                results["s3"] = throughput(socket_path, args.clients, args.seconds)
            finally:
                agent.terminate()
                agent.wait()
        finally:
            s3.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--no-fsync", action="store_true",
                        help="edge_agent_capture_fsync false: survive kill -9, not power loss")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    lat = results["latency_disk"]
    print(f"ListModels  p50 {lat['list_models']['p50_us']:.0f} us  p99 {lat['list_models']['p99_us']:.0f} us")
    print(f"CaptureData p50 {lat['capture_data']['p50_us']:.0f} us  p99 {lat['capture_data']['p99_us']:.0f} us"
          f"  (4 KB, {'fdatasync' if results['fsync'] else 'no fsync'})  ratio p50 {lat['ratio_p50']:.2f}")
    for where in ("disk", "s3"):
        r = results[where]
        print(f"{where:4}: {r['captures']} captures by {results['clients']} clients: "
              f"{r['acknowledged_per_s']:.0f}/s acknowledged, {r['delivered_per_s']:.0f}/s "
              f"delivered ({', '.join(r['statuses_sampled'])})")


if __name__ == "__main__":
    main()
