"""Configuration: the embedded default, the Edge Manager file format, and refusals by key."""
from __future__ import annotations

import json
import logging

import pytest

from edge_agent import config
from edge_agent.platform import boards
from edge_agent.config import ConfigError


def test_embedded_default_needs_no_file():
    cfg = boards.load()
    assert cfg.edge_agent_socket_path == "/tmp/edge-agent.sock"
    assert cfg.edge_agent_allow_unsigned_models is False
    assert cfg.edge_agent_memory_budget_mb >= 16
    assert cfg.edge_agent_num_threads >= 1
    assert cfg.sagemaker_edge_core_capture_data_destination == "Disk"


def test_an_edge_manager_file_is_read(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({
        "sagemaker_edge_core_device_name": "camera-7",
        "sagemaker_edge_core_device_fleet_name": "lobby",
        "sagemaker_edge_core_capture_data_batch_size": 25,
        "sagemaker_edge_log_verbose": "true",   # the original's files quote booleans at times
        "edge_agent_socket_path": "/run/edge-agent/agent.sock",
        "edge_agent_memory_budget_mb": 128,
        "edge_agent_max_frame_bytes": 2048,
    }))
    cfg = boards.load(str(path))
    assert cfg.sagemaker_edge_core_device_name == "camera-7"
    assert cfg.sagemaker_edge_core_capture_data_batch_size == 25
    assert cfg.sagemaker_edge_log_verbose is True
    assert cfg.memory_budget_bytes == 128 * 2**20
    assert cfg.edge_agent_max_frame_bytes == 2048


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"edge_agent_num_threads": 2}))
    assert boards.load(str(path), {"edge_agent_num_threads": 3}).edge_agent_num_threads == 3


def test_unknown_keys_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING):
        config.from_mapping({"sagemaker_edge_core_no_such_key": 1})
    assert "sagemaker_edge_core_no_such_key" in caplog.text


@pytest.mark.parametrize("key,value,message", [
    ("edge_agent_num_threads", 0, "must be at least 1"),
    ("edge_agent_num_threads", "four", "expected an integer"),
    ("edge_agent_num_threads", 2.5, "expected an integer"),
    ("edge_agent_memory_budget_mb", True, "expected a number"),
    ("edge_agent_allow_unsigned_models", "yes", "expected true or false"),
    ("edge_agent_socket_path", 5, "expected a string"),
    ("edge_agent_socket_path", "", "must not be empty"),
    ("edge_agent_socket_mode", "rw-rw----", "octal"),
    ("edge_agent_socket_mode", "1777", "not a permission mode"),
    ("edge_agent_max_frame_bytes", 10, "at least 1024"),
    ("sagemaker_edge_core_capture_data_destination", "Tape", "Disk, Cloud"),
])
def test_wrong_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as info:
        config.from_mapping({key: value})
    assert str(info.value).startswith(key) and message in str(info.value)


def test_unreadable_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        boards.load(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        boards.load(str(broken))
    broken.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        boards.load(str(broken))


def test_the_documented_key_table_is_current():
    from edge_agent.tools import docs_tables
    text = docs_tables.CONFIGURATION.read_text()
    assert docs_tables.render(text) == text, "docs/CONFIGURATION.md is stale: run `make docs`"
    for key, _, _ in config.describe_keys():
        assert f"`{key}`" in text


def test_a_pin_that_is_no_version_is_a_configuration_error():
    """Else it pins nothing held: a name with no version serving would serve none."""
    from edge_agent.config import ConfigError, from_mapping

    assert from_mapping({"edge_agent_model_pins": {"m": "1.2"}}).edge_agent_model_pins == {
        "m": "1.2"}
    with pytest.raises(ConfigError) as refused:
        from_mapping({"edge_agent_model_pins": {"m": "v1.2"}})
    assert "edge_agent_model_pins.m" in str(refused.value)
    assert "without the leading 'v'" in str(refused.value)


@pytest.mark.parametrize("key", ["edge_agent_busy_poll_us", "edge_agent_grpc_max_workers"])
def test_a_retired_key_still_loads_with_a_warning(key, caplog):
    with caplog.at_level(logging.WARNING, logger="edge_agent.config"):
        config.from_mapping({key: 3})
    assert f"{key!r} is retired and has no effect" in caplog.text
