"""CaptureData / GetCaptureDataStatus through the service core (in process, Disk destination
or an unreachable store): validation, status codes, batching, manifests, bounds, restarts."""
from __future__ import annotations

import base64
import errno
import json
import os
import threading
import time
import uuid

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.platform import boards
from edge_agent.capture.capture_calls import CaptureService
from edge_agent.config import ConfigError
from edge_agent.errors import StatusCode
from edge_agent.api.service import AgentService
from wire import add_array

from capture_helpers import (capture_request, delivered_ids, disk_manifests, expect, lines,
                             payload, status_of, wait_for, wait_status)


# --- the happy path and the layout ------------------------------------------------------------

def test_capture_is_written_with_its_manifest(make_service, tmp_path):
    service = make_service(sagemaker_edge_core_device_name="pi-7",
                           sagemaker_edge_core_device_fleet_name="shelf",
                           sagemaker_edge_core_folder_prefix="cams")
    request = capture_request(nbytes=5000)
    request.inference_timestamp.seconds = 1_700_000_000
    request.inference_timestamp.nanos = 5
    request.inputs.add(name="labels", encoding=pb.CSV, byte_data=b"a,b\n1,2\n")
    service.capture_data(request)
    wait_status(service, request.capture_id)

    manifests = disk_manifests(tmp_path / "out")
    [(folder, text)] = manifests.items()
    assert folder.startswith("cams/") and len(folder.split("/")) == 6  # prefix/Y/M/D/H/batch
    [line] = [json.loads(t) for t in text.splitlines()]
    assert line["capture_id"] == request.capture_id
    assert line["model_name"] == "m"
    assert line["inference_timestamp"] == "2023-11-14T22:13:20.000000005Z"
    assert (line["device_name"], line["device_fleet_name"]) == ("pi-7", "shelf")
    [x] = line["input_tensors"]
    assert (x["name"], x["data_type"], x["shape"], x["byte_length"]) == ("x", "UINT8", [5000], 5000)
    assert "data" not in x  # over the embed limit: its own file
    assert x["file"] == "payloads.bin"
    assert payload(x, lambda name: (tmp_path / "out" / folder / name).read_bytes()) == \
        np.arange(5000, dtype=np.uint8).tobytes()
    [y] = line["output_tensors"]
    assert base64.b64decode(y["data"]) == np.ones(2, np.float32).tobytes()
    [aux] = line["aux_inputs"]
    assert (aux["name"], aux["encoding"], base64.b64decode(aux["data"])) == ("labels", "CSV", b"a,b\n1,2\n")


@pytest.mark.parametrize("limit", [0, 100, 3072])
def test_base64_embed_limit(make_service, tmp_path, limit):
    service = make_service(sagemaker_edge_core_capture_data_base64_embed_limit=limit)
    at, over = capture_request(nbytes=limit), capture_request(nbytes=limit + 1)
    for request in (at, over):
        service.capture_data(request)
    wait_status(service, over.capture_id)
    wait_status(service, at.capture_id)
    by_id = {line["capture_id"]: line for line in lines(disk_manifests(tmp_path / "out"))}
    assert "data" in by_id[at.capture_id]["input_tensors"][0] or limit == 0
    assert "file" in by_id[over.capture_id]["input_tensors"][0]


def test_base64_embed_limit_above_3_kb_stops_start_up(make_service):
    with pytest.raises(ConfigError, match="base64_embed_limit: at most 3072"):
        make_service(sagemaker_edge_core_capture_data_base64_embed_limit=3073)


def test_batches_by_size_and_by_period(make_service, tmp_path):
    service = make_service(sagemaker_edge_core_capture_data_batch_size=4,
                           sagemaker_edge_core_capture_data_push_period_seconds=0.3)
    requests = [capture_request() for _ in range(10)]
    for request in requests:
        service.capture_data(request)
    for request in requests:
        wait_status(service, request.capture_id)
    sizes = sorted(len(text.splitlines()) for text in disk_manifests(tmp_path / "out").values())
    assert sizes == [2, 4, 4]  # two full batches, the rest after the push period
    assert sorted(delivered_ids(disk_manifests(tmp_path / "out"))) == sorted(r.capture_id for r in requests)


def test_model_need_not_be_loaded_and_timestamp_defaults_to_now(make_service, tmp_path):
    service = make_service()
    request = capture_request(model="never-loaded")
    before = time.time()
    service.capture_data(request)
    wait_status(service, request.capture_id)
    [line] = lines(disk_manifests(tmp_path / "out"))
    stamp = time.mktime(time.strptime(line["inference_timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= stamp <= time.time() + 1


# --- status codes -------------------------------------------------------------------------------

def test_duplicate_capture_id_is_already_exists(make_service):
    service = make_service()
    request = capture_request()
    service.capture_data(request)
    error = expect(StatusCode.ALREADY_EXISTS, service.capture_data, request)
    assert request.capture_id in error.message
    wait_status(service, request.capture_id)
    expect(StatusCode.ALREADY_EXISTS, service.capture_data, request)
    # The same UUID written differently is the same capture.
    expect(StatusCode.ALREADY_EXISTS, service.capture_data,
           capture_request(request.capture_id.upper()))


def test_future_timestamp_is_out_of_range(make_service):
    service = make_service()
    future = capture_request()
    future.inference_timestamp.seconds = int(time.time()) + 60
    error = expect(StatusCode.OUT_OF_RANGE, service.capture_data, future)
    assert "in the future" in error.message
    expect(StatusCode.NOT_FOUND, status_of, service, future.capture_id)  # nothing was kept
    skewed = capture_request()  # within the clock-skew tolerance
    skewed.inference_timestamp.seconds = int(time.time())
    skewed.inference_timestamp.nanos = 500_000_000
    service.capture_data(skewed)


@pytest.mark.parametrize("capture_id", [
    "", "x" * 129, "a/b", "../up", "a b", "tab\there", "line\n", "nul\0", "caf\u00e9", "{x}",
    "{123e4567-e89b-12d3-a456-426614174000}"])
def test_capture_id_outside_the_rule_is_invalid_argument(make_service, capture_id):
    service = make_service()
    request = capture_request()
    request.capture_id = capture_id
    error = expect(StatusCode.INVALID_ARGUMENT, service.capture_data, request)
    assert "1 to 128 letters, digits or . _ : -" in error.message
    expect(StatusCode.INVALID_ARGUMENT, status_of, service, capture_id)


# The original agent's C++ example names its captures capture<unix time> and
# captureshm<unix time>; any id of the rule is accepted and kept as given.
@pytest.mark.parametrize("capture_id", [
    "capture1700000000", "captureshm1700000000", "a", "x" * 128, "cam-1.frame_2:3",
    "not-a-uuid", "123"])
def test_capture_ids_of_the_original_clients_are_accepted(make_service, tmp_path, capture_id):
    service = make_service()
    request = capture_request(capture_id)
    service.capture_data(request)
    wait_status(service, capture_id)
    expect(StatusCode.ALREADY_EXISTS, service.capture_data, request)
    assert delivered_ids(disk_manifests(tmp_path / "out")) == [capture_id]


def test_ids_other_than_uuids_are_compared_exactly_and_survive_a_restart(make_service):
    service = make_service()
    service.capture_data(capture_request("capture1700000000"))
    service.capture_data(capture_request("Capture1700000000"))  # another id: case counts
    wait_status(service, "capture1700000000")
    wait_status(service, "Capture1700000000")
    expect(StatusCode.NOT_FOUND, status_of, service, "capture1700000001")
    service.close()

    again = make_service()
    assert status_of(again, "capture1700000000").status == pb.SUCCESS
    expect(StatusCode.ALREADY_EXISTS, again.capture_data, capture_request("capture1700000000"))
    again.capture_data(capture_request("capture1700000001"))
    wait_status(again, "capture1700000001")


def _bad_requests():
    def base():
        return pb.CaptureDataRequest(model_name="m", capture_id=str(uuid.uuid4()))
    no_metadata = base()
    no_metadata.input_tensors.add(byte_data=b"1234")
    unknown_type = base()
    add_array(unknown_type.input_tensors, "x", np.zeros(2, np.float32))
    unknown_type.input_tensors[0].tensor_metadata.data_type = 99
    wrong_length = base()
    add_array(wrong_length.output_tensors, "y", np.zeros(3, np.float32))
    wrong_length.output_tensors[0].byte_data = b"12"
    no_data = base()
    no_data.input_tensors.add().tensor_metadata.CopyFrom(
        pb.TensorMetadata(name=b"x", data_type=pb.UINT8, shape=[1]))
    negative = base()
    add_array(negative.input_tensors, "x", np.zeros(2, np.uint8))
    negative.input_tensors[0].tensor_metadata.shape[0] = -1
    aux_no_name = base()
    aux_no_name.inputs.add(encoding=pb.JSON, byte_data=b"{}")
    aux_no_data = base()
    aux_no_data.outputs.add(name="a", encoding=pb.JSON)
    bad_model = capture_request(model="no spaces")
    empty = base()
    return {"no metadata": (no_metadata, "tensor_metadata is missing"),
            "unknown type": (unknown_type, "unknown data type"),
            "wrong length": (wrong_length, "(12 bytes), got 2 bytes"),
            "no data": (no_data, "no data"),
            "negative shape": (negative, "negative dimension"),
            "aux without name": (aux_no_name, "needs a name"),
            "aux without data": (aux_no_data, "no data"),
            "bad model name": (bad_model, "model name"),
            "nothing": (empty, "nothing to capture")}


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_invalid_tensors_are_invalid_argument(make_service, case):
    service = make_service()
    request, message = _bad_requests()[case]
    error = expect(StatusCode.INVALID_ARGUMENT, service.capture_data, request)
    assert message in error.message
    # The id was not used up by the refused call.
    expect(StatusCode.NOT_FOUND, status_of, service, request.capture_id)


def test_unknown_capture_is_not_found(make_service):
    service = make_service()
    expect(StatusCode.NOT_FOUND, status_of, service, str(uuid.uuid4()))
    service.capture_data(capture_request())
    expect(StatusCode.NOT_FOUND, status_of, service, str(uuid.uuid4()))


def test_calls_after_close_are_unavailable_not_internal(make_service):
    service = make_service()
    accepted = capture_request()
    service.capture_data(accepted)
    service.close()
    error = expect(StatusCode.UNAVAILABLE, service.capture_data, capture_request())
    assert "shutting down" in error.message
    expect(StatusCode.UNAVAILABLE, status_of, service, accepted.capture_id)


def test_shared_memory_tensor_is_copied_at_call_time(make_service, tmp_path):
    from edge_agent.shm_client import SysVSegment
    from wire import add_shm_tensor

    service = make_service()
    request = pb.CaptureDataRequest(model_name="m", capture_id=str(uuid.uuid4()))
    original = np.arange(1000, dtype=np.float32)
    with SysVSegment.create(original.nbytes) as segment:
        add_shm_tensor(request.input_tensors, "x", segment.write(original))
        service.capture_data(request)
        segment.write(np.zeros(1000, np.float32))  # the client reuses its segment at once
    wait_status(service, request.capture_id)
    [line] = lines(disk_manifests(tmp_path / "out"))
    folder = next(iter(disk_manifests(tmp_path / "out")))
    entry = line["input_tensors"][0]
    assert payload(entry, lambda name: (tmp_path / "out" / folder / name).read_bytes()) == \
        original.tobytes()


def test_auxiliary_data_in_shared_memory_is_copied_at_call_time(make_service, tmp_path):
    from edge_agent.shm_client import ShmTensor, SysVSegment

    service = make_service()
    request = capture_request()
    text = b'{"camera": "front", "exposure_ms": 8}'
    with SysVSegment.create(64) as segment:
        written = segment.write(np.frombuffer(text, np.uint8))
        request.inputs.add(name="meta", encoding=pb.JSON, shared_memory_handle=written.handle())
        service.capture_data(request)
        segment.write(np.zeros(64, np.uint8))  # the client reuses its segment at once
        refused = capture_request()
        refused.outputs.add(name="late", encoding=pb.JSON, shared_memory_handle=ShmTensor(
            segment.shmid, 60, 8, np.uint8, (8,)).handle())  # 4 bytes past the end
        error = expect(StatusCode.INVALID_ARGUMENT, service.capture_data, refused)
        assert error.message.startswith("auxiliary output 0 'late'")
    wait_status(service, request.capture_id)
    folder, _ = next(iter(disk_manifests(tmp_path / "out").items()))
    [line] = lines(disk_manifests(tmp_path / "out"))
    [entry] = line["aux_inputs"]
    assert payload(entry, lambda name: (tmp_path / "out" / folder / name).read_bytes()) == text


def test_shared_memory_tensor_out_of_bounds_is_invalid_argument(make_service):
    from edge_agent.shm_client import SysVSegment, ShmTensor
    from wire import add_shm_tensor

    service = make_service()
    request = pb.CaptureDataRequest(model_name="m", capture_id=str(uuid.uuid4()))
    with SysVSegment.create(64) as segment:
        add_shm_tensor(request.input_tensors, "x",
                       ShmTensor(segment.shmid, 32, 64, np.uint8, (64,)))
        expect(StatusCode.INVALID_ARGUMENT, service.capture_data, request)


def test_a_shared_memory_size_mismatch_names_the_tensor_as_capture_does(make_service):
    from edge_agent.shm_client import SysVSegment, ShmTensor
    from wire import add_shm_tensor

    service = make_service()
    request = capture_request()
    del request.output_tensors[:]
    with SysVSegment.create(64) as segment:
        add_shm_tensor(request.output_tensors, "y", ShmTensor(segment.shmid, 0, 8, np.uint8, (4,)))
        error = expect(StatusCode.INVALID_ARGUMENT, service.capture_data, request)
    assert error.message.startswith("output tensor 0 'y': the shared-memory handle says 8 bytes")


@pytest.mark.parametrize("shape", [[0] + [1] * 70, [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]],
                         ids=["71 dimensions", "empty but huge"])
def test_empty_tensors_of_shapes_numpy_cannot_make_are_captured_as_bytes(make_service, shape):
    """Stored as bytes, never made an array: a shape NumPy refuses is no reason to refuse
    (and never INTERNAL)."""
    service = make_service()
    request = capture_request()
    request.input_tensors.add(byte_data=b"").tensor_metadata.CopyFrom(
        pb.TensorMetadata(name=b"z", data_type=pb.FLOAT32, shape=shape))
    service.capture_data(request)
    wait_status(service, request.capture_id)


# --- bounds -------------------------------------------------------------------------------------


def test_delivered_captures_free_the_buffer(make_service):
    service = make_service(sagemaker_edge_core_capture_data_buffer_size=2,
                           sagemaker_edge_core_capture_data_batch_size=2)
    for _ in range(3):  # each pair is delivered, so the buffer never stays full
        requests = [capture_request(), capture_request()]
        for request in requests:
            service.capture_data(request)
        for request in requests:
            wait_status(service, request.capture_id)


# --- failures and restarts ----------------------------------------------------------------------

def test_refused_for_good_ends_in_failure_with_the_reason(make_service, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    service = make_service(sagemaker_edge_core_capture_data_disk_path=str(blocker / "out"),
                           edge_agent_capture_max_attempts=2)
    request = capture_request()
    service.capture_data(request)
    wait_status(service, request.capture_id, pb.FAILURE)
    reply = status_of(service, request.capture_id)
    assert "Not a directory" in reply.reason and str(blocker) in reply.reason


def test_statuses_and_used_ids_survive_a_restart(make_service):
    service = make_service()
    done = capture_request()
    service.capture_data(done)
    wait_status(service, done.capture_id)
    service.close()

    again = make_service()
    assert status_of(again, done.capture_id).status == pb.SUCCESS
    expect(StatusCode.ALREADY_EXISTS, again.capture_data, done)


def test_journal_is_compacted_once_delivered(make_service):
    service = make_service(edge_agent_capture_max_spool_mb=8,  # 1 MiB segments
                           sagemaker_edge_core_capture_data_buffer_size=100)
    requests = [capture_request(nbytes=100_000) for _ in range(40)]
    for request in requests:
        service.capture_data(request)
    for request in requests:
        wait_status(service, request.capture_id)
    journal = service.capture.journal
    wait_for(lambda: journal.total_bytes < 2 * journal.segment_bytes, what="compaction")
    assert len(os.listdir(journal.directory)) <= 2


def test_no_capture_files_until_first_capture(make_service, tmp_path):
    make_service()
    assert not (tmp_path / "state" / "capture").exists()


def test_cloud_without_settings_stops_start_up(make_service, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        make_service(sagemaker_edge_core_capture_data_destination="Cloud")
    assert "sagemaker_edge_provider_s3_bucket_name" in str(info.value)
    assert "credentials" in str(info.value)
    with pytest.raises(ConfigError, match="sagemaker_edge_provider_aws_cert_file"):
        make_service(sagemaker_edge_core_capture_data_destination="Cloud",
                     sagemaker_edge_provider_s3_bucket_name="b",
                     sagemaker_edge_provider_aws_iot_cred_endpoint="creds.example/role-aliases/r/credentials")
    with pytest.raises(ConfigError, match="the endpoint"):
        make_service(sagemaker_edge_core_capture_data_destination="Cloud",
                     sagemaker_edge_provider_s3_bucket_name="b", sagemaker_edge_core_region="",
                     edge_agent_s3_access_key_id="k", edge_agent_s3_secret_access_key="s")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    make_service(sagemaker_edge_core_capture_data_destination="Cloud",
                 sagemaker_edge_provider_s3_bucket_name="b")
    with pytest.raises(ConfigError, match="periodic_upload needs"):
        make_service(sagemaker_edge_core_capture_data_periodic_upload=True)


# --- exactly once, disk errors, shutdown (review fixes) -----------------------------------------

def test_delivered_captures_are_not_delivered_again_after_a_restart(make_service, tmp_path):
    # The status log remembers 3 outcomes; the journal still holds all 10 captures. What is
    # delivered is in the journal itself (DONE), so the restart finds nothing to deliver.
    settings = {"edge_agent_capture_status_history": 3,
                "sagemaker_edge_core_capture_data_batch_size": 4}
    service = make_service(**settings)
    requests = [capture_request() for _ in range(10)]
    for request in requests:
        service.capture_data(request)
    wait_for(lambda: service.capture.pending == 0, what="all 10 delivered")
    service.close()

    again = make_service(**settings)
    assert again.capture.pending == 0
    again.close()  # would flush anything replayed
    ids = delivered_ids(disk_manifests(tmp_path / "out"))
    assert sorted(ids) == sorted(r.capture_id for r in requests)  # once each


def test_a_disk_error_while_sealing_does_not_stop_delivery(make_service, tmp_path, monkeypatch):
    from edge_agent.capture import entries

    service = make_service(sagemaker_edge_core_capture_data_batch_size=2)
    first = capture_request()
    service.capture_data(first)  # starts the journal
    journal = service.capture.journal
    real_append = journal.append
    failures = []

    def append(record_type, payload, pin=True):
        if record_type == entries.BATCH and len(failures) < 2:
            failures.append(record_type)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(record_type, payload, pin)

    monkeypatch.setattr(journal, "append", append)
    requests = [first] + [capture_request() for _ in range(3)]
    for request in requests[1:]:
        service.capture_data(request)
    for request in requests:  # the thread survived and put the captures back
        wait_status(service, request.capture_id)
    assert len(failures) == 2
    assert service.capture.batcher._thread.is_alive()
    assert sorted(delivered_ids(disk_manifests(tmp_path / "out"))) == \
        sorted(r.capture_id for r in requests)


def test_a_seal_whose_flush_failed_is_superseded_on_replay(make_service, tmp_path):
    """BATCH [a, b] written but not flushed (the thread sealed a, b, c anew), then a crash
    before either was delivered: each capture is delivered once, in the newest batch."""
    from edge_agent.capture import entries
    from edge_agent.capture.journal import Journal
    from edge_agent.capture.validate import checked_capture

    journal = Journal(str(tmp_path / "state" / "capture" / "journal"), 1 << 20)
    journal.open()
    captured = [checked_capture(capture_request()) for _ in range(3)]
    for key, stored in captured:
        journal.append(entries.ACCEPT, entries.encode_accept(key, stored))
    keys = [key for key, _ in captured]
    journal.append(entries.BATCH, entries.encode_batch(entries.SealedBatch(1, keys[:2])))
    journal.append(entries.BATCH, entries.encode_batch(entries.SealedBatch(2, keys)))
    journal.close()

    service = make_service()  # replays the journal and delivers what it holds
    for _, stored in captured:  # not service.close()'s flush: it gives up after a time
        wait_status(service, stored.capture_id)
    service.close()
    manifests = disk_manifests(tmp_path / "out")
    assert sorted(delivered_ids(manifests)) == sorted(stored.capture_id for _, stored in captured)
    assert len(manifests) == 1


def test_failed_flush_is_internal_and_the_capture_is_never_delivered(make_service, tmp_path,
                                                                    monkeypatch):
    service = make_service()
    delivered = capture_request()
    service.capture_data(delivered)  # the journal is open: the next flush is the capture's
    real_fdatasync = os.fdatasync
    calls = []

    def fdatasync(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    refused = capture_request()
    error = expect(StatusCode.INTERNAL, service.capture_data, refused)
    assert "Input/output error" in error.message and "not accepted" in error.message
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    expect(StatusCode.NOT_FOUND, status_of, service, refused.capture_id)
    wait_status(service, delivered.capture_id)
    service.close()

    again = make_service()  # the record is in the journal, and so is its ABORT
    assert again.capture.pending == 0
    again.close()
    assert delivered_ids(disk_manifests(tmp_path / "out")) == [delivered.capture_id]


def test_shared_memory_truncated_during_the_copy_is_refused_before_journaling(make_service,
                                                                             monkeypatch):
    from edge_agent.shm.segments import ShmCall
    from edge_agent.shm_client import PosixSegment
    from wire import add_shm_tensor

    service = make_service()
    request = pb.CaptureDataRequest(model_name="m", capture_id=str(uuid.uuid4()))
    segment = PosixSegment.create(8192)
    real_read = ShmCall.read

    def read_then_truncate(self, handle, nbytes, tensor_name):
        view = real_read(self, handle, nbytes, tensor_name)
        os.truncate(f"/dev/shm{segment.name}", 0)  # the owner shrinks it before the copy
        return view

    try:
        add_shm_tensor(request.input_tensors, "x", segment.write(np.ones(2048, np.float32)))
        monkeypatch.setattr(ShmCall, "read", read_then_truncate)
        error = expect(StatusCode.INVALID_ARGUMENT, service.capture_data, request)
        assert "truncated" in error.message and "not accepted" in error.message
    finally:
        segment.free()
    expect(StatusCode.NOT_FOUND, status_of, service, request.capture_id)
    retry = capture_request(request.capture_id)  # the id was not used up
    service.capture_data(retry)
    wait_status(service, retry.capture_id)


class BlockingDestination:
    """A store whose writes hang until released (an S3 PUT waiting out its timeout)."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_batch(self, folder, files):
        self.entered.set()
        self.release.wait()

    def where(self, folder):
        return folder


def test_shutdown_gives_up_a_hung_write_after_the_flush_time(make_service, tmp_path, monkeypatch):
    from edge_agent.capture.capture_calls import CaptureService

    store = BlockingDestination()
    monkeypatch.setattr(CaptureService, "_make_destination", lambda self: store)
    service = make_service(edge_agent_capture_flush_seconds=0.1)
    request = capture_request()
    service.capture_data(request)
    wait_for(store.entered.is_set, what="the write to start")
    closer = threading.Thread(target=service.close)
    closer.start()
    closer.join(60)  # a watchdog, not a timing assertion: without the bound it never returns
    hung = closer.is_alive()
    store.release.set()  # the write returns to a closed journal: nothing is recorded
    closer.join()
    assert not hung
    monkeypatch.undo()

    # The batch stayed in the journal: the next service delivers it (and may have done so
    # already by now, so its pending count proves nothing either way).
    again = make_service()
    wait_status(again, request.capture_id)
    assert delivered_ids(disk_manifests(tmp_path / "out")) == [request.capture_id]


def test_the_agent_captures_through_the_capture_service_its_composer_gives(tmp_path):
    """AgentService builds no capture service of its own when given a factory (the serve path
    passes CaptureService): the one made from its configuration serves CaptureData and
    GetCaptureDataStatus."""
    config = boards.load(None, {
        "edge_agent_state_dir": str(tmp_path / "state"),
        "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "out"),
        "sagemaker_edge_core_capture_data_push_period_seconds": 0.05})
    made = []

    def make_capture(given):
        made.append(CaptureService(given))
        return made[-1]

    service = AgentService(config, make_capture=make_capture)
    try:
        assert made == [service.capture] and made[0].config is config
        request = capture_request()
        service.capture_data(request)
        wait_status(service, request.capture_id)
        assert delivered_ids(disk_manifests(tmp_path / "out")) == [request.capture_id]
    finally:
        service.close()


def test_a_capture_factory_that_refuses_the_configuration_stops_the_agent(tmp_path):
    config = boards.load(None, {"edge_agent_state_dir": str(tmp_path / "state")})

    def refuse(given):
        raise ConfigError("sagemaker_edge_core_capture_data_destination: refused here")

    with pytest.raises(ConfigError, match="refused here"):
        AgentService(config, make_capture=refuse)
