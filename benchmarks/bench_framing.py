"""The two frame splitters side by side: the compiled edge_agent.protocol._framing (what the agent
runs) and its pure-Python twin edge_agent.protocol._framing_py (a checkout without a build,
EDGE_AGENT_PUREPYTHON=1, and the tests' reference). Splits a pipelined burst of Predict-sized
request frames fed in one piece.

    .venv/bin/python benchmarks/bench_framing.py [--frames 1000] [--body 64]

p50 over 15 rounds, in µs per frame, and the ratio; docs/BENCHMARKS.md records a run.
"""
from __future__ import annotations

import argparse
import statistics
import time

from edge_agent.protocol import _framing
from edge_agent.protocol import _framing_py
from edge_agent.protocol import encode_request
from edge_agent.api.rpcs import Method

SPLITTERS = {"compiled": _framing.FrameSplitter, "python": _framing_py.FrameSplitter}


def split_all(splitter_type, stream: bytes, frames: int) -> None:
    splitter = splitter_type(1 << 20)
    splitter.get_buffer(len(stream))[:] = stream  # as a receive into the splitter's buffer
    splitter.buffer_updated(len(stream))
    count = 0
    while splitter.next_view() is not None:
        count += 1
    assert count == frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--body", type=int, default=64)
    args = parser.parse_args()
    stream = b"".join(encode_request(Method.PREDICT, i, bytes(args.body))
                      for i in range(args.frames))
    rounds: dict = {name: [] for name in SPLITTERS}
    for _ in range(15):  # interleaved, so load on the machine falls on both alike
        for name, splitter_type in SPLITTERS.items():
            start = time.perf_counter()
            split_all(splitter_type, stream, args.frames)
            rounds[name].append((time.perf_counter() - start) / args.frames * 1e6)
    p50 = {name: statistics.median(times) for name, times in rounds.items()}
    for name, value in p50.items():
        print(f"{name:9} {value:.3f} µs per frame ({args.body}-byte bodies)")
    print(f"python / compiled: {p50['python'] / p50['compiled']:.1f}x")


if __name__ == "__main__":
    main()
