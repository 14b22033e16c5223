"""install/: the systemd unit runs the agent as systemd expects, with the paths the board
profiles name. (The install script and `systemd-analyze verify`: tests/e2e/test_systemd_agent.py.)"""
from __future__ import annotations

import configparser

from agents import ROOT

UNIT = ROOT / "install" / "edge-agent.service"


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
    # The model lifecycle: its state written, the repository only read.
    assert service["ReadWritePaths"] == "/var/lib/edge-agent"
    assert service["ReadOnlyPaths"] == "-/var/lib/edge-agent-models"


def test_the_profiles_paths_are_the_units():
    """The socket and state a board profile names are the directories the unit makes."""
    from edge_agent.platform import boards
    for profile in boards.profiles():
        assert profile.config.edge_agent_socket_path.startswith("/run/edge-agent/")
        assert profile.config.edge_agent_state_dir == "/var/lib/edge-agent"
