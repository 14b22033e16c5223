"""What proving a model in a child process adds to LoadModel.

    .venv/bin/python benchmarks/bench_model_load.py [--runs 9]

For two models (the 352-byte add model and the 33.6 MB slow model with 32 MiB of weights)
times, with the files in the page cache:
  - load: AgentService.load_model + unload_model in process, what a LoadModel costs now
    (read, the check in a child, the agent's own interpreter);
  - probe: model_probe.prove alone (spawn `python -m edge_agent.model_probe`, its imports,
    the model built, allocated and invoked once, the report);
  - in-process: delegates.create_interpreter alone, what loading cost before the check.
Prints the medians, the probe's share of a load, and the memory the child measured.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edge_agent import agent_pb2 as pb
from edge_agent import config as config_module
from edge_agent import delegates, model_builder, model_probe
from edge_agent.engine import create_interpreter
from edge_agent.service import AgentService


def median_seconds(action, runs: int) -> float:
    action()  # warm: page cache, imports
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-model-load-"))
    config = config_module.from_mapping({
        "edge_agent_state_dir": str(work / "state"), "edge_agent_allow_unsigned_models": True,
        "edge_agent_num_threads": 1})
    service = AgentService(config)
    print(f"{'model':>6} {'size':>9} {'load':>9} {'probe':>9} {'in-process':>11} "
          f"{'probe/load':>10} {'measured':>9}")
    for name, built in (("add", model_builder.add_model()), ("slow", model_builder.slow_model())):
        path = built.write(work / f"{name}.tflite")
        content = built.content

        def load() -> None:
            service.load_model(pb.LoadModelRequest(name=name, url=str(path)))
            service.unload_model(pb.UnLoadModelRequest(name=name))

        load_s = median_seconds(load, args.runs)
        probe_s = median_seconds(lambda: model_probe.prove(content, config, name, 1 << 30),
                                 args.runs)
        direct_s = median_seconds(
            lambda: delegates.create_interpreter(content, config, name, create_interpreter),
            args.runs)
        measured = model_probe.prove(content, config, name, 1 << 30).peak_bytes
        print(f"{name:>6} {len(content) / 1e6:>7.2f}MB {load_s * 1e3:>7.0f}ms "
              f"{probe_s * 1e3:>7.0f}ms {direct_s * 1e3:>9.1f}ms {probe_s / load_s:>10.2f} "
              f"{measured / 2**20:>7.1f}MiB")
    service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
