"""Capture delivery through the agent in a thread: a real S3 server (SeaweedFS on loopback),
the Python client; the documented keys and content, an outage of the store, periodic upload
of Disk captures. (kill -9, crashes and the CLI: tests/e2e/test_capture_agent.py.)"""
from __future__ import annotations

import base64
import json
import uuid

import numpy as np
import pytest

from capture_helpers import (FAST, delivered_ids, disk_manifests, lines, payload, s3_manifests,
                             wait_all, wait_for)

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


@pytest.mark.native_only
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
