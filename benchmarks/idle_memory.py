"""Where the idle agent's memory goes: the layers under it, and its mappings.

    python benchmarks/idle_memory.py             # both parts, as JSON
    python benchmarks/idle_memory.py --top 15    # more mappings

`edge-agent bench` prints the idle agent's RSS, PSS and USS (and its model-check helper's);
this says what they are made of, on the machine it runs on:

- layers: VmRSS of a fresh interpreter (this one's, no site customisation beyond the venv's)
  after each step a serving agent cannot do without: Python itself, `import numpy` (the TFLite
  runtime's Python binding needs it), protobuf with the agent's messages (edge_agent.agent_pb2),
  the runtime's interpreter module (edge_agent.platform.runtime's choice), and one interpreter
  of the tiny model allocated and invoked. The last figure is a floor for any agent built on
  the runtime's Python binding, before a line of the agent's own code;
- agent: `edge-agent serve` (num_threads 1) idle with the tiny model loaded, its VmRSS, PSS and
  USS and its largest mappings by RSS (with their PSS and private part), and the same for its
  model-check helper (the agent's one child process).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# Run in a fresh interpreter: prints one JSON list of [step, VmRSS KiB] pairs. argv[1]: the
# tiny model's file (built here beforehand, so the model builder's imports are not counted).
_LAYERS = r"""
import json, sys

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

steps = [("python", rss())]
import numpy  # noqa: E401
steps.append(("+ numpy", rss()))
import google.protobuf
from edge_agent import agent_pb2
steps.append(("+ protobuf, edge_agent.agent_pb2", rss()))
from edge_agent.platform.runtime import interpreter_module
module = interpreter_module()
steps.append(("+ the runtime's interpreter module", rss()))
with open(sys.argv[1], "rb") as f:
    interpreter = module.Interpreter(model_content=f.read(), num_threads=1)
interpreter.allocate_tensors()
interpreter.invoke()
steps.append(("+ one tiny model's interpreter, invoked", rss()))
print(json.dumps(steps))
"""
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def mappings(pid: int, top: int) -> list[dict]:
    """The `top` mappings of /proc/PID/smaps by RSS, those of one file (or [heap], [anon]...)
    summed: KiB of RSS, PSS and private (USS)."""
    sums: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            match = _MAPPING.match(line)
            if match:
                name = match.group(1) or "[anonymous]"
                continue
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                sums[name][key.lower()] += int(value.split()[0])
            elif key.startswith("Private_"):
                sums[name]["private"] += int(value.split()[0])
    ranked = sorted(sums.items(), key=lambda item: -item[1]["rss"])[:top]
    return [{"mapping": name, **{k: c[k] for k in ("rss", "pss", "private")}}
            for name, c in ranked]


def agent_part(workdir: str, model_path: str, top: int) -> dict:
    from edge_agent.client import AgentClient
    from edge_agent.tools.bench import children, memory_kib, start_agent

    agent, path = start_agent(workdir, 1)
    try:
        with AgentClient(path) as client:
            client.load_model("tiny", model_path)
            time.sleep(1.0)  # start-up transients settle, as in `edge-agent bench`
            helpers = children(agent.pid)
            return {"agent": {"kib": memory_kib(agent.pid), "mappings": mappings(agent.pid, top)},
                    "helpers": [{"kib": memory_kib(pid), "mappings": mappings(pid, top)}
                                for pid in helpers]}
    finally:
        agent.terminate()
        agent.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="mappings listed per process")
    args = parser.parse_args()
    from edge_agent.tools import model_builder

    with tempfile.TemporaryDirectory(prefix="edge-agent-idle-") as workdir:
        os.chmod(workdir, 0o755)
        model_path = str(model_builder.tiny_model().write(os.path.join(workdir, "tiny.tflite")))
        layers = subprocess.run([sys.executable, "-c", _LAYERS, model_path], check=True,
                                capture_output=True, text=True, cwd=workdir).stdout
        report = {"layers_kib": json.loads(layers.splitlines()[-1]),
                  **agent_part(workdir, model_path, args.top)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
