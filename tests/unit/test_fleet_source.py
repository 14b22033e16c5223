"""The board's reads (edge_agent.fleet.board) against an in-memory bucket that answers
conditional GETs as S3 does: what a read reports and keeps."""
from __future__ import annotations

import hashlib
import os
import time
from types import SimpleNamespace

import pytest
from nacl.signing import SigningKey

from edge_agent.config import from_mapping
from edge_agent.fleet import board
from edge_agent.fleet import document as d
from edge_agent.packaging.keys import public_key_text


class Bucket:
    """Objects by key; GET with If-None-Match answers 304 while the ETag is unchanged."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []

    def send(self, method, key, headers=None, accept=(), data=b"", **kwargs):
        if method == "PUT":
            self.puts.append(key)
            return SimpleNamespace(status_code=200, headers={})
        if key not in self.objects:
            return SimpleNamespace(status_code=404, headers={}, content=b"")
        etag = '"%s"' % hashlib.md5(self.objects[key]).hexdigest()
        if (headers or {}).get("If-None-Match") == etag:
            return SimpleNamespace(status_code=304, headers={"ETag": etag}, content=b"")
        return SimpleNamespace(status_code=200, headers={"ETag": etag},
                               content=self.objects[key])


class Manager:
    def set_fleet(self, wanted, dropped=()):
        self.wanted = dict(wanted)

    def rescan(self):
        pass

    def status(self, name):
        return None


@pytest.fixture
def source(tmp_path):
    trust = tmp_path / "trust"
    trust.mkdir(mode=0o755)
    key = SigningKey.generate()
    (trust / "deploy.pub").write_text(public_key_text(key.verify_key))
    os.makedirs(tmp_path / "repository")
    config = from_mapping({
        "edge_agent_deployment_url": "s3://bucket/p",
        "edge_agent_model_repository": str(tmp_path / "repository"),
        "edge_agent_deployment_trust": str(trust),
        "edge_agent_state_dir": str(tmp_path / "state"),
        "sagemaker_edge_core_device_name": "b-1",
        "sagemaker_edge_core_device_fleet_name": "plant"})
    bucket = Bucket()
    return board.FleetSource(config, Manager(), bucket), bucket, key


def test_a_document_that_does_not_verify_is_reported_while_it_stays(source):
    fleet, bucket, key = source
    document = d.Document(fleet="plant", sequence=1, expires=int(time.time()) + 3600,
                          baseline={}, created_at=d.format_time(time.time()))
    stranger = SigningKey.generate()
    bucket.objects["p/fleets/plant/deployment.json"] = d.sign(document, stranger)
    for _ in range(3):  # the second and third reads get 304 Not Modified
        status = fleet.step()
        assert [r["object"] for r in status["refused"]] == ["p/fleets/plant/deployment.json"]
        assert "not in edge_agent_deployment_trust" in status["refused"][0]["reason"]
    bucket.objects["p/fleets/plant/deployment.json"] = d.sign(document, key)
    status = fleet.step()
    assert status["refused"] == [] and status["sequence"] == 1
    del bucket.objects["p/fleets/plant/deployment.json"]
    bucket.objects["p/devices/b-1/deployment.json"] = b"not json"
    assert [r["object"] for r in fleet.step()["refused"]] == ["p/devices/b-1/deployment.json"]
    del bucket.objects["p/devices/b-1/deployment.json"]  # deleted: nothing left to refuse
    status = fleet.step()
    assert status["refused"] == [] and status["sequence"] == 1


class Streamed:
    """A package's GET: `chunks` chunks, `on_chunk` called as each is handed over."""

    def __init__(self, chunks: int, on_chunk):
        self.status_code, self.headers = 200, {"ETag": '"p"'}
        self.chunks, self.on_chunk, self.sent = chunks, on_chunk, 0

    def iter_content(self, size):
        for _ in range(self.chunks):
            self.sent += 1
            self.on_chunk()
            yield b"x" * 1024

    def close(self):
        pass


def test_the_agents_stop_does_not_wait_for_a_download(source, tmp_path):
    fleet, bucket, key = source
    response = Streamed(200, fleet.stop)  # the agent stops once the first chunk arrived
    documents = bucket.send

    def send(method, key, **kwargs):
        return response if key.endswith(".tar.gz") else documents(method, key, **kwargs)
    bucket.send = send
    package = d.Package("packages/m/1.0.tar.gz", "0" * 64, "1.0", 200 * 1024)
    document = d.Document(fleet="plant", sequence=1, expires=int(time.time()) + 3600,
                          baseline={"m": package, "n": package}, created_at="")
    bucket.objects["p/fleets/plant/deployment.json"] = d.sign(document, key)
    fleet.step()
    assert response.sent == 1  # not the other 199 chunks, nor the next package
    partial = tmp_path / "repository" / "m" / f".{board.package_file(package)}.partial"
    assert partial.stat().st_size == 1024  # kept for the next start
    assert not (tmp_path / "repository" / "n").exists()


class Serving(Manager):
    """Serves at once the version the fleet wants (as the manager does once it is held)."""

    def status(self, name):
        return {"version": self.wanted[name]} if name in self.wanted else None


def test_a_replaced_download_is_removed_once_its_successor_serves(source, tmp_path):
    fleet, bucket, key = source
    fleet.manager = Serving()
    repository = tmp_path / "repository" / "m"
    repository.mkdir()
    (repository / "by-hand.tar.gz").write_bytes(b"copied in by an operator")

    def publish(sequence, data, history=()):
        bucket.objects["p/packages/m.tar.gz"] = data
        package = d.Package("packages/m.tar.gz", hashlib.sha256(data).hexdigest(),
                            f"{sequence}.0", len(data))
        document = d.Document(fleet="plant", sequence=sequence, expires=int(time.time()) + 3600,
                              baseline={"m": package}, created_at="",
                              history={"m": history} if history else {})
        bucket.objects["p/fleets/plant/deployment.json"] = d.sign(document, key)
        return board.package_file(package), package

    documents = bucket.send

    def send(method, key, **kwargs):
        if key.endswith(".tar.gz"):
            data = bucket.objects[key]
            return SimpleNamespace(status_code=200, headers={"ETag": '"e"'}, close=lambda: None,
                                   iter_content=lambda size: iter([data]))
        return documents(method, key, **kwargs)
    bucket.send = send
    first, one = publish(1, b"one")
    assert fleet.step()["models"]["m"]["state"] == "serving"
    assert set(os.listdir(repository)) == {"by-hand.tar.gz", first}
    # 1.0 is the previous baseline (`fleet rollback` returns to it): kept
    second, two = publish(2, b"two", history=(one,))
    assert fleet.step()["models"]["m"]["serving"] == "2.0"
    assert set(os.listdir(repository)) == {"by-hand.tar.gz", first, second}
    # three baselines later, 1.0 is no longer named: removed once 3.0 serves
    third, _ = publish(3, b"three", history=(two,))
    assert fleet.step()["models"]["m"]["serving"] == "3.0"
    assert set(os.listdir(repository)) == {"by-hand.tar.gz", second, third}


def test_a_store_outage_is_reported_on_the_broker(source):
    """The store answers nothing: the board keeps what it applied, and says why on MQTT
    (the status object cannot be written then)."""
    import json

    from edge_agent.capture.destinations import DeliveryError

    fleet, bucket, key = source
    document = d.Document(fleet="plant", sequence=1, expires=int(time.time()) + 3600,
                          baseline={}, created_at="")
    bucket.objects["p/fleets/plant/deployment.json"] = d.sign(document, key)
    published: list[dict] = []
    fleet.set_publisher(lambda text: published.append(json.loads(text)))
    assert fleet.step()["unreadable"] == [] and published[-1]["sequence"] == 1
    working = bucket.send

    def down(method, key, **kwargs):
        raise DeliveryError(f"cannot reach the object store: {method} {key}", transient=True)
    bucket.send = down
    fleet.step()
    assert published[-1]["sequence"] == 1
    assert [u["object"] for u in published[-1]["unreadable"]] == \
        ["p/fleets/plant/deployment.json", "p/devices/b-1/deployment.json"]
    count = len(published)
    fleet.step()  # nothing new to say: not published again
    assert len(published) == count
    bucket.send = working
    assert fleet.step()["unreadable"] == [] and published[-1]["unreadable"] == []
    assert bucket.puts[-1] == "p/status/plant/b-1.json"


def test_an_unchanged_status_is_written_again_every_two_poll_periods(source):
    """`fleet status` flags boards not heard of for three poll periods: a board with nothing
    new to say must not look silent."""
    fleet, bucket, key = source
    now = [1_800_000_000.0]
    fleet._clock = lambda: now[0]
    document = d.Document(fleet="plant", sequence=1, expires=int(now[0]) + 10**6,
                          baseline={}, created_at="")
    bucket.objects["p/fleets/plant/deployment.json"] = d.sign(document, key)
    fleet.step()
    assert bucket.puts == ["p/status/plant/b-1.json"]
    period = fleet.config.edge_agent_deployment_poll_seconds
    now[0] += period
    fleet.step()
    assert len(bucket.puts) == 1  # unchanged, and recent: not written
    now[0] += period
    fleet.step()
    assert len(bucket.puts) == 2  # two periods since: written again
