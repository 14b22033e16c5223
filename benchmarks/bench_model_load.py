"""What proving a model in a child process adds to LoadModel.

    .venv/bin/python benchmarks/bench_model_load.py [--runs 9]

For two models (the 352-byte add model and the 33.6 MB slow model with 32 MiB of weights)
times, with the files in the page cache:
  - load: AgentService.load_model + unload_model, what a LoadModel costs now (read, the check
    in a child of the pre-forked helper, the agent's own interpreter), as `edge-agent serve`
    runs it (the service is made first, so it has its helper);
  - helper: Prover.prove through the helper alone (a fork, the model built, allocated and
    invoked once, the report);
  - fresh: Prover.prove in a fresh `python -m edge_agent.models.model_check_child` process (where there is
    no helper: its imports, then the same);
  - in-process: delegates.interpreter_with_delegate alone, what loading cost before the check.
Prints the medians and the memory the child measured.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edge_agent import agent_pb2 as pb
from edge_agent import config as config_module
from edge_agent.platform import delegates
from edge_agent.models.engine import create_interpreter
from edge_agent.models.model_check import Prover
from edge_agent.api.service import AgentService
from edge_agent.tools import model_builder


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
    helper, fresh = service.prover, Prover(use_helper=False)
    assert helper.has_helper, "the service was made with threads running: no helper"
    print(f"{'model':>6} {'size':>9} {'load':>9} {'helper':>9} {'fresh':>9} {'in-process':>11} "
          f"{'measured':>9}")
    for name, built in (("add", model_builder.add_model()), ("slow", model_builder.slow_model())):
        path = built.write(work / f"{name}.tflite")
        content = built.content

        def load() -> None:
            service.load_model(pb.LoadModelRequest(name=name, url=str(path)))
            service.unload_model(pb.UnLoadModelRequest(name=name))

        load_s = median_seconds(load, args.runs)
        helper_s = median_seconds(lambda: helper.prove(content, config, name, 1 << 30),
                                  args.runs)
        fresh_s = median_seconds(lambda: fresh.prove(content, config, name, 1 << 30),
                                 args.runs)
        direct_s = median_seconds(
            lambda: delegates.interpreter_with_delegate(content, config, name, create_interpreter),
            args.runs)
        measured = helper.prove(content, config, name, 1 << 30).peak_bytes
        print(f"{name:>6} {len(content) / 1e6:>7.2f}MB {load_s * 1e3:>7.1f}ms "
              f"{helper_s * 1e3:>7.1f}ms {fresh_s * 1e3:>7.1f}ms {direct_s * 1e3:>9.1f}ms "
              f"{measured / 2**20:>7.1f}MiB")
    service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
