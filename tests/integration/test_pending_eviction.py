"""The eviction of an idle gRPC connection of a user over its share, on the agent's loop, when
its client left the socket full (the budget's rules themselves: tests/unit/test_pending.py)."""
from __future__ import annotations

import os

import pytest
from test_grpc_front_h2 import RawClient, _ping_flood, headers, message


def test_evicting_an_idle_grpc_connection_never_waits_on_its_client(start_agent, public_dir):
    """Both places (edge_agent_max_connections 2) held by this user's idle gRPC connections
    whose clients stopped reading (PING ACKs fill their sockets): a client of another user
    is admitted at once, the loop does not wait for the evicted client to take its GOAWAY
    (a courtesy), and that connection is closed either way; the other one stays."""
    from capture_helpers import wait_for
    from test_fair_share import as_nobody

    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as a second user")
    workdir = public_dir / "agent"
    workdir.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)
    grpc_path = str(workdir / "grpc.sock")
    agent = start_agent(workdir=workdir, edge_agent_socket_mode="0666",
                        edge_agent_max_connections=2, edge_agent_grpc_socket_path=grpc_path,
                        edge_agent_send_timeout_seconds=3600,
                        edge_agent_idle_timeout_seconds=3600)
    handlers = agent.app.grpc_server._handlers
    stalled = []
    try:
        for _ in range(2):
            client = RawClient(grpc_path)
            stalled.append(client)
            client.settled()
            assert client.status(client.call(headers(), message(b"")))[0] == 0
            wait_for(lambda: len(handlers) == len(stalled), what="the connection registered")
            _ping_flood(client.sock, 4 << 20)  # never read
        # Each waits with its client's socket full: idle, and with bytes it cannot send.
        wait_for(lambda: all(h.idle and h.sending for h in list(handlers.values())),
                 what="both connections stalled on their clients")

        def other_user() -> dict:
            client = RawClient(grpc_path)
            try:
                client.settled()
                return {"status": list(client.status(client.call(headers(), message(b""))))}
            finally:
                client.close()

        assert as_nobody(agent, other_user) == {"status": [0, ""]}
        closed = []
        for client in stalled:  # what waits in each socket, then the end for the evicted one
            client.sock.setblocking(False)
            try:
                while client.sock.recv(1 << 20):
                    pass
                closed.append(client)
            except BlockingIOError:
                pass
            except ConnectionError:
                closed.append(client)
        assert len(closed) == 1
        assert "closing an idle gRPC connection" in agent.log()
        wait_for(lambda: len(handlers) == 1, what="the other user's connection to end")
    finally:
        for client in stalled:
            client.close()
