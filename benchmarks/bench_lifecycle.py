"""The model lifecycle's figures: swaps, Predict during a swap, memory, start-up.

    .venv/bin/python benchmarks/bench_lifecycle.py [--swaps 7] [--width 512] [--layers 4]

Real `edge-agent serve` processes with a model repository of signed packages (the model:
model_builder.slow_model, `layers` fully-connected layers of `width` x `width` float32
weights; each version another seed, so each computes other outputs and is proven anew).
Prints, medians over `swaps` swaps:
  - arrival to first answer: from the rename (`mv`) of a complete package into the repository
    to the first Predict answered by the new version (the repository watched with inotify),
    against LoadModel of the same package measured alone on a fresh agent (verify + model
    check + load): target <= 1.1x + 100 ms;
  - Predict p50 and p99 during a swap (from the rename to the first new answer) against
    steady state (the same client, the same model, no swap);
  - peak resident memory of the agent during a swap (VmHWM, reset before each swap through
    /proc/PID/clear_refs) against the agent with no model plus old + new: target <= 1.1x;
  - start-up with 10 models in the repository: the first start (each copied, verified,
    proven, loaded) and a restart (its own copies, proofs remembered), against a start with
    an empty repository (the floor: Python, imports, the check helper).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_agent.client import AgentClient
from edge_agent.errors import AgentError
from edge_agent.packaging.packages import Target, build_package, ensure_demo_keys
from edge_agent.tools import model_builder


class Agent:
    def __init__(self, workdir: Path, settings: dict):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(workdir / "agent.sock")
        self.config = workdir / "agent.json"
        self.config.write_text(json.dumps({
            "edge_agent_socket_path": self.socket, "edge_agent_state_dir": str(workdir / "state"),
            "sagemaker_edge_core_capture_data_disk_path": str(workdir / "captures"),
            "edge_agent_num_threads": 1, **settings}))
        self.process: subprocess.Popen | None = None

    def start(self, until=lambda states: True) -> float:
        """Seconds from the spawn to the first ListModels for which until(states) holds."""
        log = open(self.workdir / "agent.log", "ab")
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "edge_agent", "serve",
                                         "--config", str(self.config)], stdout=log, stderr=log)
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the agent exited: see {self.workdir / 'agent.log'}")
            try:
                with AgentClient(self.socket) as client:
                    if until(client.model_states()):
                        return time.perf_counter() - started
            except AgentError:
                pass
            time.sleep(0.005)

    def rss(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    def reset_peak(self) -> None:
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=7)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--startup-models", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    key, trust = ensure_demo_keys(str(work / "keys"))
    repository = work / "repository"
    (repository / "m").mkdir(parents=True)
    for path in (repository, repository / "m"):
        os.chmod(path, 0o755)
    outgoing = work / "outgoing"
    outgoing.mkdir()
    settings = {"edge_agent_model_repository": str(repository),
                "sagemaker_edge_core_root_certs_path": trust,
                "edge_agent_model_repository_poll_seconds": 3600.0}

    def package(name: str, version: int, seed: int) -> tuple[Path, model_builder.BuiltModel]:
        built = model_builder.slow_model(width=args.width, layers=args.layers, seed=seed)
        out = outgoing / f"{name}-{version}-{seed}.tar.gz"
        build_package(built.content, name, f"{version}.0", Target.host(), key, str(out))
        return out, built

    x = np.random.default_rng(0).standard_normal((1, args.width)).astype(np.float32)

    # --- LoadModel of the same packages alone, on a fresh agent each time ---------------
    alone: list[float] = []
    swap_packages = [package("m", v, seed=1000 + v) for v in range(1, args.swaps + 2)]
    for v in range(2, args.swaps + 2):
        fresh = Agent(work / f"alone-{v}", {"sagemaker_edge_core_root_certs_path": trust})
        fresh.start()
        try:
            with AgentClient(fresh.socket) as client:
                started = time.perf_counter()
                client.load_model("m", str(swap_packages[v - 1][0]))
                alone.append(time.perf_counter() - started)
        finally:
            fresh.stop()

    # --- swaps under a predicting client ---------------------------------------------------
    agent = Agent(work / "agent", settings)
    agent.start()
    with AgentClient(agent.socket) as client:
        base_rss = agent.rss()
        first, first_built = swap_packages[0]
        os.rename(first, repository / "m" / first.name)
        client.rescan()
        time.sleep(0.5)
        one_model_rss = agent.rss()
        arrival: list[float] = []
        steady: list[float] = []
        during: list[float] = []
        peaks: list[int] = []
        for v in range(2, args.swaps + 2):
            path, built = swap_packages[v - 1]
            expected = built.reference({"x": x})["y"]
            for _ in range(200):
                started = time.perf_counter()
                client.predict("m", {"x": x})
                steady.append(time.perf_counter() - started)
            agent.reset_peak()
            moved = time.perf_counter()
            os.rename(path, repository / "m" / path.name)
            while True:
                started = time.perf_counter()
                y = client.predict("m", {"x": x})["y"]
                now = time.perf_counter()
                during.append(now - started)
                if np.allclose(y, expected, rtol=1e-4, atol=1e-4):
                    arrival.append(now - moved)
                    break
            time.sleep(0.3)  # the old version retired
            peaks.append(agent.rss("VmHWM"))
    agent.stop()
    model_bytes = one_model_rss - base_rss

    # --- start-up with many models ----------------------------------------------------------
    startup_repository = work / "startup-repository"
    startup_repository.mkdir()
    os.chmod(startup_repository, 0o755)
    for i in range(args.startup_models):
        folder = startup_repository / f"m{i}"
        folder.mkdir()
        os.chmod(folder, 0o755)
        path, _ = package(f"m{i}", 1, seed=2000 + i)
        os.rename(path, folder / path.name)
    empty_repository = work / "empty-repository"
    empty_repository.mkdir()
    os.chmod(empty_repository, 0o755)
    floor = Agent(work / "startup-empty", {**settings,
                                           "edge_agent_model_repository": str(empty_repository)})
    floor_s = floor.start()
    floor.stop()
    many = Agent(work / "startup", {**settings,
                                    "edge_agent_model_repository": str(startup_repository)})

    def all_serving(states) -> bool:
        return sum(s.state == "serving" for s in states) == args.startup_models

    first_s = many.start(all_serving)
    many.stop()
    restart_s = many.start(all_serving)
    many.stop()
    shutil.rmtree(work, ignore_errors=True)

    alone_s, arrival_s = statistics.median(alone), statistics.median(arrival)
    print(f"model: {args.layers} x {args.width}x{args.width} float32 weights "
          f"({len(first_built.content) / 2**20:.1f} MiB), {args.swaps} swaps")
    print(f"arrival (mv) to first answer   {arrival_s * 1e3:8.1f} ms  (min {min(arrival) * 1e3:.1f}, "
          f"max {max(arrival) * 1e3:.1f})")
    print(f"LoadModel alone (fresh agent)  {alone_s * 1e3:8.1f} ms  -> target "
          f"{(1.1 * alone_s + 0.1) * 1e3:.1f} ms: ratio {arrival_s / alone_s:.2f}x, "
          f"{'met' if arrival_s <= 1.1 * alone_s + 0.1 else 'MISSED'}")
    print(f"Predict steady                 p50 {statistics.median(steady) * 1e3:6.2f} ms  "
          f"p99 {percentile(steady, 0.99) * 1e3:6.2f} ms  ({len(steady)} calls)")
    print(f"Predict during a swap          p50 {statistics.median(during) * 1e3:6.2f} ms  "
          f"p99 {percentile(during, 0.99) * 1e3:6.2f} ms  ({len(during)} calls)")
    peak_above = statistics.median(peaks) - base_rss
    print(f"agent RSS: no model {base_rss / 2**20:.1f} MiB, one version +{model_bytes / 2**20:.1f}"
          f" MiB; peak during a swap +{peak_above / 2**20:.1f} MiB against old + new "
          f"+{2 * model_bytes / 2**20:.1f} MiB: ratio {peak_above / (2 * model_bytes):.2f}x, "
          f"{'met' if peak_above <= 1.1 * 2 * model_bytes else 'MISSED'}")
    print(f"start-up, empty repository     {floor_s * 1e3:8.1f} ms")
    print(f"start-up, {args.startup_models} models, first     {first_s * 1e3:8.1f} ms")
    print(f"start-up, {args.startup_models} models, restart   {restart_s * 1e3:8.1f} ms  "
          f"(proofs remembered, own copies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
