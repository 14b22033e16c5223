"""edge_agent.platform.systemd in process: sd_notify to a path and an abstract socket (the test plays
systemd with a real datagram socket), the watchdog interval and its feeding, the health check
against servers that lie or stay silent. (An agent process telling systemd: tests/e2e.)"""
from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from edge_agent.platform import systemd


def test_notify_reaches_a_path_and_an_abstract_socket(notify_socket):
    path, sock = notify_socket
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1"
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(100) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent():
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})


@pytest.mark.parametrize("env, interval", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "soon"}, None), ({}, None),
])
def test_watchdog_interval(env, interval):
    assert systemd.watchdog_interval(env) == interval


def test_the_watchdog_is_fed_only_while_the_agent_is_healthy():
    sent: list[str] = []
    checks = threading.Semaphore(0)
    healthy = [False]

    fed = threading.Event()

    def check() -> bool:
        checks.release()
        return healthy[0]

    def send(message: str) -> bool:
        sent.append(message)
        fed.set()
        return True

    watchdog = systemd.Watchdog(0.001, check, send).start()
    try:
        for _ in range(3):
            checks.acquire()
        assert sent == []  # three failed checks, no notification
        healthy[0] = True
        # Waited for by state, not by counting checks: failed checks may already have released
        # more permits than were taken (a slow machine), and counting them would stop early.
        assert fed.wait(timeout=120)
    finally:
        watchdog.stop()
    assert set(sent) == {"WATCHDOG=1"}


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
