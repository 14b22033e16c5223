"""The C client beside the Python client: Predict round trips of the tiny model on one agent.

Starts one agent (`edge-agent serve`, num_threads 1), loads the tiny model ([1,4] float32
a + b), and measures p50/p99 of a Predict round trip with inputs by name and full metadata:
first the Python client (edge_agent.client, timed as `edge-agent bench` times it), then the
C client library (benchmarks/c_predict_bench.c, its own clock), on the same agent.

    make c-bench                     (builds clients/c/build/c_predict_bench, then runs this)
    .venv/bin/python benchmarks/bench_c_client.py PATH/TO/c_predict_bench [--iterations N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

from edge_agent.tools import model_builder
from edge_agent.tools.bench import start_agent, time_calls
from edge_agent.client import AgentClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("c_bench", help="the built c_predict_bench program")
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-agent-c-bench-") as workdir:
        agent, path = start_agent(workdir, 1)
        try:
            tiny = model_builder.tiny_model()
            model_path = str(tiny.write(os.path.join(workdir, "tiny.tflite")))
            with AgentClient(path) as client:
                client.load_model("tiny", model_path)
                inputs = tiny.sample_inputs()
                python = time_calls(lambda: client.predict("tiny", inputs), args.iterations)
            print(f"Python client: tiny Predict round trip, {args.iterations} calls: "
                  f"p50 {python['p50_us']:.1f} us, p99 {python['p99_us']:.1f} us", flush=True)
            subprocess.run([args.c_bench, path, str(args.iterations)], check=True)
        finally:
            agent.terminate()
            agent.wait(10)


if __name__ == "__main__":
    main()
