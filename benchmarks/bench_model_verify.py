"""What the flatbuffer verifier (edge_agent.models.verifier) adds to a load, beside reading the
file.

    .venv/bin/python benchmarks/bench_model_verify.py [--runs 21]

For the demo's and the bench's models, the slow model (33.6 MB of weights: the size of a
real one) and a graph of 2000 ADD operators (many small tables: the walk's worst case among
real shapes), times with the files in the page cache:
  - read: the file read into memory the way loading reads it (modelfile.read_at_most);
  - compiled: the compiled verifier (cext/_flatverify.pyx), what the agent runs;
  - python: its pure-Python twin (a checkout without a build, EDGE_AGENT_PUREPYTHON=1).
Prints the medians and the ratio compiled / read.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_agent.models import _flatverify_py
from edge_agent.models import verifier as model_verifier
from edge_agent.models import tflite_schema
from edge_agent.models.model_files import read_at_most
from edge_agent.tools import model_builder


def median_seconds(action, runs: int) -> float:
    action()  # warm: page cache, imports
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def many_operators(count: int = 2000) -> bytes:
    g = model_builder._Graph()
    x = g.input("x", np.float32, (1, 4))
    for i in range(count):
        y = g.output(f"y{i}", np.float32, (1, 4)) if i == count - 1 else \
            g.tensor(f"t{i}", np.float32, (1, 4))
        g.op(model_builder.BuiltinOperator.ADD, [x, x], [y])
        x = y
    return g.build("chain", "chain", lambda i: {}).content


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-model-verify-"))
    compiled = model_verifier.tflite_verifier()
    python = _flatverify_py.Verifier(*model_verifier.schema_arguments(
        tflite_schema.TABLES, tflite_schema.UNIONS))
    assert type(compiled).__module__ == "edge_agent.models._flatverify", "no compiled build"
    models = {"tiny": model_builder.tiny_model().content,
              "demo": model_builder.demo_model().content,
              "image": model_builder.image_model().content,
              "slow": model_builder.slow_model().content,
              "2000 ops": many_operators()}
    print(f"{'model':>9} {'size':>10} {'read':>10} {'compiled':>10} {'python':>10} "
          f"{'compiled/read':>13}")
    for name, content in models.items():
        path = work / "model.tflite"
        path.write_bytes(content)

        def read() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                return read_at_most(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)

        read_s = median_seconds(read, args.runs)
        compiled_s = median_seconds(lambda: compiled.verify(content), args.runs)
        python_s = median_seconds(lambda: python.verify(content), max(3, args.runs // 4))
        print(f"{name:>9} {len(content) / 1e6:>8.3f}MB {read_s * 1e6:>8.1f}us "
              f"{compiled_s * 1e6:>8.1f}us {python_s * 1e6:>8.1f}us "
              f"{compiled_s / read_s:>13.3f}")
        path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
