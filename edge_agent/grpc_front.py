"""The gRPC front: `AWS.SageMaker.Edge.Agent` over a UNIX socket, for applications written for
the original agent's gRPC API. A thin adapter over the same AgentService as the framed socket.

grpcio is an optional extra (`pip install edge-agent[grpc]`), imported only when
`edge_agent_grpc_socket_path` is set. gRPC does not tell a server its peer's credentials, so
gRPC callers are anonymous to the shared-memory permission check: only segments that anyone
may read (or write, for outputs) can be named through this front.
"""
from __future__ import annotations

import logging
import os
from concurrent import futures

import grpc

from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError, StatusCode
from edge_agent.server import restrict_socket_file
from edge_agent.service import RPCS, AgentService, Caller

log = logging.getLogger(__name__)

SERVICE = "AWS.SageMaker.Edge.Agent"
# Matches no segment owner or group: only the "other" permission bits apply.
ANONYMOUS = Caller(pid=-1, uid=-2, gid=-2)


def _handler(service: AgentService, rpc):
    call = service.handler(rpc)
    count = service.metrics.call_counter("grpc")

    def handle(request, context):
        try:
            response = call(request, ANONYMOUS)
            count(rpc.name, StatusCode.OK)
            return response
        except AgentError as e:
            count(rpc.name, e.code)
            context.abort(grpc.StatusCode[e.code.name], e.message)
        except Exception as e:  # a fault of ours: report it, keep serving
            count(rpc.name, StatusCode.INTERNAL)
            log.exception("%s failed with an internal error", rpc.name)
            context.abort(grpc.StatusCode.INTERNAL,
                          f"internal error in {rpc.name}: {type(e).__name__}: {e}")

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=rpc.request_type.FromString,
        response_serializer=lambda response: response.SerializeToString())


def start(service: AgentService, config: AgentConfig):
    """A started grpc.Server on unix://edge_agent_grpc_socket_path; stop it with .stop(grace).

    The socket file gets the same mode and group as the framed socket."""
    socket_path = config.edge_agent_grpc_socket_path
    max_message_bytes = config.edge_agent_max_frame_bytes
    max_workers = config.edge_agent_grpc_max_workers
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="edge-agent-grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)])
    handlers = {name: _handler(service, rpc) for name, rpc in RPCS.items()}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    if os.path.exists(socket_path):
        os.unlink(socket_path)  # the framed socket's claim already ruled out a live agent
    if not server.add_insecure_port(f"unix://{socket_path}"):
        raise RuntimeError(f"cannot bind the gRPC socket {socket_path}")
    server.start()
    restrict_socket_file(socket_path, config)
    log.info("gRPC front serving on unix://%s", socket_path)
    return server
