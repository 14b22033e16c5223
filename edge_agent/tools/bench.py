"""`edge-agent bench`: Predict round trips through a real agent beside in-process invoke.

For each model it prints p50/p99 of a Predict round trip over the socket (client in this
process, agent in another), of the same model invoked in-process (set_tensor, invoke,
get_tensor), of a bare UNIX-socket round trip with frames of the same sizes, and the ratio
agent p50 / (in-process p50 + bare p50). Then the agent's idle RSS with one small model
loaded. Medians, not means: small boards and VMs are noisy.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable


from edge_agent.launch import agent_command
from edge_agent.tools import model_builder

MODELS: dict[str, Callable[[], model_builder.BuiltModel]] = {
    "tiny": model_builder.tiny_model,
    "fc-1x1024": lambda: model_builder.fully_connected_model(1024, 1024),
    "image-1x224x224x3": model_builder.image_model,
}


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {"p50_us": statistics.median(ordered) / 1e3,
            "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e3}


def time_calls(call: Callable[[], object], iterations: int, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(iterations):
        start = clock()
        call()
        samples.append(clock() - start)
    return percentiles(samples)


def in_process(model: model_builder.BuiltModel, inputs: dict, num_threads: int, iterations: int):
    from edge_agent.runtime import interpreter_module

    interpreter = interpreter_module().Interpreter(model_content=model.content,
                                                   num_threads=num_threads)
    interpreter.allocate_tensors()
    feeds = [(d["index"], inputs[d["name"]]) for d in interpreter.get_input_details()]
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def call():
        for index, array in feeds:
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]
    return time_calls(call, iterations)


_ECHO_SERVER = """
import socket, sys
reply = b"r" * int(sys.argv[2])
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1]); listener.listen(1)
print("ready", flush=True)
conn, _ = listener.accept()
buffer = bytearray(1 << 20)
want = int(sys.argv[3])
while True:
    got = 0
    while got < want:
        n = conn.recv_into(buffer)
        if not n:
            sys.exit(0)
        got += n
    conn.sendall(reply)
"""


def bare_round_trip(workdir: str, request_bytes: int, reply_bytes: int, iterations: int):
    """A Python echo over a UNIX socket, blocking on both sides, frames of the given sizes."""
    path = os.path.join(workdir, f"echo-{request_bytes}.sock")
    server = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER, path, str(reply_bytes),
                               str(request_bytes)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None  # stdout=PIPE
        server.stdout.readline()
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        request = b"q" * request_bytes
        buffer = bytearray(1 << 20)

        def call():
            client.sendall(request)
            got = 0
            while got < reply_bytes:
                got += client.recv_into(buffer)
        result = time_calls(call, iterations)
        client.close()
        return result
    finally:
        server.kill()
        server.wait()


def grpc_round_trip(workdir: str, num_threads: int, model_path: str, request,
                    iterations: int) -> dict | None:
    """The same Predict through the gRPC front (h2) of an agent of its own, with a grpcio
    client (imported in this process only, and only here)."""
    try:
        import grpc
    except ImportError:
        return None
    from edge_agent import agent_pb2 as pb
    from edge_agent.api import GRPC_SERVICE as SERVICE

    directory = os.path.join(workdir, "grpc")
    os.makedirs(directory)
    grpc_path = os.path.join(directory, "grpc.sock")
    agent, _ = start_agent(directory, num_threads, "--set", f"edge_agent_grpc_socket_path={grpc_path}")
    try:
        with grpc.insecure_channel(f"unix://{grpc_path}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)  # it binds after the socket

            def call(method, request_type, response_type, message):
                return channel.unary_unary(f"/{SERVICE}/{method}",
                                           request_serializer=request_type.SerializeToString,
                                           response_deserializer=response_type.FromString)(message)
            call("LoadModel", pb.LoadModelRequest, pb.LoadModelResponse,
                 pb.LoadModelRequest(name=request.name, url=model_path))
            return time_calls(
                lambda: call("Predict", pb.PredictRequest, pb.PredictResponse, request), iterations)
    finally:
        agent.terminate()
        agent.wait(10)


def start_agent(workdir: str, num_threads: int, *extra: str) -> tuple[subprocess.Popen, str]:
    path = os.path.join(workdir, "agent.sock")
    agent = subprocess.Popen(
        agent_command("serve", "--socket", path,
                      "--set", "edge_agent_allow_unsigned_models=true",
                      "--set", f"edge_agent_num_threads={num_threads}", *extra),
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if agent.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the agent did not start")
        time.sleep(0.05)
    return agent, path


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_bench(iterations: int, num_threads: int = 1) -> dict:
    from edge_agent import agent_pb2 as pb
    from edge_agent.client import AgentClient
    from edge_agent.protocol import HEADER
    from edge_agent.tensors import add_array

    results: dict = {"iterations": iterations, "num_threads": num_threads, "models": {}}
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as workdir:
        # Readable by all: the benchmark's clients may run as another user than the agent.
        os.chmod(workdir, 0o755)
        agent, path = start_agent(workdir, num_threads)
        try:
            with AgentClient(path) as client:
                tiny = model_builder.tiny_model()
                client.load_model("tiny", str(tiny.write(os.path.join(workdir, "tiny.tflite"))))
                time.sleep(0.5)
                results["idle_rss_mb_one_small_model"] = rss_mb(agent.pid)
                for name, build in MODELS.items():
                    model = tiny if name == "tiny" else build()
                    if name != "tiny":
                        client.load_model(name, str(model.write(os.path.join(workdir, f"{name}.tflite"))))
                    inputs = model.sample_inputs()
                    # The bare round trip carries frames as large as this model's.
                    request = pb.PredictRequest(name=name)
                    for k, v in inputs.items():
                        add_array(request.tensors, k, v)
                    reply = pb.PredictResponse()
                    for k, v in model.reference(inputs).items():
                        add_array(reply.tensors, k, v)
                    sizes = (HEADER.size + request.ByteSize(), HEADER.size + reply.ByteSize())
                    agent_t = time_calls(lambda: client.predict(name, inputs), iterations)
                    local_t = in_process(model, inputs, num_threads, iterations)
                    bare_t = bare_round_trip(workdir, *sizes, iterations)
                    if name == "tiny":
                        results["grpc_front_tiny"] = grpc_round_trip(
                            workdir, num_threads, os.path.join(workdir, "tiny.tflite"), request,
                            iterations)
                    results["models"][name] = {
                        "request_bytes": sizes[0], "reply_bytes": sizes[1],
                        "agent": agent_t, "in_process": local_t, "bare_socket": bare_t,
                        "ratio_p50": agent_t["p50_us"] / (local_t["p50_us"] + bare_t["p50_us"]),
                    }
        finally:
            agent.terminate()
            agent.wait(10)
    return results


def print_table(results: dict) -> None:
    print(f"Predict round trip, {results['iterations']} calls each, "
          f"num_threads={results['num_threads']} (microseconds)")
    print(f"{'model':20s} {'agent p50':>10s} {'p99':>8s} {'in-proc p50':>12s} "
          f"{'bare p50':>9s} {'ratio':>6s}")
    for name, r in results["models"].items():
        print(f"{name:20s} {r['agent']['p50_us']:10.1f} {r['agent']['p99_us']:8.1f} "
              f"{r['in_process']['p50_us']:12.1f} {r['bare_socket']['p50_us']:9.1f} "
              f"{r['ratio_p50']:6.2f}")
    print("ratio = agent p50 / (in-process p50 + bare socket p50)")
    grpc_front = results.get("grpc_front_tiny")
    if grpc_front:
        print(f"tiny model through the gRPC front (h2): p50 {grpc_front['p50_us']:.1f} us, "
              f"p99 {grpc_front['p99_us']:.1f} us")
    print(f"idle RSS with one small model loaded: {results['idle_rss_mb_one_small_model']:.1f} MB")


def run(args) -> int:
    results = run_bench(args.iterations)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0
