"""Package downloads from a real SeaweedFS (edge_agent.fleet.transfer): interrupted by the
connection or by the store going down, they resume where they stopped (Range, the object's
ETag compared); a replaced object starts over; bytes that are not those the document names
never reach their final name."""
from __future__ import annotations

import hashlib
import os

import pytest

from edge_agent.capture.destinations import DeliveryError
from edge_agent.fleet import transfer

pytestmark = pytest.mark.native_only
DATA = os.urandom(3 * transfer.CHUNK + 12345)
SHA = hashlib.sha256(DATA).hexdigest()


class Recording:
    """The S3 client, recording each GET's headers and status; `cut_after` chunks into a
    body, the connection 'drops'."""

    def __init__(self, client, cut_after: int | None = None):
        self.client = client
        self.cut_after = cut_after
        self.calls: list[tuple[dict, int]] = []

    def send(self, method, key, **kwargs):
        response = self.client.send(method, key, **kwargs)
        self.calls.append((dict(kwargs.get("headers") or {}), response.status_code))
        if self.cut_after is not None:
            chunks, limit = response.iter_content, self.cut_after

            def cut(size):
                for index, chunk in enumerate(chunks(size)):
                    if index == limit:
                        raise ConnectionResetError("connection dropped")
                    yield chunk
            response.iter_content = cut
        return response


@pytest.fixture
def store(s3, s3_prefix):
    client = s3.client()
    client.put_object(f"{s3_prefix}/p.tar.gz", DATA)
    yield client, f"{s3_prefix}/p.tar.gz"
    client.close()


def interrupted(client, key, tmp_path) -> str:
    final = str(tmp_path / "1.0-x.tar.gz")
    with pytest.raises(DeliveryError, match="interrupted") as caught:
        transfer.download(Recording(client, cut_after=1), key, final, SHA, len(DATA))
    assert caught.value.transient and not os.path.exists(final)
    partial = tmp_path / ".1.0-x.tar.gz.partial"
    assert partial.stat().st_size == transfer.CHUNK  # what arrived is kept
    return final


def resumed(client, key, final, tmp_path) -> None:
    recording = Recording(client)
    transfer.download(recording, key, final, SHA, len(DATA))
    headers, status = recording.calls[-1]
    assert headers["Range"] == f"bytes={transfer.CHUNK}-" and status == 206
    with open(final, "rb") as f:
        assert f.read() == DATA
    assert sorted(os.listdir(tmp_path)) == ["1.0-x.tar.gz"]  # no partial file or tag left


def test_a_download_cut_off_resumes_where_it_stopped(store, tmp_path):
    client, key = store
    resumed(client, key, interrupted(client, key, tmp_path), tmp_path)


@pytest.mark.skipif(not os.environ.get("EDGE_AGENT_FULL_SCENARIOS"),
                    reason="restarts the store: make test-fleet")
def test_an_interrupted_download_resumes_after_the_store_comes_back(s3, store, tmp_path):
    client, key = store
    final = interrupted(client, key, tmp_path)
    s3.stop()
    with pytest.raises(DeliveryError) as caught:
        transfer.download(client, key, final, SHA, len(DATA))
    assert caught.value.transient and (tmp_path / ".1.0-x.tar.gz.partial").exists()
    s3.start()
    resumed(client, key, final, tmp_path)


def test_a_replaced_object_starts_over(store, tmp_path):
    client, key = store
    final = str(tmp_path / "p.tar.gz")
    with pytest.raises(DeliveryError):
        transfer.download(Recording(client, cut_after=1), key, final, SHA, len(DATA))
    replaced = os.urandom(len(DATA))
    client.put_object(key, replaced)  # another ETag: the partial file is not continued
    transfer.download(client, key, final, hashlib.sha256(replaced).hexdigest(), len(replaced))
    with open(final, "rb") as f:
        assert f.read() == replaced


def test_bytes_other_than_the_documents_never_reach_their_final_name(store, tmp_path):
    client, key = store
    final = str(tmp_path / "p.tar.gz")
    with pytest.raises(transfer.TransferError, match="not the one the document names"):
        transfer.download(client, key, final, "0" * 64, len(DATA))
    assert os.listdir(tmp_path) == []
    with pytest.raises(transfer.TransferError, match="not the one"):
        transfer.download(client, key, final, SHA, len(DATA) - 1)
    assert os.listdir(tmp_path) == []


def test_a_package_larger_than_the_free_disk_is_not_started(store, tmp_path):
    client, key = store
    st = os.statvfs(tmp_path)
    with pytest.raises(transfer.TransferError, match="not enough free disk"):
        transfer.download(client, key, str(tmp_path / "p.tar.gz"), SHA,
                          st.f_bavail * st.f_frsize + 1)
    assert os.listdir(tmp_path) == []


def test_a_sequence_is_claimed_once(store):
    """The conditional write two publishers race on (If-None-Match: *): the store keeps the
    first, the second is told (edge_agent.fleet.cli.Bucket.write raises then)."""
    client, key = store
    claim = key.rsplit("/", 1)[0] + "/fleets/plant/sequences/0000000007.json"
    assert transfer.put_if_absent(client, claim, b"first")
    assert not transfer.put_if_absent(client, claim, b"second")
    assert client.get_object(claim) == b"first"
