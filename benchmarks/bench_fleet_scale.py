"""What a fleet's boards cost the bucket and how fast a stage reaches them (docs/FLEET.md,
"Scale"): a simulation of N boards with the board's own timing rule (edge_agent.fleet.board:
the first read after a random part of the jitter, then every poll period plus a random
jitter; a message makes each board read after a random part of the trigger interval).

    .venv/bin/python benchmarks/bench_fleet_scale.py [--boards 10000] [--poll 600] [--jitter 120]

Prints: requests per hour per board idle; the bucket's mean and peak requests per second
(over 1 s buckets) with polling only; the time until 95% of a stage's boards have read a
new document by polling alone and with an MQTT message; the peak request rate after the
message.
"""
from __future__ import annotations

import argparse
import random


def simulate(boards: int, poll: float, jitter: float, trigger: float, seed: int = 1) -> dict:
    rng = random.Random(seed)
    horizon = 6 * 3600.0
    publish_at = horizon / 2  # well after start-up: the phases are spread
    per_second: dict[int, int] = {}
    first_read_after: list[float] = []
    for _ in range(boards):
        t = rng.uniform(0, jitter)
        after = None
        while t < horizon:
            per_second[int(t)] = per_second.get(int(t), 0) + 2  # fleet and device documents
            if after is None and t >= publish_at:
                after = t - publish_at
            t += poll + rng.uniform(0, jitter)
        first_read_after.append(after if after is not None else horizon)
    first_read_after.sort()
    steady = [per_second.get(s, 0) for s in range(int(horizon / 4), int(horizon))]
    triggered = sorted(rng.uniform(0, trigger) for _ in range(boards))
    burst: dict[int, int] = {}
    for t in triggered:
        burst[int(t)] = burst.get(int(t), 0) + 2
    return {
        "requests_per_hour_per_board": 2 * 3600 / (poll + jitter / 2),
        "bucket_mean_rps": sum(steady) / len(steady),
        "bucket_peak_rps": max(steady),
        "p95_polling_seconds": first_read_after[int(0.95 * boards)],
        "p95_mqtt_seconds": triggered[int(0.95 * boards)],
        "mqtt_peak_rps": max(burst.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boards", type=int, default=10_000)
    parser.add_argument("--poll", type=float, default=600.0)
    parser.add_argument("--jitter", type=float, default=120.0)
    parser.add_argument("--trigger", type=float, default=10.0)
    args = parser.parse_args()
    result = simulate(args.boards, args.poll, args.jitter, args.trigger)
    print(f"{args.boards} boards, poll {args.poll:g} s + up to {args.jitter:g} s jitter, "
          f"trigger spread {args.trigger:g} s")
    for key, value in result.items():
        print(f"  {key:<30} {value:10.1f}")


if __name__ == "__main__":
    main()
