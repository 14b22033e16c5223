"""Helpers shared by the capture tests: requests, reading what a destination holds."""
from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.api.service import AgentService
from edge_agent.errors import AgentError, StatusCode
from wire import add_array


def capture_request(capture_id: str | None = None, model: str = "m",
                    nbytes: int = 16, **fields) -> pb.CaptureDataRequest:
    request = pb.CaptureDataRequest(model_name=model, capture_id=capture_id or str(uuid.uuid4()),
                                    **fields)
    add_array(request.input_tensors, "x", np.arange(nbytes, dtype=np.uint8))
    add_array(request.output_tensors, "y", np.ones(2, np.float32))
    return request


def disk_manifests(root: str | Path) -> dict[str, str]:
    """relative folder → manifest text, for every batch on disk."""
    found = {}
    for directory, _, names in os.walk(root):
        if "manifest.jsonl" in names:
            found[os.path.relpath(directory, root)] = Path(directory, "manifest.jsonl").read_text()
    return found


def s3_manifests(client, prefix: str) -> dict[str, str]:
    return {key.rsplit("/", 1)[0]: client.get_object(key).decode()
            for key in client.list_keys(prefix) if key.endswith("/manifest.jsonl")}


def lines(manifests: dict[str, str]) -> list[dict]:
    return [json.loads(line) for text in manifests.values() for line in text.splitlines()]


def delivered_ids(manifests: dict[str, str]) -> list[str]:
    return [line["capture_id"] for line in lines(manifests)]


def payload(entry: dict, read_file) -> bytes:
    """A manifest entry's bytes: embedded, or its slice of the batch file read_file(name)."""
    if "data" in entry:
        return base64.b64decode(entry["data"])
    return read_file(entry["file"])[entry["offset"]:entry["offset"] + entry["byte_length"]]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy (returns it); deterministic, not a timed assertion."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# Delivery settings that make an agent's batches go out at once and retry soon.
FAST = {"sagemaker_edge_core_capture_data_push_period_seconds": 0.1,
        "edge_agent_capture_retry_max_seconds": 0.2}


def wait_all(client, capture_ids, status="SUCCESS", timeout=60):
    for cid in capture_ids:
        wait_for(lambda cid=cid: client.get_capture_data_status(cid) == status, timeout=timeout,
                 what=f"{cid} to be {status}")


def status_of(service: AgentService, capture_id: str) -> pb.GetCaptureDataStatusResponse:
    return service.get_capture_data_status(pb.GetCaptureDataStatusRequest(capture_id=capture_id))


def wait_status(service, capture_id, status=pb.SUCCESS):
    return wait_for(lambda: status_of(service, capture_id).status == status,
                    what=f"{capture_id} to be {pb.CaptureDataStatus.Name(status)}")


def expect(code: StatusCode, call, *args) -> AgentError:
    with pytest.raises(AgentError) as info:
        call(*args)
    assert info.value.code == code, info.value
    return info.value
