"""A swap interrupted in each of its phases (the agent kills itself with SIGKILL at a crash
point, EDGE_AGENT_TEST_CRASH_AT), then a restart: the name serves a whole version, the old
or the new, never neither; and a full disk while a package is copied in leaves the old
version serving. The process is the point: what survives is what was on disk."""
from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pytest
from agents import AgentProcess
from lifecycle_helpers import X, Lab, offset_of

from edge_agent.models.lifecycle.manager import CRASH_ENV


@pytest.fixture
def lab(tmp_path) -> Lab:
    return Lab(tmp_path / "lab")


@pytest.mark.native_only  # ten agent processes: the emulated boards prove the build, not this
@pytest.mark.parametrize("phase, archive", [
    ("copying", False), ("unpacking", True), ("checking", False), ("switching", False),
    ("cleaning", True)])
def test_an_interrupted_swap_restarts_serving_a_whole_version(lab, tmp_path, monkeypatch,
                                                               phase, archive):
    lab.publish("m", "1.0")
    workdir = tmp_path / "agent"
    workdir.mkdir()
    monkeypatch.setenv(CRASH_ENV, phase)
    agent = AgentProcess(workdir, lab.settings()).start()
    monkeypatch.delenv(CRASH_ENV)
    try:
        lab.publish("m", "2.0", archive=archive)
        with agent.client() as client:
            with pytest.raises(Exception):  # noqa: B017 (the agent dies under the call)
                client.rescan()
        assert agent.process.wait(30) == -signal.SIGKILL, agent.log()
        # What the agent's own state gives alone: the new package is out of the repository.
        package = next(p for p in (lab.repository / "m").iterdir() if "2.0" in p.name)
        package.rename(lab.outgoing / package.name)
        restarted = AgentProcess(workdir, lab.settings()).start()
        try:
            with restarted.client() as client:
                answered = offset_of(client.predict("m", {"x": X}))
                assert answered in (1.0, 2.0)
                if phase in ("copying", "unpacking"):
                    assert answered == 1.0  # no whole copy was made: the old version
                # Nothing half made is left, and the new version is taken in whole.
                assert os.listdir(workdir / "state" / "models" / ".staging") == []
                lab.move_in(lab.outgoing / package.name, "m")
                client.rescan()
                assert offset_of(client.predict("m", {"x": X})) == 2.0
        finally:
            restarted.stop()
    finally:
        agent.stop()


@pytest.fixture
def small_state(tmp_path):
    """The agent's state directory on a tmpfs of 1 MiB (needs root; skipped otherwise)."""
    state = tmp_path / "agent" / "state"
    state.mkdir(parents=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                                  str(state)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command on this machine")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): needs root")
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)


def test_a_full_disk_while_copying_leaves_the_old_version_serving(lab, tmp_path, small_state):
    from edge_agent.tools import model_builder

    lab.publish("m", "1.0")
    # (Its new version, too large for the disk, takes larger inputs.)
    agent = AgentProcess(tmp_path / "agent",
                         lab.settings(edge_agent_allow_signature_change=True)).start()
    try:
        # 2 MiB of weights: more than the state directory's disk holds.
        big = model_builder.offset_model(2, shape=(1, 512 * 1024))
        lab.publish("m", "2.0", model=big)
        with agent.client() as client:
            client.rescan()
            assert offset_of(client.predict("m", {"x": X})) == 1.0
            listed = {m.name: m for m in client.model_states()}["m"]
            # No fault of the package's: it waits for room, not failed for good.
            reasons = [v.reason for v in listed.versions if v.state == "waiting"]
            assert any("No space left" in r for r in reasons), reasons
            assert os.listdir(small_state / "models" / ".staging") == []
            client.rescan()  # no more room: not copied again
            assert agent.log().count("waits for room in the state directory") == 1
            subprocess.run(["mount", "-o", "remount,size=16m", str(small_state)], check=True)
            client.rescan()  # room now: it is copied in and served
            x = np.zeros((1, 512 * 1024), np.float32)
            assert offset_of(client.predict("m", {"x": x})) == 2.0
    finally:
        agent.stop()
