"""Capture end to end: real agent processes, a real S3 server (SeaweedFS on loopback), the
Python client and the CLI; outages, kill -9 and restarts."""
from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from edge_agent.errors import AgentError, StatusCode

from capture_helpers import delivered_ids, disk_manifests, lines, payload, s3_manifests, wait_for

FAST = {"sagemaker_edge_core_capture_data_push_period_seconds": 0.1,
        "edge_agent_capture_retry_max_seconds": 0.2}


def wait_all(client, capture_ids, status="SUCCESS", timeout=60):
    for cid in capture_ids:
        wait_for(lambda: client.get_capture_data_status(cid) == status, timeout=timeout,
                 what=f"{cid} to be {status}")


def test_objects_land_with_the_documented_keys_and_content(start_agent, s3, s3_prefix):
    agent = start_agent(**s3.agent_settings(s3_prefix), **FAST,
                        sagemaker_edge_core_device_name="pi-1")
    big = np.arange(2000, dtype=np.float32)  # 8000 bytes: over the embed limit
    with agent.client() as client:
        cid = client.capture_data("cam", {"image": big}, [np.array([1, 2], np.int64)],
                                  aux_inputs={"meta": ('{"k": 1}', "JSON")})
        assert str(uuid.UUID(cid)) == cid
        wait_all(client, [cid])
    store = s3.client()
    manifests = s3_manifests(store, s3_prefix)
    [(folder, text)] = manifests.items()
    year, month, day, hour, batch_id = folder.split("/")[1:]
    assert folder.startswith(f"{s3_prefix}/") and len(year) == 4 and uuid.UUID(batch_id)
    [line] = [json.loads(t) for t in text.splitlines()]
    assert (line["capture_id"], line["model_name"], line["device_name"]) == (cid, "cam", "pi-1")
    image = line["input_tensors"][0]
    assert (image["name"], image["data_type"], image["shape"]) == ("image", "FLOAT32", [2000])
    assert image["file"] == "payloads.bin"
    assert payload(image, lambda name: store.get_object(f"{folder}/{name}")) == big.tobytes()
    assert base64.b64decode(line["output_tensors"][0]["data"]) == np.array([1, 2], np.int64).tobytes()
    assert base64.b64decode(line["aux_inputs"][0]["data"]) == b'{"k": 1}'
    assert sorted(store.list_keys(s3_prefix)) == sorted([f"{folder}/manifest.jsonl",
                                                       f"{folder}/payloads.bin"])


def test_store_outage_loses_nothing(start_agent, s3, s3_prefix):
    agent = start_agent(**s3.agent_settings(s3_prefix), **FAST,
                        sagemaker_edge_core_capture_data_batch_size=4)
    with agent.client() as client:
        before = [client.capture_data("m", [np.zeros(4, np.uint8)], []) for _ in range(4)]
        wait_all(client, before)
        s3.stop()
        try:
            during = [client.capture_data("m", [np.full(4, i, np.uint8)], []) for i in range(10)]
            # Unreachable: retried with backoff, still in progress, nothing dropped.
            assert {client.get_capture_data_status(c) for c in during} == {"IN_PROGRESS"}
            wait_for(lambda: "will retry" in agent.log(), what="a failed try in the log")
        finally:
            s3.start()
        wait_all(client, during)
    ids = delivered_ids(s3_manifests(s3.client(), s3_prefix))
    assert sorted(ids) == sorted(before + during)


@pytest.mark.parametrize("destination", ["Disk", "Cloud"])
def test_kill_9_mid_batch_loses_and_duplicates_nothing(start_agent, tmp_path, s3, s3_prefix,
                                                      destination):
    settings = {"sagemaker_edge_core_capture_data_batch_size": 7,
                "sagemaker_edge_core_capture_data_push_period_seconds": 30,
                "sagemaker_edge_core_capture_data_buffer_size": 1000,
                "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "captures"),
                "edge_agent_capture_retry_max_seconds": 0.2}
    if destination == "Cloud":
        settings.update(s3.agent_settings(s3_prefix))
    workdir = tmp_path / "agent"
    agent = start_agent(workdir=workdir, **settings)
    with agent.client() as client:
        acknowledged = [client.capture_data("m", [np.full(100, i % 256, np.uint8)], [])
                        for i in range(60)]  # 8 full batches in flight or written, 4 waiting
    agent.stop(signal.SIGKILL)

    settings["sagemaker_edge_core_capture_data_push_period_seconds"] = 0.1
    again = start_agent(workdir=workdir, **settings)
    with again.client() as client:
        wait_all(client, acknowledged)
        with pytest.raises(AgentError) as info:
            client.capture_data("m", [np.zeros(1, np.uint8)], [], capture_id=acknowledged[0])
        assert info.value.code == StatusCode.ALREADY_EXISTS
    manifests = (disk_manifests(tmp_path / "captures") if destination == "Disk"
                 else s3_manifests(s3.client(), s3_prefix))
    ids = delivered_ids(manifests)
    assert sorted(ids) == sorted(acknowledged)  # every one, exactly once


def test_crash_after_writing_before_recording_rewrites_the_same_batch(tmp_path):
    """The agent dies between writing a batch and recording its outcome: the next start writes
    the same batch again, under the same keys, so each capture is still there exactly once."""
    # The batch is sealed when its third capture arrives, never by age (a long push period):
    # one batch, however slow the machine.
    settings = {"edge_agent_state_dir": str(tmp_path / "state"),
                "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "out"),
                "sagemaker_edge_core_capture_data_batch_size": 3,
                "sagemaker_edge_core_capture_data_push_period_seconds": 3600}
    # The delivery thread dies right after the batch is written, but only once all three
    # replies are out: dying as soon as it may would lose the third reply while its capture,
    # journaled, is still delivered (rightly, but not what this test counts).
    script = textwrap.dedent(f"""
        import os, threading, uuid, numpy as np
        from edge_agent import agent_pb2 as pb, boards
        from edge_agent.capture.status import StatusLog
        from edge_agent.service import AgentService
        from edge_agent.tensors import add_array
        replied = threading.Event()
        StatusLog.finish = lambda *a: (replied.wait(), os._exit(9))
        service = AgentService(boards.load(None, {settings!r}))
        for i in range(3):
            r = pb.CaptureDataRequest(model_name="m", capture_id=str(uuid.uuid4()))
            add_array(r.input_tensors, "x", np.zeros(4, np.uint8))
            service.capture_data(r)
            print(r.capture_id, flush=True)
        replied.set()
        import time; time.sleep(30)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 9, run.stderr
    acknowledged = run.stdout.split()
    [first_folder] = disk_manifests(tmp_path / "out")

    from edge_agent import agent_pb2 as pb
    from edge_agent import boards
    from edge_agent.service import AgentService
    service = AgentService(boards.load(None, settings))
    try:
        for cid in acknowledged:
            wait_for(lambda: service.get_capture_data_status(
                pb.GetCaptureDataStatusRequest(capture_id=cid)).status == pb.SUCCESS)
    finally:
        service.close()
    manifests = disk_manifests(tmp_path / "out")
    assert list(manifests) == [first_folder]
    assert sorted(delivered_ids(manifests)) == sorted(acknowledged)


def test_store_refusing_credentials_ends_in_failure_with_the_reason(start_agent, s3, s3_prefix):
    settings = {**s3.agent_settings(s3_prefix), **FAST,
                "edge_agent_s3_secret_access_key": "wrong", "edge_agent_capture_max_attempts": 2}
    agent = start_agent(**settings)
    with agent.client() as client:
        cid = client.capture_data("m", [np.zeros(4, np.uint8)], [])
        wait_all(client, [cid], status="FAILURE")
        reason = client.capture_data_status(cid).reason
    assert "HTTP 403" in reason and "SignatureDoesNotMatch" in reason
    assert reason in agent.log()
    cli = subprocess.run([sys.executable, "-m", "edge_agent", "client", "--socket",
                          agent.socket_path, "status", cid], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.startswith("FAILURE: ") and "403" in cli.stdout


def test_periodic_upload_of_disk_captures(start_agent, tmp_path, s3, s3_prefix):
    settings = {**s3.agent_settings(s3_prefix), **FAST,
                "sagemaker_edge_core_capture_data_destination": "Disk",
                "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "captures"),
                "sagemaker_edge_core_capture_data_periodic_upload": True,
                "sagemaker_edge_core_capture_data_periodic_upload_period_seconds": 0.2}
    agent = start_agent(**settings)
    with agent.client() as client:
        ids = [client.capture_data("m", [np.zeros(5000, np.uint8)], []) for _ in range(3)]
        wait_all(client, ids)
    store = s3.client()
    wait_for(lambda: sorted(delivered_ids(s3_manifests(store, s3_prefix))) == sorted(ids),
             what="the upload")
    on_disk = disk_manifests(tmp_path / "captures" / s3_prefix)
    uploaded = s3_manifests(store, s3_prefix)
    assert {f"{s3_prefix}/{k}": v for k, v in on_disk.items()} == uploaded
    for folder, text in uploaded.items():
        for line in lines({folder: text}):
            entry = line["input_tensors"][0]
            assert payload(entry, lambda name: store.get_object(f"{folder}/{name}")) == bytes(5000)


def test_cli_capture_and_status(agent, tmp_path):
    np.save(tmp_path / "x.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    (tmp_path / "labels.csv").write_text("a,b\n")
    cid = str(uuid.uuid4())
    cli = [sys.executable, "-m", "edge_agent", "client", "--socket", agent.socket_path]
    run = subprocess.run(cli + ["capture", "m", "--input", f"x={tmp_path / 'x.npy'}",
                                "--aux-input", f"labels={tmp_path / 'labels.csv'}:CSV",
                                "--capture-id", cid], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == cid
    with agent.client() as client:
        wait_all(client, [cid])
    status = subprocess.run(cli + ["status", cid], capture_output=True, text=True)
    assert status.stdout.strip() == "SUCCESS"
    unknown = subprocess.run(cli + ["status", str(uuid.uuid4())], capture_output=True, text=True)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    duplicate = subprocess.run(cli + ["capture", "m", "--input", str(tmp_path / "x.npy"),
                                      "--capture-id", cid], capture_output=True, text=True)
    assert duplicate.returncode == 1 and "ALREADY_EXISTS" in duplicate.stderr


def test_serve_refuses_cloud_without_settings(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "edge_agent", "serve", "--socket", str(tmp_path / "s.sock"),
         "--set", "sagemaker_edge_core_capture_data_destination=Cloud",
         "--set", f"edge_agent_state_dir={tmp_path / 'state'}"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert "configuration error" in run.stderr
    assert "sagemaker_edge_provider_s3_bucket_name" in run.stderr and "credentials" in run.stderr
