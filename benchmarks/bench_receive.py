"""What the connection limits and descriptor passing add to every receive of the agent's
connection loop, measured on a socketpair in this process (no agent): the receive itself
(recv_into as before, recvmsg_into with room for 16 descriptors now) and the pending-budget
bookkeeping (two PendingBudget.change calls per receive of whole frames).

    .venv/bin/python benchmarks/bench_receive.py [--calls 200000]

p50 of batches of 1000 calls, in µs per call; docs/BENCHMARKS.md records a run.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import time

from edge_agent.protocol import encode_request
from edge_agent.api.rpcs import Method
from edge_agent.transport.framed_front import PendingBudget
from edge_agent.transport.socket_io import receive_into, receive_into_with_fds

BATCH = 1000


def per_call_us(steps: dict, calls: int) -> dict:
    """p50 per call of each step, their batches interleaved so that load on the machine
    falls on all of them alike."""
    batches: dict = {name: [] for name in steps}
    for _ in range(max(1, calls // BATCH)):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(BATCH):
                step()
            batches[name].append((time.perf_counter() - start) / BATCH * 1e6)
    return {name: statistics.median(values) for name, values in batches.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200000)
    calls = parser.parse_args().calls
    a, b = socket.socketpair()
    frame = encode_request(Method.LIST_MODELS, 1, b"")
    buffer = memoryview(bytearray(256 * 1024))
    send = a.send

    def old():
        send(frame)
        receive_into(b, buffer, False, 0.0)

    def new():
        send(frame)
        receive_into_with_fds(b, buffer, False, 0.0)

    budget = PendingBudget(1 << 27)

    def bookkeeping():
        budget.change(0, len(frame))
        budget.change(len(frame), 0)

    results = per_call_us({"send + receive (recv_into)": old,
                           "send + receive_with_fds (recvmsg_into)": new,
                           "pending budget, two changes": bookkeeping}, calls)
    for name, value in results.items():
        print(f"{name:42} {value:7.3f} µs")
    added = (results["send + receive_with_fds (recvmsg_into)"]
             - results["send + receive (recv_into)"] + results["pending budget, two changes"])
    print(f"{'added per receive':42} {added:7.3f} µs")


if __name__ == "__main__":
    main()
