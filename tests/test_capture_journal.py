"""The capture journal and status log on their own: records, torn tails, group commit,
replay, compaction."""
from __future__ import annotations

import io
import os
import threading

from edge_agent import agent_pb2 as pb
from edge_agent.capture import records
from edge_agent.capture.journal import Journal
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
