"""The capture service's bounds and its journal across a restart while the store cannot be
reached: a Cloud destination at a loopback port nobody listens on, so every upload's
connection is refused (a real socket each time: not a unit test; the rest of the capture
service's policy is tests/unit/test_capture_service.py)."""
from __future__ import annotations

import socket

import pytest
from capture_helpers import (capture_request, delivered_ids, disk_manifests, expect, status_of,
                             wait_status)

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode


def unreachable_store() -> dict:
    """A Cloud destination at a loopback port nobody listens on: every upload fails to
    connect (transient), so captures stay pending."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"sagemaker_edge_core_capture_data_destination": "Cloud",
            "sagemaker_edge_provider_s3_bucket_name": "b",
            "edge_agent_s3_endpoint_url": f"http://127.0.0.1:{port}",
            "edge_agent_s3_access_key_id": "k", "edge_agent_s3_secret_access_key": "s"}


def test_buffer_full_is_resource_exhausted_and_nothing_is_lost(make_service):
    service = make_service(sagemaker_edge_core_capture_data_buffer_size=3, **unreachable_store())
    accepted = [capture_request() for _ in range(3)]
    for request in accepted:
        service.capture_data(request)
    error = expect(StatusCode.RESOURCE_EXHAUSTED, service.capture_data, capture_request())
    assert "capture_data_buffer_size is 3" in error.message
    for request in accepted:
        assert status_of(service, request.capture_id).status == pb.IN_PROGRESS


def test_spool_bound_is_resource_exhausted(make_service):
    service = make_service(edge_agent_capture_max_spool_mb=1, **unreachable_store())
    accepted = 0
    with pytest.raises(AgentError) as info:
        for _ in range(10):
            service.capture_data(capture_request(nbytes=300_000))
            accepted += 1
    assert info.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert "edge_agent_capture_max_spool_mb" in info.value.message
    assert accepted == 3
    assert service.capture.journal.total_bytes <= 1024 * 1024


def test_pending_captures_are_delivered_after_a_restart(make_service, tmp_path):
    unreachable = make_service(**unreachable_store())
    requests = [capture_request() for _ in range(5)]
    for request in requests:
        unreachable.capture_data(request)
    unreachable.close()  # the store never answered: all still in the journal

    service = make_service()  # same state dir, now to disk
    for request in requests:
        wait_status(service, request.capture_id)
    assert sorted(delivered_ids(disk_manifests(tmp_path / "out"))) == sorted(r.capture_id for r in requests)
