"""What the metrics cost on the predict path, tiny model, in one run:

1. Predict round trips through four agent processes, two with edge_agent_metrics true (the
   default) and two with it false, started in the order on, off, off, on, called in bursts
   (back to back, as `edge-agent bench` does) one agent after the other, the order rotated
   each round, so machine noise falls on all alike; p50 and p99 per setting, pooled, and the
   median over rounds of each round's p50 ratio. `--control` runs the same with the metrics
   off in all four: what it shows is the noise floor (one agent process can be a few percent
   faster than another for where it runs).
2. The agent-side cost alone: SocketServer.serve() of the same Predict frame's body in this
   process, metrics on and off, alternating rounds: microseconds per call, and that as a
   percent of the round-trip p50 of part 1.

Target (docs/BENCHMARKS.md, "Metrics"): p50 difference within 2 %. The metrics-on agents
also serve Prometheus on loopback and are scraped once per round, so the collector runs too
(off the predict path, as in the field).

    .venv/bin/python benchmarks/bench_metrics.py [--rounds 20] [--calls 1000] [--json]
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from edge_agent.tools import model_builder
from edge_agent.tools.bench import start_agent
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(path: str) -> AgentClient:
    """The socket file exists a moment before the agent listens on it."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return AgentClient(path)
        except AgentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


SLOTS = (("on-1", True), ("off-1", False), ("off-2", False), ("on-2", True))


def round_trips(workdir: str, model_path: str, inputs: dict, rounds: int, calls: int,
                burst: int, control: bool) -> dict:
    samples: dict[bool, list[int]] = {True: [], False: []}
    ratios = []  # per round: p50 on / p50 off, of calls made moments apart
    agents, clients, ports = [], [], []
    try:
        for name, on in SLOTS:
            directory = Path(workdir) / name
            directory.mkdir()
            if on:
                ports.append(_free_port())
            extra = ("--set", f"edge_agent_metrics_listen=127.0.0.1:{ports[-1]}") if on \
                else ("--set", "edge_agent_metrics=false")
            if control:  # the noise floor: the same comparison with the metrics off everywhere
                extra = ("--set", "edge_agent_metrics=false")
            process, path = start_agent(str(directory), 1, *extra)
            agents.append(process)
            clients.append((on, _connect(path)))
            clients[-1][1].load_model("tiny", model_path)
            for _ in range(500):  # warm-up
                clients[-1][1].predict("tiny", inputs)
        clock = time.perf_counter_ns
        for round_ in range(rounds):
            this_round: dict[bool, list[int]] = {True: [], False: []}
            # Bursts of calls to each agent in turn, the order rotated every round: no agent
            # is always first or last, or called again at the start of the next round.
            turn = clients[round_ % len(clients):] + clients[:round_ % len(clients)]
            for _ in range(max(1, calls // burst)):
                for on, client in turn:
                    for _ in range(burst):
                        start = clock()
                        client.predict("tiny", inputs)
                        this_round[on].append(clock() - start)
            for on, values in this_round.items():
                samples[on] += values
            ratios.append(statistics.median(this_round[True]) / statistics.median(this_round[False]))
            for port in ([] if control else ports):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    scraped = r.read()
                assert b'edge_agent_predictions_total{code="OK",model="tiny"}' in scraped
    finally:
        for _, client in clients:
            client.close()
        for process in agents:
            process.terminate()
            process.wait(10)
    result = {"round_p50_ratio_median": statistics.median(ratios)}
    for on, values in samples.items():
        ordered = sorted(values)
        result["on" if on else "off"] = {"p50_us": statistics.median(ordered) / 1e3,
                                         "p99_us": ordered[int(len(ordered) * 0.99)] / 1e3}
    return result


def dispatch_cost(workdir: str, model_path: str, inputs: dict, rounds: int, calls: int) -> dict:
    """Median over rounds of the mean time of one SocketServer.serve() of a Predict body."""
    from edge_agent import agent_pb2 as pb
    from edge_agent import config as config_module
    from edge_agent.api.rpcs import Method
    from edge_agent.transport.framed_front import SocketServer
    from edge_agent.api.service import AgentService
    from edge_agent.api.caller import IN_PROCESS
    from edge_agent.protocol import HEADER
    from edge_agent.tools.bench import request_frame

    body = request_frame("tiny", inputs)[1][HEADER.size:]
    dispatchers, services = {}, []
    for name, on in (("on", True), ("off", False)):
        config = config_module.from_mapping({
            "edge_agent_state_dir": str(Path(workdir) / f"in-process-{name}"),
            "edge_agent_socket_path": str(Path(workdir) / f"in-process-{name}.sock"),
            "edge_agent_allow_unsigned_models": True, "edge_agent_metrics": on,
            "edge_agent_num_threads": 1})
        service = AgentService(config)
        services.append(service)
        service.load_model(pb.LoadModelRequest(name="tiny", url=model_path))
        dispatchers[name] = SocketServer(service, config).serve
    means: dict[str, list[float]] = {"on": [], "off": []}
    clock = time.perf_counter_ns
    try:
        for round_ in range(rounds):
            for name in (("on", "off") if round_ % 2 == 0 else ("off", "on")):
                dispatch = dispatchers[name]
                start = clock()
                for _ in range(calls):
                    dispatch(Method.PREDICT, body, IN_PROCESS)
                means[name].append((clock() - start) / calls / 1e3)
    finally:
        for service in services:
            service.close()
    return {name: statistics.median(values) for name, values in means.items()}


def run(rounds: int, calls: int, burst: int = 50, control: bool = False) -> dict:
    tiny = model_builder.tiny_model()
    inputs = tiny.sample_inputs()
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-metrics-") as workdir:
        model_path = str(tiny.write(Path(workdir) / "tiny.tflite"))
        result = {"rounds": rounds, "calls_per_round": calls, "burst": burst,
                  "control": control,
                  **round_trips(workdir, model_path, inputs, rounds, calls, burst, control)}
        # Short rounds, many of them: on and off then meet the same moments of machine noise.
        cost = dispatch_cost(workdir, model_path, inputs, rounds * 20, max(1, calls // 20))
    result["p50_difference_percent"] = 100 * (result["on"]["p50_us"] / result["off"]["p50_us"] - 1)
    result["dispatch_us"] = cost
    result["dispatch_difference_us"] = cost["on"] - cost["off"]
    result["dispatch_difference_percent_of_p50"] = \
        100 * result["dispatch_difference_us"] / result["off"]["p50_us"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=50,
                        help="calls made back to back to one agent before the next")
    parser.add_argument("--control", action="store_true",
                        help="metrics off in all four agents: the difference is then noise")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.rounds, args.calls, args.burst, args.control)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Predict round trip, tiny model, {args.rounds} rounds of {args.calls} calls per "
          f"agent in bursts of {args.burst}, two agents per setting (microseconds)"
          + ("; CONTROL: metrics off in all" if args.control else ""))
    for name in ("on", "off"):
        print(f"metrics {name:3s}  p50 {result[name]['p50_us']:7.1f}  p99 {result[name]['p99_us']:7.1f}"
              f"  serve() in process {result['dispatch_us'][name]:6.2f}")
    print(f"p50 difference (on vs off): {result['p50_difference_percent']:+.2f} % pooled, "
          f"{100 * (result['round_p50_ratio_median'] - 1):+.2f} % median of the rounds")
    print(f"agent-side cost of the metrics: {result['dispatch_difference_us']:+.2f} us a call, "
          f"{result['dispatch_difference_percent_of_p50']:+.2f} % of the p50 round trip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
