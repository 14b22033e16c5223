"""The gRPC front on h2 against a grpcio server over the same service: a tiny-model Predict
through each, and the framed socket beside them.

    .venv/bin/python benchmarks/bench_grpc_front.py [--iterations 2000] [--json]

Each server runs in a process of its own; the client is grpcio (the framed socket: the
agent's AgentClient) in this process. `h2`: the agent's own front (`edge-agent serve` with
edge_agent_grpc_socket_path). `grpcio`: a grpcio server (what the agent used before the h2
front, with a thread pool of edge_agent_grpc_max_workers) over the same AgentService and the
same RPC table, started by this script (`--serve-grpcio`). Also: each server process's RSS
after the calls. Medians, not means: the machines are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.tools import model_builder  # noqa: E402
from edge_agent.tools.bench import rss_mb, time_calls  # noqa: E402


def serve_grpcio(workdir: str, socket_path: str) -> None:
    """A grpcio server over AgentService, each RPC from edge_agent.api's table."""
    from concurrent import futures

    import grpc

    from edge_agent import config
    from edge_agent.api import GRPC_SERVICE, RPCS, Api
    from edge_agent.errors import StatusCode
    from edge_agent.service import IN_PROCESS, AgentService

    settings = config.from_mapping({
        "edge_agent_socket_path": os.path.join(workdir, "unused.sock"),
        "edge_agent_state_dir": os.path.join(workdir, "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1})
    api = Api(AgentService(settings))

    def handler(rpc):
        def handle(body, context):
            code, reply = api.invoke(rpc, body, IN_PROCESS)
            if code != StatusCode.OK:
                context.abort(grpc.StatusCode[code.name], reply)
            return reply
        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=None)

    server = grpc.server(futures.ThreadPoolExecutor(settings.edge_agent_grpc_max_workers))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        GRPC_SERVICE, {rpc.name: handler(rpc) for rpc in RPCS})])
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    server.wait_for_termination()


def measure_grpc(socket_path: str, model_path: str, iterations: int) -> dict:
    import grpc

    from edge_agent import agent_pb2 as pb
    from edge_agent.api import GRPC_SERVICE
    from edge_agent.tensors import add_array

    built = model_builder.tiny_model()
    request = pb.PredictRequest(name="tiny")
    for name, array in built.sample_inputs().items():
        add_array(request.tensors, name, array)
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)

        def call(method, request_type, response_type):
            return channel.unary_unary(f"/{GRPC_SERVICE}/{method}",
                                       request_serializer=request_type.SerializeToString,
                                       response_deserializer=response_type.FromString)
        call("LoadModel", pb.LoadModelRequest, pb.LoadModelResponse)(
            pb.LoadModelRequest(name="tiny", url=model_path))
        predict = call("Predict", pb.PredictRequest, pb.PredictResponse)
        return time_calls(lambda: predict(request), iterations)


def wait_for_file(path: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server for {path} did not start")
        time.sleep(0.05)


def run(iterations: int) -> dict:
    from edge_agent.client import AgentClient

    results = {"iterations": iterations}
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-grpc-") as workdir:
        model_path = str(model_builder.tiny_model().write(os.path.join(workdir, "tiny.tflite")))
        framed = os.path.join(workdir, "agent.sock")
        h2_socket = os.path.join(workdir, "h2.sock")
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "serve", "--socket", framed,
             "--set", "edge_agent_allow_unsigned_models=true", "--set", "edge_agent_num_threads=1",
             "--set", f"edge_agent_state_dir={workdir}/state",
             "--set", f"edge_agent_grpc_socket_path={h2_socket}"], stderr=subprocess.DEVNULL)
        try:
            wait_for_file(h2_socket, agent)
            results["h2"] = measure_grpc(h2_socket, model_path, iterations)
            with AgentClient(framed) as client:
                inputs = model_builder.tiny_model().sample_inputs()
                results["framed"] = time_calls(lambda: client.predict("tiny", inputs), iterations)
            results["h2"]["rss_mb"] = rss_mb(agent.pid)
        finally:
            agent.terminate()
            agent.wait(10)
        grpcio_socket = os.path.join(workdir, "grpcio.sock")
        server = subprocess.Popen([sys.executable, __file__, "--serve-grpcio", workdir,
                                   grpcio_socket], stderr=subprocess.DEVNULL)
        try:
            wait_for_file(grpcio_socket, server)
            results["grpcio"] = measure_grpc(grpcio_socket, model_path, iterations)
            results["grpcio"]["rss_mb"] = rss_mb(server.pid)
        finally:
            server.kill()
            server.wait()
    results["grpcio_over_h2_p50"] = results["grpcio"]["p50_us"] / results["h2"]["p50_us"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-grpcio", nargs=2, metavar=("WORKDIR", "SOCKET"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_grpcio:
        serve_grpcio(*args.serve_grpcio)
        return 0
    results = run(args.iterations)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"tiny Predict, {args.iterations} calls each (microseconds; RSS of the server process)")
    for name in ("h2", "grpcio", "framed"):
        r = results[name]
        rss = f"  RSS {r['rss_mb']:.1f} MB" if "rss_mb" in r else ""
        print(f"{name:8s} p50 {r['p50_us']:8.1f}  p99 {r['p99_us']:8.1f}{rss}")
    print(f"grpcio p50 / h2 p50 = {results['grpcio_over_h2_p50']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
