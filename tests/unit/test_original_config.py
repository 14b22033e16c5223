"""The original agent's configuration file, as its documentation's sample has it: every key of
the sample, the IoT credentials endpoint given as a host, a Cloud capture destination, loaded
in process. (An agent process serving with the file: tests/e2e/test_original_config_agent.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.platform import boards
from edge_agent import config as config_module
from edge_agent.capture.cloud import credentials_provider
from edge_agent.api.service import AgentService


SAMPLE = Path(__file__).parent.parent / "original" / "sagemaker_edge_config.json"


def _sample(**changes) -> dict:
    return {**json.loads(SAMPLE.read_text()), **changes}


def test_the_sample_loads_as_written_and_names_the_fleets_role_alias(tmp_path):
    config = boards.load(str(SAMPLE), {"edge_agent_state_dir": str(tmp_path)})
    service = AgentService(config)  # the capture destination's checks run here
    try:
        credentials = credentials_provider(config, environ={})
        assert credentials.url == ("https://c1a2b3c4d5e6f7.credentials.iot.us-west-2.amazonaws.com"
                                   "/role-aliases/SageMakerEdge-demo-fleet/credentials")
        assert credentials.thing_name == "device-1"
    finally:
        service.close()


def test_a_configured_role_alias_wins_over_the_fleets(tmp_path):
    config = config_module.from_mapping(_sample(edge_agent_iot_role_alias="my-alias",
                                                edge_agent_state_dir=str(tmp_path)))
    assert credentials_provider(config, environ={}).url.endswith(
        "/role-aliases/my-alias/credentials")


def test_without_fleet_or_alias_the_host_endpoint_stops_start_up(tmp_path):
    config = config_module.from_mapping(_sample(sagemaker_edge_core_device_fleet_name="",
                                                edge_agent_state_dir=str(tmp_path)))
    with pytest.raises(config_module.ConfigError, match="the role alias"):
        AgentService(config)


@pytest.mark.parametrize("destination,periodic", [("Cloud", False), ("Disk", True)])
def test_provider_none_refuses_cloud_uploads_at_start_up(tmp_path, destination, periodic):
    config = config_module.from_mapping(_sample(
        sagemaker_edge_provider_provider="None", edge_agent_state_dir=str(tmp_path),
        sagemaker_edge_core_capture_data_destination=destination,
        sagemaker_edge_core_capture_data_periodic_upload=periodic))
    with pytest.raises(config_module.ConfigError,
                       match="sagemaker_edge_provider_provider is None"):
        AgentService(config)


def test_provider_none_captures_to_disk(tmp_path):
    config = config_module.from_mapping(_sample(
        sagemaker_edge_provider_provider="None", edge_agent_state_dir=str(tmp_path),
        sagemaker_edge_core_capture_data_destination="Disk"))
    AgentService(config).close()


def test_an_unknown_provider_stops_start_up():
    with pytest.raises(config_module.ConfigError, match="sagemaker_edge_provider_provider"):
        config_module.from_mapping(_sample(sagemaker_edge_provider_provider="Custom"))


def test_keys_without_effect_are_explained():
    notes = config_module.compatibility_notes(config_module.from_mapping(_sample()))
    assert any(n.startswith("sagemaker_edge_provider_provider_path") and "no effect" in n
               for n in notes)
    assert any(n.startswith("sagemaker_edge_telemetry_libsystemd_path") and "no effect" in n
               for n in notes)
    assert config_module.compatibility_notes(config_module.from_mapping({})) == []
