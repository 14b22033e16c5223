"""Where the time of a Predict goes, for the targets `edge-agent bench` reports missed.

    .venv/bin/python benchmarks/profile_predict.py server  [--calls N]   (cProfile, in process)
    .venv/bin/python benchmarks/profile_predict.py client  [--calls N]   (cProfile, agent apart)
    .venv/bin/python benchmarks/profile_predict.py perf [--model image] [--calls N]   (perf, the agent)
    .venv/bin/python benchmarks/profile_predict.py threads [--calls N]   (1 vs 4 C clients)
    .venv/bin/python benchmarks/profile_predict.py memory                (idle RSS by mapping)
    .venv/bin/python benchmarks/profile_predict.py malloc [--calls N]    (image, malloc thresholds)

- server: the server side of a Predict (Api.serve on a received body, the call the front
  makes) under cProfile, tiny model and a 1x224x224x3 float32 input; the functions by
  their own time per call. cProfile's own cost inflates Python calls several times: read the
  shares, not the absolute figures.
- client: AgentClient.predict (tiny) under cProfile, the agent in another process: what the
  client's side adds, and how much of the call is waiting in recv.
- perf: `perf record` of the agent process while the C client (benchmarks/frame_bench.c)
  replays the tiny (or image) frame: the agent's CPU time by shared object (kernel, interpreter, the
  compiled modules, the runtime) and its top symbols. Needs perf and the right to use it.
- threads: the agent answering one C client, then four on two tiny models: requests/s, the
  agent's CPU seconds per request (/proc/PID/stat), its threads' context switches per request
  (/proc/PID/task/*/status) and how busy its two most busy threads were; the same again with
  the interpreter's switch interval (sys.setswitchinterval) at 0.1 ms and 50 ms, to show how
  much the interpreter lock's hand-offs decide.
- memory: the idle agent's RSS (one small model loaded) by mapping, with the private part of
  each: which libraries and how much heap the 42 MB target is spent on.
- malloc: the image server cost with glibc's default malloc thresholds and with thresholds
  that keep freed memory (GLIBC_TUNABLES), agents alternating: the share of page faults on
  per-call buffers that perf shows, measured as time.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.tools import model_builder  # noqa: E402
from edge_agent.tools.bench import (frame_bench, request_frame, run_c,  # noqa: E402
                                    start_agent, wait_for_socket)
from edge_agent.tools.launch import agent_command  # noqa: E402

MODELS = {"tiny": model_builder.tiny_model, "image": model_builder.image_model}


def _module_path(file: str) -> str:
    """A source file as the docs name it: under edge_agent/ its path in the package (e.g.
    models/engine.py), else its name."""
    path = Path(file)
    if "edge_agent" in path.parts:
        return "/".join(path.parts[len(path.parts) - path.parts[::-1].index("edge_agent"):])
    return path.name


def print_profile(profile: cProfile.Profile, calls: int, title: str, limit: int = 14) -> None:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"--- {title}: {total / calls * 1e6:.1f} us a call under cProfile, "
          f"{stats.total_calls / calls:.0f} function calls a call")  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])  # type: ignore[attr-defined]
    print(f"{'own us/call':>11s} {'share':>6s} {'calls/call':>10s}  function")
    for (file, line, name), (_, ncalls, tottime, _, _) in rows[:limit]:
        where = f"{_module_path(file)}:{line}" if line else file
        print(f"{tottime / calls * 1e6:11.2f} {tottime / total:6.1%} {ncalls / calls:10.1f}  "
              f"{name} ({where})")


def profile_server(calls: int) -> None:
    from edge_agent import agent_pb2 as pb
    from edge_agent import config
    from edge_agent.api import rpcs as api
    from edge_agent.protocol import HEADER
    from edge_agent.api.rpcs import Method
    from edge_agent.api.service import AgentService
    from edge_agent.api.caller import IN_PROCESS

    with tempfile.TemporaryDirectory() as workdir:
        service = AgentService(config.from_mapping({
            "edge_agent_socket_path": os.path.join(workdir, "unused.sock"),
            "edge_agent_state_dir": os.path.join(workdir, "state"),
            "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))
        front = api.Api(service)
        predict = api.BY_METHOD[Method.PREDICT]
        try:
            for name, build in MODELS.items():
                model = build()
                path = model.write(os.path.join(workdir, f"{name}.tflite"))
                service.load_model(pb.LoadModelRequest(name=name, url=str(path)))
                body = request_frame(name, model.sample_inputs())[1][HEADER.size:]
                n = calls if name == "tiny" else max(1, calls // 10)
                for _ in range(200):
                    front.serve(predict, body, IN_PROCESS)
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(n):
                    front.serve(predict, body, IN_PROCESS)
                profile.disable()
                print_profile(profile, n, f"server side of one Predict, {name}, {n} calls")
        finally:
            service.close()


def profile_client(calls: int) -> None:
    from edge_agent.client import AgentClient

    with tempfile.TemporaryDirectory() as workdir:
        agent, path = start_agent(workdir, 1)
        try:
            tiny = model_builder.tiny_model()
            with AgentClient(path) as client:
                client.load_model("tiny", str(tiny.write(os.path.join(workdir, "t.tflite"))))
                inputs = tiny.sample_inputs()
                for _ in range(200):
                    client.predict("tiny", inputs)
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(calls):
                    client.predict("tiny", inputs)
                profile.disable()
            print_profile(profile, calls, f"AgentClient.predict, tiny, {calls} calls")
        finally:
            agent.terminate()
            agent.wait(10)


def replay_setup(workdir: str, model: str = "tiny"):
    program, missing = frame_bench(workdir, None)
    if program is None:
        raise SystemExit(f"no frame_bench: {missing}")
    built = MODELS[model]()
    model_path = str(built.write(os.path.join(workdir, f"{model}.tflite")))
    frames = []
    for name in (model, f"{model}-b"):
        frames.append(os.path.join(workdir, f"{name}.frame"))
        Path(frames[-1]).write_bytes(request_frame(name, built.sample_inputs())[1])
    return program, model_path, frames


def load(path: str, model_path: str, *names: str) -> None:
    from edge_agent.client import AgentClient

    with AgentClient(path) as client:
        for name in names:
            client.load_model(name, model_path)


def profile_perf(calls: int, model: str) -> None:
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed")
    with tempfile.TemporaryDirectory() as workdir:
        program, model_path, frames = replay_setup(workdir, model)
        agent, path = start_agent(workdir, 1)
        try:
            load(path, model_path, model)
            run_c(program, "replay", path, 200, frames[0])  # warm
            data = os.path.join(workdir, "perf.data")
            record = subprocess.Popen(["perf", "record", "-q", "-F", "4999", "-g", "-o", data,
                                       "-p", str(agent.pid)], stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # perf attaches to every thread before the calls start
            result = run_c(program, "replay", path, calls, frames[0])
            record.send_signal(2)
            record.wait(60)
        finally:
            agent.terminate()
            agent.wait(10)
        print(f"--- perf of the agent while one C client replays the {model} frame: "
              f"{calls} calls, p50 {result['p50_us']:.1f} us")
        for sort in ("dso", "sym"):
            report = subprocess.run(
                ["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                 "--percent-limit", "1.5" if sort == "sym" else "0.5", "--sort", sort],
                capture_output=True, text=True)
            print("\n".join(line for line in report.stdout.splitlines()
                            if line.strip() and not line.startswith("#")))


def thread_figures(pid: int) -> dict[str, dict[str, float]]:
    """Each thread of the agent: CPU seconds and context switches (voluntary + not)."""
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{task}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        threads[task] = {"cpu": (int(fields[11]) + int(fields[12])) / tick, "switches": switches}
    return threads


def measure_threads(program: str, path: str, pid: int, calls: int, frames: list[str]) -> dict:
    """Replays `frames` (one client each) while reading the agent's threads every 20 ms: a
    connection's thread ends with its client, so the last reading before that is what it did."""
    before = thread_figures(pid)
    seen = dict(before)
    replay = subprocess.Popen([program, "replay", path, str(calls), *frames],
                              stdout=subprocess.PIPE, text=True)
    while replay.poll() is None:
        seen.update(thread_figures(pid))
        time.sleep(0.02)
    result = json.loads(replay.communicate()[0])
    zero = {"cpu": 0.0, "switches": 0}
    cpu = sorted((seen[t]["cpu"] - before.get(t, zero)["cpu"] for t in seen), reverse=True)
    switches = sum(seen[t]["switches"] - before.get(t, zero)["switches"] for t in seen)
    total_calls = result["calls"]
    return {"clients": len(frames), "requests_per_s": result["requests_per_s"],
            "p50_us": result["p50_us"],
            "agent_cpu_us_per_request": sum(cpu) / total_calls * 1e6,
            "busiest_threads_busy": [round(c / result["seconds"], 2) for c in cpu[:4]],
            "agent_switches_per_request": switches / total_calls}


def profile_threads(calls: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o755)
        program, model_path, frames = replay_setup(workdir)
        print(f"{'switch interval':>15s} {'clients':>7s} {'req/s':>8s} {'p50 us':>7s} "
              f"{'agent CPU us/req':>16s} {'ctx switches/req':>16s}  busiest threads (CPU / wall)")
        for interval in (None, 0.0001, 0.05):
            path = os.path.join(workdir, "agent.sock")
            if interval is None:
                agent, path = start_agent(workdir, 1)
            else:
                # The same agent with another switch interval: set before it starts serving.
                command = agent_command("serve", "--socket", path, "--set",
                                        "edge_agent_allow_unsigned_models=true",
                                        "--set", "edge_agent_num_threads=1")
                command[2] = f"import sys; sys.setswitchinterval({interval})\n" + command[2]
                agent = subprocess.Popen(command, stderr=subprocess.DEVNULL)
                wait_for_socket(path, agent)
            try:
                load(path, model_path, "tiny", "tiny-b")
                run_c(program, "replay", path, 1000, frames[0])  # warm
                for clients in (1, 4):
                    figures = measure_threads(program, path, agent.pid, calls,
                                              (frames * 2)[:clients])
                    label = "default 5 ms" if interval is None else f"{interval * 1e3:g} ms"
                    print(f"{label:>15s} {clients:7d} {figures['requests_per_s']:8.0f} "
                          f"{figures['p50_us']:7.1f} {figures['agent_cpu_us_per_request']:16.1f} "
                          f"{figures['agent_switches_per_request']:16.2f}  "
                          f"{figures['busiest_threads_busy']}")
            finally:
                agent.terminate()
                agent.wait(10)
                if os.path.exists(path):
                    os.unlink(path)


def profile_memory(_: int) -> None:
    """The idle agent's RSS by mapping (smaps), largest first, with its private part."""
    from edge_agent.tools.bench import memory_kib

    with tempfile.TemporaryDirectory() as workdir:
        agent, path = start_agent(workdir, 1)
        try:
            tiny = model_builder.tiny_model()
            load(path, str(tiny.write(os.path.join(workdir, "t.tflite"))), "tiny")
            time.sleep(1.0)
            totals = memory_kib(agent.pid)
            by_file: dict[str, list[int]] = {}
            current = "[anon]"
            with open(f"/proc/{agent.pid}/smaps") as f:
                for line in f:
                    fields = line.split()
                    if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header
                        current = Path(fields[5]).name if len(fields) > 5 else "[anon]"
                    elif fields[0] in ("Rss:", "Private_Clean:", "Private_Dirty:"):
                        sums = by_file.setdefault(current, [0, 0])
                        sums[0 if fields[0] == "Rss:" else 1] += int(fields[1])
        finally:
            agent.terminate()
            agent.wait(10)
    print(f"--- idle agent, tiny model loaded: RSS {totals['VmRSS'] / 1024:.1f} MB, "
          f"PSS {totals['PSS'] / 1024:.1f} MB, USS {totals['USS'] / 1024:.1f} MB")
    print(f"{'RSS MB':>7s} {'private MB':>10s}  mapping")
    for name, (rss, private) in sorted(by_file.items(), key=lambda item: -item[1][0])[:14]:
        print(f"{rss / 1024:7.1f} {private / 1024:10.1f}  {name}")


# glibc keeps freed memory up to these sizes instead of handing it back to the kernel at once.
KEEP_FREED_MEMORY = "glibc.malloc.trim_threshold=67108864:glibc.malloc.mmap_threshold=33554432"


def profile_malloc(calls: int) -> None:
    """The image server cost (one C client replaying the 1x224x224x3 frame) in agents started
    alternately with glibc's default malloc thresholds and with KEEP_FREED_MEMORY: how much
    of a large Predict is page faults on memory allocated afresh for each call."""
    with tempfile.TemporaryDirectory() as workdir:
        program, model_path, frames = replay_setup(workdir, "image")
        results: dict[str, list[float]] = {"default": [], "tunables": []}
        saved = os.environ.get("GLIBC_TUNABLES")
        try:
            for _ in range(3):
                for label in results:
                    if label == "tunables":
                        os.environ["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY
                    else:
                        os.environ.pop("GLIBC_TUNABLES", None)
                    agent, path = start_agent(workdir, 1)  # inherits the environment
                    try:
                        load(path, model_path, "image")
                        run_c(program, "replay", path, 100, frames[0])  # warm
                        results[label].append(run_c(program, "replay", path, calls,
                                                    frames[0])["p50_us"])
                    finally:
                        agent.terminate()
                        agent.wait(10)
                        with contextlib.suppress(FileNotFoundError):  # the agent removes it
                            os.unlink(path)
        finally:
            os.environ.pop("GLIBC_TUNABLES", None)
            if saved is not None:
                os.environ["GLIBC_TUNABLES"] = saved
    print(f"--- image server cost, p50 of {calls} calls, 3 agents each, load average "
          f"{os.getloadavg()[0]:.2f}")
    for label, p50s in results.items():
        cells = " / ".join(f"{p50:.1f}" for p50 in p50s)
        print(f"{label:9s} {cells} us (median {sorted(p50s)[1]:.1f})")
    print(f"tunables: GLIBC_TUNABLES={KEEP_FREED_MEMORY}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("server", "client", "perf", "threads", "memory",
                                         "malloc"))
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--model", choices=tuple(MODELS), default="tiny", help="for perf")
    args = parser.parse_args()
    if args.what == "perf":
        profile_perf(args.calls, args.model)
        return
    {"server": profile_server, "client": profile_client,
     "threads": profile_threads, "memory": profile_memory,
     "malloc": profile_malloc}[args.what](args.calls)


if __name__ == "__main__":
    main()
