"""The health check systemd's watchdog relies on (systemd.agent_answers), against the agent
in a thread and against no agent."""
from __future__ import annotations

import socket
import uuid

from edge_agent.platform import systemd


def test_agent_answers_its_own_health_check(agent, tmp_path):
    assert systemd.agent_answers(agent.socket_path, timeout=10)
    assert not systemd.agent_answers(str(tmp_path / "nobody.sock"), timeout=10)


# --- sd_notify and the health check on real sockets (from the unit tests: sockets) --------

def test_notify_reaches_a_path_and_an_abstract_socket(notify_socket):
    path, sock = notify_socket
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1"
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(100) == b"STOPPING=1"


def test_a_garbled_health_reply_is_unhealthy_not_fatal(tmp_path):
    """Whatever the health check meets, it answers False: the watchdog thread never dies."""
    import socket as socket_module
    import threading

    from edge_agent.platform.systemd import agent_answers

    path = str(tmp_path / "liar.sock")
    listener = socket_module.socket(socket_module.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def lie():
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"this is not a frame at all")
        conn.close()

    liar = threading.Thread(target=lie)
    liar.start()
    assert agent_answers(path, timeout=5) is False
    liar.join()
    listener.close()


def test_a_silent_agent_is_unhealthy(tmp_path):
    """An agent that accepts but never answers (hung) must not feed the watchdog."""
    import socket as socket_module

    from edge_agent.platform.systemd import agent_answers

    path = str(tmp_path / "silent.sock")
    listener = socket_module.socket(socket_module.AF_UNIX)
    listener.bind(path)
    listener.listen(1)  # the kernel accepts the connection; nobody ever reads or replies
    try:
        assert agent_answers(path, timeout=0.5) is False
    finally:
        listener.close()
