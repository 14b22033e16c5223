"""A full disk under the capture journal: CaptureData answers RESOURCE_EXHAUSTED (as a full
spool does), nothing acknowledged is lost, and captures are accepted again once there is room.

The disk is real: a tmpfs of a few hundred KiB mounted over the agent's state directory
(needs root and a kernel that lets this process mount; skipped where it cannot)."""
from __future__ import annotations

import subprocess

import pytest

from edge_agent.platform import boards
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.service import AgentService

from capture_helpers import capture_request, delivered_ids, disk_manifests, wait_for

CAPTURE_BYTES = 32 * 1024


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """tmp_path/state on a tmpfs of 256 KiB; resize(size) gives it more room."""
    state = tmp_path / "state"
    state.mkdir()
    try:
        mounted = _mount(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(state)])
    except FileNotFoundError:
        pytest.skip("no mount command on this machine")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): needs root")

    def resize(size: str) -> None:
        result = _mount(["-o", f"remount,size={size}", str(state)])
        assert result.returncode == 0, result.stderr

    try:
        yield state, resize
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)


def test_a_full_journal_disk_is_resource_exhausted_and_loses_nothing(small_disk, tmp_path):
    state, resize = small_disk
    service = AgentService(boards.load(None, {
        "edge_agent_state_dir": str(state),
        "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "out"),
        "sagemaker_edge_core_capture_data_buffer_size": 1000,  # the disk is the bound here
        "sagemaker_edge_core_capture_data_batch_size": 4,
        "sagemaker_edge_core_capture_data_push_period_seconds": 0.05,
        "edge_agent_capture_retry_max_seconds": 0.05,
        "edge_agent_capture_flush_seconds": 5.0,
    }))
    try:
        accepted = []
        refused = None
        for _ in range(64):  # 2 MiB of captures: far more than 256 KiB holds
            request = capture_request(nbytes=CAPTURE_BYTES)
            try:
                service.capture_data(request)
            except AgentError as e:
                refused = (request, e)
                break
            accepted.append(request.capture_id)
        assert refused is not None, "the small disk never filled"
        request, error = refused
        assert error.code == StatusCode.RESOURCE_EXHAUSTED, error
        assert "is full" in error.message and "not accepted" in error.message
        assert accepted  # some fitted before the disk filled

        resize("16m")  # the operator frees space
        service.capture_data(request)  # the refused capture may be sent again, same id
        accepted.append(request.capture_id)
        wait_for(lambda: sorted(delivered_ids(disk_manifests(tmp_path / "out"))) == sorted(accepted),
                 what="every acknowledged capture delivered")
    finally:
        service.close()
    assert sorted(delivered_ids(disk_manifests(tmp_path / "out"))) == sorted(accepted)  # once each
