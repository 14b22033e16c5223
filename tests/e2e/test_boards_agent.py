"""Board profiles (firmware_configs/) in processes: `serve --board NAME` runs a real agent with
each, refuses an unknown one; `edge-agent boards`; the profiles ship in the wheel. (Loading,
detection and precedence: tests/unit/test_boards.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.platform import boards
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder

from agents import ROOT, AgentProcess

PROFILES = sorted(p.stem for p in (ROOT / "firmware_configs").glob("*.json"))


def test_serve_with_an_unknown_board_stops_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "serve", "--board", "raspberry-pi-9",
         "--socket", str(tmp_path / "a.sock")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "configuration error: edge_agent_board: no board profile named 'raspberry-pi-9'" in result.stderr
    assert not (tmp_path / "a.sock").exists()


def test_the_boards_command_lists_every_profile():
    result = subprocess.run([sys.executable, "-m", "edge_agent", "boards"], capture_output=True,
                            text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "ARCHITECTURE", "DELEGATE"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:] if not line.startswith("*")}
    assert rows["raspberry-pi-4b"] == ["aarch64", "xnnpack"]
    assert rows["raspberry-pi-4b-coral-usb"] == ["aarch64", "edgetpu(device=usb)"]
    assert rows["generic-x86_64"] == ["x86_64", "xnnpack"]
    assert set(rows) == set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_serve_runs_every_profile(tmp_path, model_files, name):
    """`serve --board NAME` with the profile's values, only the paths moved into the test's
    directory. On this machine (no Edge TPU) the Coral USB profile falls back to the CPU and
    the Coral Dev Board's refuses loads, as their profiles say."""
    agent = AgentProcess(tmp_path, {"sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "c"),
                                    "sagemaker_edge_core_root_certs_path": str(tmp_path / "keys")},
                         args=("--board", name))
    # The test's file sets threads (1) and unsigned models; everything else is the profile's.
    agent.start()
    try:
        profile = boards.load_profile(name)
        built = model_builder.add_model()
        with agent.client() as client:
            if profile.config.edge_agent_delegate_fallback == "fail" and \
                    profile.config.edge_agent_delegate == "edgetpu":
                with pytest.raises(AgentError) as info:
                    client.load_model("add", str(model_files["add"]))
                assert info.value.code == StatusCode.FAILED_PRECONDITION
                assert "edgetpu delegate cannot be loaded" in info.value.message
            else:
                assert client.load_model("add", str(model_files["add"])).delegate == "xnnpack"
                inputs = built.sample_inputs()
                np.testing.assert_array_equal(client.predict("add", inputs)["sum"],
                                              built.reference(inputs)["sum"])
            assert client.list_models() is not None  # still serving
        assert f"(profile {name}, {profile.architecture})" in agent.log()
    finally:
        assert agent.stop() == 0


def test_the_profiles_ship_inside_the_wheel(tmp_path):
    """setup.py copies firmware_configs/ into the package, where an installed agent finds it."""
    build = tmp_path / "build"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
                   cwd=ROOT, check=True, capture_output=True)
    shipped = build / "edge_agent" / "firmware_configs"
    assert sorted(p.stem for p in shipped.glob("*.json")) == PROFILES
    found = subprocess.run(
        [sys.executable, "-c", "from edge_agent.platform import boards; print(boards.profiles_dir())"],
        cwd=tmp_path, env={"PYTHONPATH": str(build), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found) == shipped
