"""The capture journal and status log on their own: records, torn tails, group commit,
replay, compaction; durable directories, the Disk destination's temporary files, the
periodic upload."""
from __future__ import annotations

import errno
import io
import os
import threading

import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.capture import records
from edge_agent.capture.destinations import DiskDestination
from edge_agent.capture.journal import Journal, NotDurable
from edge_agent.capture.manifest import BatchFile
from edge_agent.capture.status import Outcome, StatusLog


def test_records_round_trip_and_stop_at_damage():
    data = records.encode(1, b"first") + records.encode(2, b"") + records.encode(1, b"third")
    good, end, problem = records.read_records(io.BytesIO(data))
    assert [(r.type, r.payload) for r in good] == [(1, b"first"), (2, b""), (1, b"third")]
    assert (end, problem) == (len(data), None)

    torn = data[:-2]
    good, end, problem = records.read_records(io.BytesIO(torn))
    assert len(good) == 2 and problem == "short payload" and end == good[-1].offset + good[-1].size

    flipped = bytearray(data)
    flipped[records.HEADER.size + 1] ^= 0xFF  # inside the first payload
    good, end, problem = records.read_records(io.BytesIO(bytes(flipped)))
    assert good == [] and end == 0 and problem == "CRC mismatch"


def test_replay_returns_every_record_and_cuts_a_torn_tail(tmp_path):
    journal = Journal(str(tmp_path), segment_bytes=1 << 20)
    assert journal.open() == []
    locations = [journal.append(1, f"record {i}".encode()) for i in range(5)]
    assert journal.read(locations[3]) == b"record 3"
    journal.close()
    segment = tmp_path / "seg-00000001.log"
    with open(segment, "ab") as f:
        f.write(records.encode(1, b"never acknowledged")[:-3])  # a crash mid-append

    again = Journal(str(tmp_path), segment_bytes=1 << 20)
    replayed = again.open()
    assert [r.payload for _, r in replayed] == [f"record {i}".encode() for i in range(5)]
    assert segment.stat().st_size == sum(loc.size for loc in locations)  # tail cut
    assert again.append(1, b"after").segment == 2  # appends go to a new segment


def test_concurrent_appends_are_all_durable_and_distinct(tmp_path):
    journal = Journal(str(tmp_path), segment_bytes=4096)  # rotates many times
    journal.open()
    written: list = []

    def writer(n):
        for i in range(200):
            payload = f"{n}:{i}".encode() * 10
            written.append((journal.append(1, payload), payload))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for location, payload in written:
        assert journal.read(location) == payload
    journal.close()
    replayed = Journal(str(tmp_path), segment_bytes=4096).open()
    assert sorted(r.payload for _, r in replayed) == sorted(p for _, p in written)


def test_unpinned_segments_are_deleted_oldest_first(tmp_path):
    journal = Journal(str(tmp_path), segment_bytes=100)
    journal.open()
    first = journal.append(1, b"a" * 120)  # fills segment 1, the next append rotates
    second = journal.append(1, b"b" * 120)
    assert (first.segment, second.segment) == (1, 2)
    journal.unpin([second.segment])
    assert sorted(os.listdir(tmp_path))[:2] == ["seg-00000001.log", "seg-00000002.log"]  # 1 still pinned
    journal.unpin([first.segment])
    assert "seg-00000001.log" not in os.listdir(tmp_path)
    assert "seg-00000002.log" not in os.listdir(tmp_path)


def test_status_log_persists_and_forgets_beyond_its_history(tmp_path):
    path = str(tmp_path / "status.log")
    statuses = StatusLog(path, history=3)
    statuses.open()
    keys = [bytes([i]) * 16 for i in range(8)]
    assert statuses.reserve(keys[0]) is None
    assert statuses.reserve(keys[0]).status == pb.IN_PROGRESS
    for i, key in enumerate(keys):
        statuses.finish([(key, Outcome(pb.FAILURE, f"reason {i}") if i == 7 else Outcome(pb.SUCCESS))])
    statuses.close()

    again = StatusLog(path, history=3)
    again.open()
    assert again.get(keys[7]) == Outcome(pb.FAILURE, "reason 7")
    assert again.get(keys[5]) == Outcome(pb.SUCCESS, "")
    assert again.get(keys[0]) is None  # older than the history
    assert os.path.getsize(path) < 8 * 30  # rewritten, not grown without bound


# --- failed flushes, durable directories, temp files, the periodic upload -------------------------

def test_a_failed_flush_fails_the_append_and_unpins_its_segment(tmp_path, monkeypatch):
    journal = Journal(str(tmp_path), segment_bytes=1 << 20)
    journal.open()

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(NotDurable) as info:
        journal.append(1, b"maybe on disk")
    monkeypatch.undo()
    assert journal.read(info.value.location) == b"maybe on disk"  # written, just not flushed
    assert journal._pins[info.value.location.segment] == 0
    assert journal.read(journal.append(1, b"next")) == b"next"  # the journal goes on
    journal.close()


@pytest.fixture
def synced_directories(monkeypatch):
    """The paths of every directory fsync'ed from now on."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):
            synced.append(path)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_disk_destination_flushes_every_directory_it_creates(tmp_path, synced_directories):
    root = tmp_path / "out"
    DiskDestination(str(root)).write_batch("cams/2026/01/02/03/b1", [BatchFile("manifest.jsonl", b"{}\n")])
    created = [root, *(root / "cams/2026/01/02/03/b1").parents][:7]
    assert {str(tmp_path)} | {str(d) for d in created} <= set(synced_directories)
    assert (root / "cams/2026/01/02/03/b1/manifest.jsonl").read_bytes() == b"{}\n"


def test_first_capture_flushes_the_new_state_directories(tmp_path, synced_directories):
    from edge_agent.capture.capture_calls import CaptureService
    from edge_agent.platform.boards import load

    from capture_helpers import capture_request

    state = tmp_path / "state"
    service = CaptureService(load(None, {"edge_agent_state_dir": str(state),
                                         "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "out")}))
    try:
        service.capture(capture_request())
    finally:
        service.close()
    # capture/ holds status.log and journal/; journal/ the segment; state/ holds capture/.
    assert {str(tmp_path), str(state), str(state / "capture"),
            str(state / "capture" / "journal")} <= set(synced_directories)


def test_disk_destination_never_follows_a_planted_temporary_file(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = tmp_path / "out" / "b1"
    folder.mkdir(parents=True)
    (folder / "manifest.jsonl.tmp").symlink_to(victim)  # or a leftover of a crash
    DiskDestination(str(tmp_path / "out")).write_batch("b1", [BatchFile("manifest.jsonl", b"new\n")])
    assert victim.read_text() == "precious"
    assert (folder / "manifest.jsonl").read_bytes() == b"new\n"
    assert not os.path.lexists(folder / "manifest.jsonl.tmp")


class RecordingStore:
    def __init__(self):
        self.keys: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def put_object(self, key, data):
        self.entered.set()
        self.release.wait()
        self.keys.append(key)


def _batch_on_disk(root, folder):
    DiskDestination(str(root), fsync=False).write_batch(folder, [BatchFile("manifest.jsonl", b"{}\n")])


def test_periodic_upload_walks_the_tree_once_then_takes_what_is_written(tmp_path, monkeypatch):
    from edge_agent.capture import upload

    _batch_on_disk(tmp_path, "2026/01/01/00/old")  # left by an earlier run
    walks = []
    real_walk = upload.pending_batches
    monkeypatch.setattr(upload, "pending_batches", lambda root: walks.append(root) or real_walk(root))
    store = RecordingStore()
    uploader = upload.PeriodicUploader(str(tmp_path), 60, lambda: store)
    assert uploader.upload_pending() == 1
    destination = DiskDestination(str(tmp_path), fsync=False, on_written=uploader.enqueue)
    destination.write_batch("2026/01/01/01/new", [BatchFile("manifest.jsonl", b"{}\n")])
    assert uploader.upload_pending() == 1
    assert uploader.upload_pending() == 0
    assert walks == [str(tmp_path)]  # once, at the first period
    assert store.keys == ["2026/01/01/00/old/manifest.jsonl", "2026/01/01/01/new/manifest.jsonl"]
    assert os.path.exists(tmp_path / "2026/01/01/01/new" / upload.UPLOADED)


def test_periodic_upload_stop_does_not_wait_for_a_hung_put(tmp_path):
    from edge_agent.capture.upload import PeriodicUploader

    _batch_on_disk(tmp_path, "b1")
    store = RecordingStore()
    store.release.clear()
    uploader = PeriodicUploader(str(tmp_path), 0.01, lambda: store)
    uploader.start()
    assert store.entered.wait(60)
    assert uploader.stop(0.05) is False  # returned with the PUT still in flight
    store.release.set()
    assert uploader.stop(60) is True
