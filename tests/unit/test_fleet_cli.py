"""The operator's commands without a store: credentials as the AWS CLI reads them, and the
document changes publish, promote and rollback make."""
from __future__ import annotations

import hashlib

import pytest

from edge_agent.fleet import cli
from edge_agent.fleet import document as d


def test_credentials_from_the_environment_then_the_profile(tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T"}
    assert tuple(cli.credentials(env)) == ("AK", "SK", "T")
    shared = tmp_path / "credentials"
    shared.write_text("[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n"
                      "[ops]\naws_access_key_id = O\naws_secret_access_key = OS\n"
                      "aws_session_token = OT\n")
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(shared)}
    assert tuple(cli.credentials(files)) == ("D", "DS", "")
    assert tuple(cli.credentials({**files, "AWS_PROFILE": "ops"})) == ("O", "OS", "OT")
    with pytest.raises(cli.FleetError, match="no credentials"):
        cli.credentials({**files, "AWS_PROFILE": "nobody"})


def package(version: str) -> d.Package:
    return d.Package(f"packages/m/{version}.tar.gz", hashlib.sha256(version.encode()).hexdigest(),
                     version, 10)


def test_a_new_stage_of_a_model_replaces_its_previous_one():
    stages = (d.Stage({"m": package("2.0"), "n": package("1.1")}, devices=("a",)),
              d.Stage({"k": package("3.0")}, percent=10))
    kept = cli._without(stages, "m")
    assert [set(s.models) for s in kept] == [{"n"}, {"k"}]
    assert cli._without(kept, "k") == (kept[0],)


def test_history_keeps_earlier_baselines_newest_first():
    document = d.Document("plant", 3, 0, {"m": package("2.0")},
                          history={"m": (package("1.0"),)})
    assert cli._with_history(document, "m", package("3.0"))["m"] == (package("2.0"), package("1.0"))
    assert cli._with_history(document, "m", package("2.0"))["m"] == (package("1.0"),)


def test_failures_are_those_of_the_staged_version():
    document = d.Document("plant", 3, 0, {"m": package("1.0")},
                          (d.Stage({"m": package("2.0")}, devices=("a", "b")),))
    statuses = [
        {"device": "a", "models": {"m": {"version": "2.0", "state": "failed"}}},
        {"device": "b", "models": {"m": {"version": "2.0", "state": "serving"}}},
        {"device": "c", "models": {"m": {"version": "1.0", "state": "failed"}}},
    ]
    assert cli._failures(statuses, document, "m") == ["a"]
    assert cli._failures(statuses, document, "other") == []


def test_a_deployment_url_needs_an_explicit_device_name_and_the_rest():
    from edge_agent.config import ConfigError, from_mapping

    settings = {"edge_agent_deployment_url": "s3://bucket/prefix",
                "edge_agent_model_repository": "/var/lib/models",
                "edge_agent_deployment_trust": "/etc/edge-agent/deploy-keys",
                "sagemaker_edge_core_device_name": "board-1",
                "sagemaker_edge_core_device_fleet_name": "plant"}
    from_mapping(settings)
    without_name = {k: v for k, v in settings.items() if k != "sagemaker_edge_core_device_name"}
    with pytest.raises(ConfigError, match="sagemaker_edge_core_device_name .the hostname"):
        from_mapping(without_name)
    with pytest.raises(ConfigError, match="edge_agent_model_repository"):
        from_mapping({**settings, "edge_agent_model_repository": ""})
    with pytest.raises(ConfigError, match="expected s3://BUCKET"):
        from_mapping({**settings, "edge_agent_deployment_url": "https://bucket/prefix"})


@pytest.mark.parametrize("key", ["sagemaker_edge_core_device_name",
                                 "sagemaker_edge_core_device_fleet_name"])
@pytest.mark.parametrize("name", ["a/b", "+", "#", "board+1", "plant/#", "../x", "-a"])
def test_a_deployment_refuses_names_that_are_not_topic_levels(key, name):
    """The names become MQTT topic levels and object keys (edge-agent/<fleet>/<device>/...)."""
    from edge_agent.config import ConfigError, from_mapping

    settings = {"edge_agent_deployment_url": "s3://bucket/prefix",
                "edge_agent_model_repository": "/var/lib/models",
                "edge_agent_deployment_trust": "/etc/edge-agent/deploy-keys",
                "sagemaker_edge_core_device_name": "board-1",
                "sagemaker_edge_core_device_fleet_name": "plant", key: name}
    with pytest.raises(ConfigError, match=key):
        from_mapping(settings)


class MemoryStore:
    """The S3 client's calls Bucket makes, in memory (If-None-Match: * honoured)."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def send(self, method, key, headers=None, data=b"", accept=(), **kwargs):
        from types import SimpleNamespace
        if method == "PUT":
            if (headers or {}).get("If-None-Match") == "*" and key in self.objects:
                return SimpleNamespace(status_code=412)
            self.objects[key] = data
            return SimpleNamespace(status_code=200)
        if key not in self.objects:
            return SimpleNamespace(status_code=404, content=b"")
        return SimpleNamespace(status_code=200, content=self.objects[key])

    def put_object(self, key, data):
        self.objects[key] = data

    def list_keys(self, prefix=""):
        return sorted(k for k in self.objects if k.startswith(prefix))


def test_a_publisher_builds_on_a_sequence_claimed_before_deployment_json_is_replaced():
    """Operator A claimed sequence 2 (its change: model n) and has not yet replaced
    deployment.json; operator B's sequence 3 must keep A's change."""
    from nacl.signing import SigningKey

    from edge_agent.packaging.keys import key_id

    key = SigningKey.generate()
    keys = {key_id(key.verify_key): key.verify_key}
    bucket = cli.Bucket.__new__(cli.Bucket)
    bucket.client, bucket.prefix, bucket.fleet = MemoryStore(), "p", "plant"
    first = d.Document("plant", 1, 2_000_000_000, {"m": package("1.0")})
    bucket.write(first, key)
    claimed = d.Document("plant", 2, 2_000_000_000, {"m": package("1.0"), "n": package("1.0")})
    bucket.client.objects["p/fleets/plant/sequences/0000000002.json"] = d.sign(claimed, key)
    current, highest = bucket.current(keys)
    assert highest == 2 and current == claimed
    # a claim that does not verify is not built on
    bucket.client.objects["p/fleets/plant/sequences/0000000003.json"] = b"{}"
    current, highest = bucket.current(keys)
    assert highest == 3 and current == claimed
