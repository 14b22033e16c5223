"""A fleet rollout end to end, as an operator runs it (docs/FLEET.md): `edge-agent fleet`
commands against a real SeaweedFS, four boards as agents in threads and one agent process,
each with its own device name and repository.

The full scenario runs in `make test-fleet`; `make test` runs the failure-policy one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from agents import AgentInThread
from capture_helpers import wait_for
from fleet_helpers import FLEET, Fleet
from lifecycle_helpers import X, offset_of
from s3server import ACCESS_KEY, SECRET_KEY

from edge_agent.app.cli import main
from edge_agent.fleet.document import in_percentage

pytestmark = pytest.mark.native_only
DEVICES = ["board-1", "board-2", "board-3", "board-4", "board-5"]


@pytest.fixture
def fleet(tmp_path, s3, s3_prefix, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    fleet = Fleet(tmp_path / "fleet", s3, s3_prefix)
    yield fleet
    fleet.client.close()


@pytest.fixture
def boards(fleet, start_agent, tmp_path):
    """board-1..4 in threads, board-5 a process."""
    started: dict = {}

    def start(**overrides):
        for name in DEVICES[:4]:
            (tmp_path / name).mkdir()
            started[name] = AgentInThread(tmp_path / name, fleet.settings(name, **overrides))
            started[name].start()
        started[DEVICES[4]] = start_agent(**fleet.settings(DEVICES[4], **overrides))
        return started
    yield start
    for name in DEVICES[:4]:
        if name in started:
            started[name].stop()


def fleet_cli(fleet, *args: str, expect: int = 0) -> None:
    argv = ["fleet", args[0], "--url", fleet.url, "--fleet", FLEET,
            "--endpoint-url", fleet.s3.endpoint, *args[1:]]
    if args[0] != "status":
        argv += ["--key", fleet.key_path]
    assert main(argv) == expect


def serving(agent, name="m"):
    with agent.client() as client:
        try:
            return offset_of(client.predict(name, {"x": X}))
        except Exception:
            return None


def all_serve(boards, expected: dict, what: str) -> None:
    for device, value in expected.items():
        wait_for(lambda device=device, value=value: serving(boards[device]) == value, 90, 0.1,
                 f"{device} serving {value} ({what})")


def fleet_status(fleet, capsys) -> list[dict]:
    capsys.readouterr()
    fleet_cli(fleet, "status", "--json")
    return json.loads(capsys.readouterr().out)


def statuses_at(fleet, capsys, sequence: int) -> list[dict]:
    def ready():
        rows = fleet_status(fleet, capsys)
        return len(rows) == len(DEVICES) and all(
            r["sequence"] == sequence and r["state"] in ("serving", "failed") for r in rows) \
            and rows
    return wait_for(ready, 90, 0.2, f"every board's status at sequence {sequence}")


@pytest.mark.skipif(not os.environ.get("EDGE_AGENT_FULL_SCENARIOS"),
                    reason="the full scenario: make test-fleet")
def test_a_staged_rollout_promoted_then_rolled_back(fleet, boards, capsys):
    packages = {v: fleet.lab.build("m", v, archive=True) for v in ("1.0", "2.0", "3.0")}
    fleet_cli(fleet, "publish", "--model", f"m={packages['1.0']}")
    agents = boards()
    all_serve(agents, dict.fromkeys(DEVICES, 1.0), "the baseline")

    fleet_cli(fleet, "publish", "--model", f"m={packages['2.0']}", "--devices", "board-1,board-2")
    expected = {d: 2.0 if d in ("board-1", "board-2") else 1.0 for d in DEVICES}
    all_serve(agents, expected, "a two-device stage")
    rows = statuses_at(fleet, capsys, 2)
    assert {r["device"]: float(r["serving"]) for r in rows} == expected

    # A percentage stage for m replaces the device stage: exactly the boards the hash selects.
    fleet_cli(fleet, "publish", "--model", f"m={packages['3.0']}", "--percent", "25")
    selected = {d for d in DEVICES if in_percentage(FLEET, d, 25)}
    assert selected and selected != set(DEVICES)
    expected = {d: 3.0 if d in selected else 1.0 for d in DEVICES}
    all_serve(agents, expected, "a 25% stage")
    rows = statuses_at(fleet, capsys, 3)
    assert {r["device"]: float(r["serving"]) for r in rows} == expected

    fleet_cli(fleet, "promote", "m")
    all_serve(agents, dict.fromkeys(DEVICES, 3.0), "promoted")
    rows = statuses_at(fleet, capsys, 4)
    assert {r["device"]: (r["version"], r["serving"], r["state"]) for r in rows} == \
        dict.fromkeys(DEVICES, ("3.0", "3.0", "serving"))

    fleet_cli(fleet, "rollback", "m")
    all_serve(agents, dict.fromkeys(DEVICES, 1.0), "rolled back")
    rows = statuses_at(fleet, capsys, 5)
    assert all(r["serving"] == "1.0" for r in rows)


def test_rollback_on_failure(fleet, boards, capsys):
    good = fleet.lab.build("m", "1.0", archive=True)
    # 2.0 answers x + 2; its test vector expects x + 5: validation fails on every board.
    bad = fleet.lab.build("m", "2.0", archive=True, expected=np.full((1, 4), 5, np.float32))
    fleet_cli(fleet, "publish", "--model", f"m={good}", "--policy", "rollback_on_failure")
    agents = boards()
    all_serve(agents, dict.fromkeys(DEVICES, 1.0), "the baseline")
    fleet_cli(fleet, "publish", "--model", f"m={bad}", "--devices", "board-5")
    rows = statuses_at(fleet, capsys, 2)
    by_device = {r["device"]: r for r in rows}
    assert by_device["board-5"]["state"] == "failed", by_device["board-5"]
    assert "2.0" in by_device["board-5"]["version"] and by_device["board-5"]["serving"] == "1.0"
    assert all(by_device[d]["state"] == "serving" for d in DEVICES[:4])
    assert serving(agents["board-5"]) == 1.0  # the board kept the baseline
    fleet_cli(fleet, "promote", "m", expect=1)
    assert "failed on board-5" in capsys.readouterr().err
    fleet_cli(fleet, "reconcile")
    rows = statuses_at(fleet, capsys, 3)
    assert all(r["version"] == "1.0" and r["state"] == "serving" for r in rows)


def test_the_fleet_commands_import_no_numpy_nor_runtime(tmp_path):
    code = ("import sys; from edge_agent.app.cli import main\n"
            "try:\n    main(['fleet', 'status', '--url', 's3://b/p', '--fleet', 'f',"
            " '--endpoint-url', 'http://127.0.0.1:9'])\nexcept SystemExit:\n    pass\n"
            "import edge_agent.fleet.cli, edge_agent.fleet.document, edge_agent.fleet.transfer\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'tflite_runtime', 'ai_edge_litert', 'tensorflow'))\n"
            "print(bad)\n")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
