"""Running under systemd, in processes: an agent process tells systemd ready, watchdog and
stopping (the test plays systemd with a real datagram socket); `systemd-analyze verify` on the
unit; the install script. (sd_notify and the watchdog in process: tests/unit/test_systemd.py;
the unit file: tests/unit/test_install.py.)"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agents import ROOT, AgentProcess

UNIT = ROOT / "install" / "edge-agent.service"
INSTALL_SCRIPT = ROOT / "install" / "install-raspberry-pi-os.sh"


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


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
