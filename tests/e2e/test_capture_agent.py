"""Capture end to end where the process is the point: kill -9 mid-batch and a crash between
writing and recording, then restarts; a store refusing credentials as the CLI reports it; the
CLI's capture and status; `serve` refusing Cloud without settings. (Delivery through the agent
in a thread: tests/integration/test_capture_delivery.py.)"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from edge_agent.errors import AgentError, StatusCode

from capture_helpers import FAST, delivered_ids, disk_manifests, s3_manifests, wait_all, wait_for

@pytest.mark.native_only
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
        import os, threading, uuid
        from edge_agent import agent_pb2 as pb
        from edge_agent.platform import boards
        from edge_agent.capture.status import StatusLog
        from edge_agent.api.service import AgentService
        from edge_agent.protocol.tensors import add_tensor
        replied = threading.Event()
        StatusLog.finish = lambda *a: (replied.wait(), os._exit(9))
        service = AgentService(boards.load(None, {settings!r}))
        for i in range(3):
            r = pb.CaptureDataRequest(model_name="m", capture_id=str(uuid.uuid4()))
            add_tensor(r.input_tensors, b"x", pb.UINT8, (4,), bytes(4))
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
    from edge_agent.platform import boards
    from edge_agent.api.service import AgentService
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
