"""What the agent costs a board: installed size and idle memory, for the Python it runs under.

    python benchmarks/footprint.py            # in any environment where edge-agent is installed
    python benchmarks/footprint.py --extras litert   # counting an extra's dependencies too

cross/footprint.sh runs it inside the emulated board's venv and next to the host's wheel.
Prints one JSON object:
  - runtime: the TFLite runtime the agent uses here (edge_agent.platform.runtime's choice);
  - installed_kib: the files edge-agent and its run-time dependencies (the closure of its
    install_requires, markers evaluated here, extras left out unless named with --extras) put
    in site-packages, from their RECORDs — test tools installed beside them do not count;
  - rss_kib: VmRSS of `edge-agent serve` idle after start, then idle with the small `add`
    test model loaded (num_threads 1; null where no TFLite runtime exists for the machine:
    armv7). Under qemu-user this is the EMULATOR's RSS (guest
    memory plus translated code), an upper bound rather than what a board would show;
  - load_ms: median wall time of LoadModel (read, checks, interpreter, tensors allocated) of
    the 224x224 image model and the 1024x1024 fully connected model through the agent, over
    LOADS loads each (each unloaded before the next).
"""
from __future__ import annotations

import argparse
import json
import statistics
import os
import platform
import signal
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from edge_agent.platform import runtime
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError
from edge_agent.tools.launch import agent_command
from edge_agent.tools import model_builder


LOADS = 5


def dependency_closure(name: str, extras: tuple[str, ...] = ()) -> list[metadata.Distribution]:
    """The installed distributions `name` (with `extras` of its own) needs at run time, itself
    first."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [name]
    extras_here = ("", *extras)
    while pending:
        try:
            dist = metadata.distribution(pending.pop())
        except metadata.PackageNotFoundError:  # required but removed by hand: not counted
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or any(
                    requirement.marker.evaluate({"extra": extra})
                    for extra in (extras_here if key == name else ("",))):
                pending.append(requirement.name)
    return list(seen.values())


def installed_kib(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total // 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def settled_rss(pid: int, seconds: float = 2.0) -> int:
    """RSS once the agent is idle: read after a pause, so start-up transients have passed."""
    time.sleep(seconds)
    return rss_kib(pid)


def wait_serving(socket_path: str, agent: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.returncode}")
        try:
            with AgentClient(socket_path) as client:
                client.list_models()
            return
        except AgentError:  # UNAVAILABLE until the socket is up
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def has_runtime() -> bool:
    try:
        runtime.interpreter_module()
        return True
    except ImportError:
        return False


def agent_rss(workdir: Path) -> dict[str, int | None]:
    socket_path = str(workdir / "agent.sock")
    config = workdir / "agent.json"
    config.write_text(json.dumps({
        "edge_agent_socket_path": socket_path, "edge_agent_state_dir": str(workdir / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))
    model = model_builder.add_model().write(workdir / "add.tflite")
    agent = subprocess.Popen(agent_command("serve", "--config", str(config)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(socket_path, agent)
        idle = settled_rss(agent.pid)
        loaded = None  # no TFLite runtime for this machine (armv7): nothing can load
        if has_runtime():
            with AgentClient(socket_path) as client:
                client.load_model("add", str(model))
            loaded = settled_rss(agent.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    return {"idle": idle, "idle_with_add_model": loaded}


def load_times_ms(workdir: Path) -> dict[str, float]:
    """Median LoadModel wall time per model, in a fresh agent (num_threads 1)."""
    socket_path = str(workdir / "agent.sock")
    models = {"image-1x224x224x3": model_builder.image_model(),
              "fc-1x1024": model_builder.fully_connected_model(1024, 1024)}
    paths = {name: str(built.write(workdir / f"{name}.tflite")) for name, built in models.items()}
    agent = subprocess.Popen(agent_command("serve", "--socket", socket_path,
                                           "--set", "edge_agent_allow_unsigned_models=true",
                                           "--set", "edge_agent_num_threads=1",
                                           "--set", f"edge_agent_state_dir={workdir / 'state'}"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(socket_path, agent)
        times = {}
        with AgentClient(socket_path) as client:
            for name, path in paths.items():
                samples = []
                for _ in range(LOADS):
                    start = time.perf_counter()
                    client.load_model(name, path)
                    samples.append((time.perf_counter() - start) * 1e3)
                    client.unload_model(name)
                times[name] = round(statistics.median(samples), 1)
        return times
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="*", default=[],
                        help="extras of edge-agent whose dependencies count (e.g. litert)")
    args = parser.parse_args()
    closure = dependency_closure("edge-agent", tuple(args.extras))
    with tempfile.TemporaryDirectory() as tmp:
        rss = agent_rss(Path(tmp))
    loads = None
    if has_runtime():
        with tempfile.TemporaryDirectory() as tmp:
            loads = load_times_ms(Path(tmp))
    print(json.dumps({
        "machine": platform.machine(),
        "python": platform.python_version(),
        "runtime": runtime.runtime_name() if has_runtime() else None,
        "emulated": bool(os.environ.get("EDGE_AGENT_UNDER_QEMU")),
        "installed_kib": {
            "edge-agent": installed_kib(closure[0]),
            "with_dependencies": sum(installed_kib(d) for d in closure),
            "by_package": {d.metadata["Name"]: installed_kib(d) for d in closure},
        },
        "rss_kib": rss,
        "load_ms": loads,
    }, indent=2))


if __name__ == "__main__":
    main()
