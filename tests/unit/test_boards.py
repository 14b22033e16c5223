"""Board profiles (firmware_configs/): every one loads through the real configuration loader
and is sane for its board; detection from the device tree; precedence; broken profiles.
(tests/e2e/test_boards_agent.py runs an agent with each, and the `boards` command.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_agent.platform import boards
from edge_agent.platform.machine import ARCHITECTURES
from edge_agent.config import DELEGATES, ConfigError

from agents import ROOT

PROFILES = sorted(p.stem for p in (ROOT / "firmware_configs").glob("*.json"))
REQUIRED_BOARDS = {"raspberry-pi-3b", "raspberry-pi-4b", "raspberry-pi-5", "raspberry-pi-zero-2w",
                   "coral-dev-board", "raspberry-pi-4b-coral-usb", "generic-x86_64"}
# The smallest RAM each board is sold with, in MiB, and its cores: a profile's budget and
# threads must fit the smallest variant.
BOARD_FACTS = {
    "raspberry-pi-3b": (1024, 4), "raspberry-pi-4b": (1024, 4), "raspberry-pi-5": (2048, 4),
    "raspberry-pi-zero-2w": (512, 4), "coral-dev-board": (1024, 4),
    "raspberry-pi-4b-coral-usb": (1024, 4), "generic-x86_64": (4096, 4),
}


def test_the_boards_the_issue_names_have_profiles():
    assert REQUIRED_BOARDS <= set(PROFILES)
    assert set(boards.names()) == set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads_and_is_sane(name):
    profile = boards.load_profile(name)
    cfg = boards.load(overrides={"edge_agent_board": name})  # the real loader, as serve uses it
    assert cfg.edge_agent_board == name
    assert cfg.edge_agent_board_architecture in ARCHITECTURES
    assert cfg.edge_agent_delegate in DELEGATES
    ram_mb, cores = BOARD_FACTS[name]
    assert 16 <= cfg.edge_agent_memory_budget_mb <= ram_mb // 2, "leave the applications half"
    assert 1 <= cfg.edge_agent_num_threads <= cores
    for key in ("edge_agent_socket_path", "edge_agent_state_dir",
                "sagemaker_edge_core_root_certs_path", "sagemaker_edge_core_capture_data_disk_path"):
        assert Path(getattr(cfg, key)).is_absolute(), key
    # Every key the file sets is what the loaded configuration holds.
    for key, value in profile.values.items():
        got = getattr(cfg, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    if cfg.edge_agent_delegate == "edgetpu":
        assert cfg.edge_agent_delegate_options.get("device"), "say which Edge TPU to open"


def test_detection_is_unambiguous():
    """No device-tree model matches two profiles with prefixes of the same length."""
    prefixes = [(prefix, p.name) for p in boards.profiles() for prefix in p.config.edge_agent_board_models]
    assert len({prefix for prefix, _ in prefixes}) == len(prefixes)


@pytest.mark.parametrize("model, expected", [
    ("Raspberry Pi 4 Model B Rev 1.4", "raspberry-pi-4b"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "raspberry-pi-3b"),
    ("Raspberry Pi 3 Model B Rev 1.2", "raspberry-pi-3b"),
    ("Raspberry Pi 5 Model B Rev 1.0", "raspberry-pi-5"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "raspberry-pi-zero-2w"),
    ("Freescale i.MX8MQ Phanbell", "coral-dev-board"),
    ("Pine64 RockPro64", None),
])
def test_the_board_is_detected_from_the_device_tree(tmp_path, model, expected):
    device_tree = tmp_path / "model"
    device_tree.write_bytes(model.encode() + b"\0")  # the kernel ends it with a NUL
    detected = boards.detect(str(device_tree))
    assert (detected.name if detected else None) == expected
    cfg = boards.load(device_tree_model=str(device_tree))
    assert cfg.edge_agent_board == (expected or "auto")
    # Named explicitly, "none" means no profile, whatever the board.
    assert boards.load(None, {"edge_agent_board": "none"},
                       device_tree_model=str(device_tree)).edge_agent_board_name == ""


def test_without_a_device_tree_nothing_is_detected(tmp_path):
    assert boards.detect(str(tmp_path / "absent")) is None
    assert boards.load(device_tree_model=str(tmp_path / "absent")).edge_agent_board == "auto"


def test_profile_then_file_then_overrides(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"edge_agent_board": "raspberry-pi-zero-2w",
                                "edge_agent_num_threads": 1,
                                "edge_agent_socket_path": str(tmp_path / "a.sock")}))
    cfg = boards.load(str(path), {"edge_agent_max_connections": 3})
    assert cfg.edge_agent_memory_budget_mb == 128          # from the profile
    assert cfg.edge_agent_num_threads == 1                 # the file beats the profile
    assert cfg.edge_agent_socket_path == str(tmp_path / "a.sock")
    assert cfg.edge_agent_max_connections == 3             # --set beats them all
    # --board (an override) beats the file's board.
    cfg = boards.load(str(path), {"edge_agent_board": "raspberry-pi-5"})
    assert cfg.edge_agent_board == "raspberry-pi-5" and cfg.edge_agent_memory_budget_mb == 1024


@pytest.mark.parametrize("board", ["no-such-board", "../../etc/passwd", "Raspberry Pi 4"])
def test_an_unknown_board_names_the_key(board):
    with pytest.raises(ConfigError, match=r"^edge_agent_board: no board profile named") as info:
        boards.load(overrides={"edge_agent_board": board})
    assert repr(board) in str(info.value) and "raspberry-pi-4b" in str(info.value)


@pytest.fixture
def profiles_in(tmp_path, monkeypatch):
    """A profiles directory of the test's own, copied from the real one."""
    directory = tmp_path / "firmware_configs"
    shutil.copytree(ROOT / "firmware_configs", directory)
    monkeypatch.setattr(boards, "profiles_dir", lambda: directory)
    return directory


@pytest.mark.parametrize("change, message", [
    ({"edge_agent_num_thread": 4}, "'edge_agent_num_thread' is not a key a profile may set"),
    ({"edge_agent_board": "x"}, "'edge_agent_board' is not a key a profile may set"),
    ({"edge_agent_board_architecture": "sparc"}, "edge_agent_board_architecture: expected one of"),
    ({"edge_agent_delegate": ""}, "must set edge_agent_delegate"),
    ({"edge_agent_memory_budget_mb": 0}, "edge_agent_memory_budget_mb: must be at least 1"),
])
def test_a_broken_profile_is_refused_naming_file_and_key(profiles_in, change, message):
    path = profiles_in / "raspberry-pi-4b.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ConfigError, match=f"^board profile {path}: ") as info:
        boards.load_profile("raspberry-pi-4b")
    assert message in str(info.value)
