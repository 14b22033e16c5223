"""Soak: a real agent under steady churn for a bounded time; prints its RSS, open descriptors,
mapped shared-memory segments and threads over time, so a leak shows as a slope.

Four clients run at once until the time is up:
- calls:       Predict with byte_data on a small model, back to back;
- shm churn:   a new segment per call, alternately SysV (by id), POSIX (by name), POSIX passed
               as a descriptor and memfd (always a descriptor), input and output in it, then
               freed;
- load churn:  load a model (alternately by path and as a passed descriptor), predict once,
               unload;
- connections: connect, ListModels, disconnect.

    .venv/bin/python benchmarks/soak.py [--seconds 300] [--every 15] [--workers calls,shm,...]
                                        [--json]

docs/BENCHMARKS.md ("Soak") records a run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

from edge_agent.tools import model_builder
from edge_agent.tools.bench import rss_mb, start_agent
from edge_agent.client import AgentClient
from edge_agent.shm_client import MemfdSegment, PosixSegment, SysVSegment

F32 = np.float32


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mapped_segments(pid: int) -> int:
    """Distinct shared-memory objects the process maps: SysV, /dev/shm and memfd."""
    with open(f"/proc/{pid}/maps") as f:
        return len({line.split(None, 5)[-1] for line in f
                    if "SYSV" in line or "/dev/shm/" in line or "/memfd:" in line})


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Counters:
    def __init__(self):
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


def calls(path: str, stop: threading.Event, counters: Counters) -> None:
    a = np.ones((1, 4), F32)
    with AgentClient(path) as client:
        while not stop.is_set():
            client.predict("add", [a, a])
            counters.add("calls")


def shm_churn(path: str, stop: threading.Event, counters: Counters) -> None:
    a = np.arange(4, dtype=F32).reshape(1, 4)
    kinds = (("sysv", SysVSegment.create, False), ("posix", PosixSegment.create, False),
             ("posix-fd", PosixSegment.create, True), ("memfd", MemfdSegment.create, True))
    with AgentClient(path) as client:
        i = 0
        while not stop.is_set():
            kind, create, pass_fd = kinds[i % len(kinds)]
            i += 1
            with create(4096) as segment:
                x, out = segment.write(a), segment.slot(F32, (1, 4), offset=64)
                result = client.predict("add", [x, x], outputs=[out], pass_fd=pass_fd)
                assert np.array_equal(segment.read(result["sum"]), a + a)
            counters.add(f"shm:{kind}")


def load_churn(path: str, model_path: str, stop: threading.Event, counters: Counters) -> None:
    a = np.ones((1, 4), F32)
    with AgentClient(path) as client:
        i = 0
        while not stop.is_set():
            if i % 2:
                with open(model_path, "rb") as f:
                    client.load_model_from_file("churn", f)
            else:
                client.load_model("churn", model_path)
            client.predict("churn", [a, a])
            client.unload_model("churn")
            counters.add("loads")
            i += 1


def connections(path: str, stop: threading.Event, counters: Counters) -> None:
    while not stop.is_set():
        with AgentClient(path) as client:
            client.list_models()
        counters.add("connections")


def sample(pid: int, start: float, counters: Counters) -> dict:
    return {"t_s": round(time.monotonic() - start, 1), "rss_mb": round(rss_mb(pid), 2),
            "fds": open_fds(pid), "segments": mapped_segments(pid), "threads": threads(pid),
            **counters.snapshot()}


WORKERS = ("calls", "shm", "loads", "connections")


def run(seconds: float, every: float, emit, only: tuple[str, ...] = WORKERS) -> dict:
    with tempfile.TemporaryDirectory(prefix="edge-agent-soak-") as workdir:
        agent, path = start_agent(workdir, 1)
        try:
            model_path = str(model_builder.add_model().write(os.path.join(workdir, "add.tflite")))
            with AgentClient(path) as client:
                client.load_model("add", model_path)
            stop, counters, failures = threading.Event(), Counters(), []

            def guarded(work, *args):
                try:
                    work(*args)
                except BaseException as e:  # reported, and the soak stops
                    failures.append(repr(e))
                    stop.set()
            jobs = {"calls": (calls, path, stop, counters),
                    "shm": (shm_churn, path, stop, counters),
                    "loads": (load_churn, path, model_path, stop, counters),
                    "connections": (connections, path, stop, counters)}
            workers = [threading.Thread(target=guarded, args=jobs[name]) for name in only]
            start = time.monotonic()
            samples = [sample(agent.pid, start, counters)]
            emit(samples[-1])
            for w in workers:
                w.start()
            deadline = start + seconds
            while not stop.wait(min(every, max(0.0, deadline - time.monotonic()))):
                samples.append(sample(agent.pid, start, counters))
                emit(samples[-1])
                if time.monotonic() >= deadline:
                    break
            stop.set()
            for w in workers:
                w.join()
            time.sleep(1.0)  # idle attachments and connection threads wind down
            samples.append(sample(agent.pid, start, counters))
            emit(samples[-1])
            alive = agent.poll() is None
        finally:
            agent.terminate()
            agent.wait()
    steady = samples[1] if len(samples) > 2 else samples[0]
    return {"seconds": seconds, "samples": samples, "failures": failures, "agent_alive": alive,
            "rss_growth_after_first_interval_mb": round(samples[-1]["rss_mb"] - steady["rss_mb"], 2),
            "fds_start_end": (samples[0]["fds"], samples[-1]["fds"]),
            "segments_start_end": (samples[0]["segments"], samples[-1]["segments"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--workers", default=",".join(WORKERS),
                        help=f"which churn to run (default: all of {', '.join(WORKERS)})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    args = parser.parse_args()
    only = tuple(args.workers.split(","))
    if not set(only) <= set(WORKERS):
        parser.error(f"--workers: choose from {', '.join(WORKERS)}")
    columns = ("t_s", "rss_mb", "fds", "segments", "threads", "calls", "shm:sysv", "shm:posix",
               "shm:posix-fd", "shm:memfd", "loads", "connections")
    print(" ".join(f"{c:>12}" for c in columns))

    def emit(row):
        print(" ".join(f"{row.get(c, 0):>12}" for c in columns), flush=True)
    result = run(args.seconds, args.every, emit, only)
    print(f"RSS growth after the first interval: {result['rss_growth_after_first_interval_mb']} MB; "
          f"fds {result['fds_start_end']}; segments {result['segments_start_end']}; "
          f"agent alive: {result['agent_alive']}; failures: {result['failures'] or 'none'}")
    if args.json:
        print(json.dumps(result))
    sys.exit(0 if result["agent_alive"] and not result["failures"] else 1)


if __name__ == "__main__":
    main()
