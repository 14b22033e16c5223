"""A grpcio server over the agent's AgentService, and a grpcio client's Predict timing: the
"same work through grpcio" that `edge-agent bench` and benchmarks/bench_grpc_front.py compare
the framed socket and the h2 front with. Benchmark code only: grpc is imported inside the
functions, so the agent never loads it.

    python -m edge_agent.tools.grpcio_server WORKDIR SOCKET     (serves until killed)
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator


def serve_grpcio(workdir: str, socket_path: str) -> None:
    """A grpcio server over AgentService, each RPC from edge_agent.api.rpcs's table (what the agent
    served gRPC with before the h2 front, with a pool of edge_agent_grpc_max_workers)."""
    from concurrent import futures

    import grpc

    from edge_agent import config
    from edge_agent.api.rpcs import GRPC_SERVICE, RPCS, Api
    from edge_agent.errors import StatusCode
    from edge_agent.api.service import AgentService
    from edge_agent.api.caller import IN_PROCESS

    settings = config.from_mapping({
        "edge_agent_socket_path": os.path.join(workdir, "unused.sock"),
        "edge_agent_state_dir": os.path.join(workdir, "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1})
    api = Api(AgentService(settings))

    def handler(rpc):
        def handle(body, context):
            code, reply = api.serve(rpc, body, IN_PROCESS)
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


@contextlib.contextmanager
def grpc_predict(socket_path: str, model_path: str, request: Any) -> Iterator[Callable[[], Any]]:
    """Loads `model_path` under request.name through the gRPC server at `socket_path`, then
    gives a call that makes one Predict of `request` with a grpcio client in this process."""
    import grpc

    from edge_agent import agent_pb2 as pb
    from edge_agent.api.rpcs import GRPC_SERVICE

    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)  # it binds after starting

        def call(method, request_type, response_type):
            return channel.unary_unary(f"/{GRPC_SERVICE}/{method}",
                                       request_serializer=request_type.SerializeToString,
                                       response_deserializer=response_type.FromString)
        call("LoadModel", pb.LoadModelRequest, pb.LoadModelResponse)(
            pb.LoadModelRequest(name=request.name, url=model_path))
        predict = call("Predict", pb.PredictRequest, pb.PredictResponse)
        yield lambda: predict(request)


if __name__ == "__main__":
    serve_grpcio(*sys.argv[1:3])
