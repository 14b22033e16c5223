"""The pending budget's eviction of an idle gRPC connection, on a real socketpair whose buffer
the client left full (the budget's rules themselves: tests/unit/test_pending.py)."""
from __future__ import annotations

from edge_agent.transport.pending import PendingBudget


def test_evicting_an_idle_grpc_connection_never_waits_on_its_client():
    """The eviction runs in the accepting thread, under the server's lock: a client that
    stopped reading (its socket buffer full) must not hold every new connection back for
    the send timeout. The GOAWAY is a courtesy; the connection is closed either way."""
    import socket
    import threading
    from types import SimpleNamespace

    from edge_agent.config import from_mapping
    from edge_agent.transport.grpc_front import GrpcConnection

    config = from_mapping({"edge_agent_send_timeout_seconds": 3600})
    server = SimpleNamespace(config=config, pending=PendingBudget(1 << 20, 1 << 10))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection = GrpcConnection(server, ours)
        with connection._cond:
            connection.h2.initiate_connection()
            connection.h2.data_to_send()
        ours.setblocking(False)
        try:
            while True:  # what an earlier reply left unread: the buffer full
                ours.send(bytes(65536))
        except BlockingIOError:
            pass
        ours.setblocking(True)
        evicted: list = []
        thread = threading.Thread(target=lambda: evicted.append(connection.evict("room")),
                                  daemon=True)
        thread.start()
        thread.join(60)  # a bound for the bug (it waited the send timeout), not a timing
        hung = thread.is_alive()
        if hung:
            theirs.close()  # unblock it
            thread.join()
        assert not hung and evicted == [True]
    finally:
        ours.close()
        theirs.close()
