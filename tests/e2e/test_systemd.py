"""Running under systemd: sd_notify readiness, watchdog and stopping notifications (the test
plays systemd with a real datagram socket), the unit file and the install script."""
from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from edge_agent import systemd

from agents import ROOT, AgentProcess

UNIT = ROOT / "install" / "edge-agent.service"
INSTALL_SCRIPT = ROOT / "install" / "install-raspberry-pi-os.sh"


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket where systemd would listen: (NOTIFY_SOCKET value, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(30)  # a bound for a broken agent, not a timing assumption
    yield str(path), sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notify_reaches_a_path_and_an_abstract_socket(notify_socket):
    path, sock = notify_socket
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert receive(sock) == "READY=1"
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

    def check() -> bool:
        checks.release()
        return healthy[0]

    watchdog = systemd.Watchdog(0.001, check, lambda message: sent.append(message) or True).start()
    try:
        for _ in range(3):
            checks.acquire()
        assert sent == []  # three failed checks, no notification
        healthy[0] = True
        for _ in range(3):
            checks.acquire()
    finally:
        watchdog.stop()
    assert sent and set(sent) == {"WATCHDOG=1"}


def test_agent_answers_its_own_health_check(agent, tmp_path):
    assert systemd.agent_answers(agent.socket_path, timeout=10)
    assert not systemd.agent_answers(str(tmp_path / "nobody.sock"), timeout=10)


def test_the_agent_tells_systemd_ready_watchdog_and_stopping(tmp_path, notify_socket, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a WATCHDOG=1 every 0.1 s
    (tmp_path / "agent").mkdir()
    agent = AgentProcess(tmp_path / "agent").start()  # inherits NOTIFY_SOCKET, as from systemd
    try:
        ready = receive(sock)
        assert ready.splitlines() == ["READY=1", f"STATUS=serving on {agent.socket_path}"]
        assert receive(sock) == "WATCHDOG=1"
        assert receive(sock) == "WATCHDOG=1"
        assert agent.stop(signal.SIGTERM) == 0
        # Watchdog notifications already in flight may come first; STOPPING=1 ends them.
        messages = [receive(sock)]
        while messages[-1] == "WATCHDOG=1":
            messages.append(receive(sock))
        assert messages[-1] == "STOPPING=1"
    finally:
        agent.stop()


# --- the unit file ---------------------------------------------------------------------------

def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read(UNIT)
    return parser


def test_the_unit_runs_the_agent_as_systemd_expects():
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] and service["Restart"] == "on-failure"
    assert service["User"] == service["Group"] == "edge-agent"
    assert service["RuntimeDirectory"] == service["StateDirectory"] == "edge-agent"
    assert service["ExecStart"].split()[1:] == ["serve", "--config", "/etc/edge-agent/agent.json"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    # Clients' shared memory must stay visible: /dev/shm (POSIX) and the IPC namespace (SysV).
    assert service.get("PrivateDevices", "no") == "no"
    assert service.get("PrivateIPC", "no") == "no"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_profiles_paths_are_the_units():
    """The socket and state a board profile names are the directories the unit makes."""
    from edge_agent import boards
    for profile in boards.profiles():
        assert profile.config.edge_agent_socket_path.startswith("/run/edge-agent/")
        assert profile.config.edge_agent_state_dir == "/var/lib/edge-agent"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # ExecStart must exist for verify: point it at this checkout's agent.
    executable = shutil.which("edge-agent") or str(Path(sys.executable).parent / "edge-agent")
    copy = tmp_path / "edge-agent.service"
    copy.write_text(UNIT.read_text().replace("/opt/edge-agent/bin/edge-agent", executable))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- the install script ------------------------------------------------------------------------

def test_the_install_script_parses():
    subprocess.run(["bash", "-n", str(INSTALL_SCRIPT)], check=True)


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --wheel PATH and --from-source DIR"),
    (["--wheel", "a.whl", "--from-source", "."], "give exactly one of"),
    (["--wheel", "/nonexistent/edge_agent.whl"], "no wheel at /nonexistent/edge_agent.whl"),
    (["--from-source", "/nonexistent"], "is not an edge-agent checkout"),
    (["--colour"], "unknown argument --colour"),
])
def test_the_install_script_refuses_bad_arguments_before_touching_anything(args, message):
    result = subprocess.run(["bash", str(INSTALL_SCRIPT), *args], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert "==>" not in result.stdout  # no step started


def test_a_garbled_health_reply_is_unhealthy_not_fatal(tmp_path):
    """Whatever the health check meets, it answers False: the watchdog thread never dies."""
    import socket as socket_module
    import threading

    from edge_agent.systemd import agent_answers

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

    from edge_agent.systemd import agent_answers

    path = str(tmp_path / "silent.sock")
    listener = socket_module.socket(socket_module.AF_UNIX)
    listener.bind(path)
    listener.listen(1)  # the kernel accepts the connection; nobody ever reads or replies
    try:
        assert agent_answers(path, timeout=0.5) is False
    finally:
        listener.close()
