"""A board killed (SIGKILL) in the middle of a package download: no partial package is ever
loaded, the old version serves after the restart, and the download resumes where it stopped
and completes (docs/FLEET.md)."""
from __future__ import annotations

import hashlib
import os

import pytest
from capture_helpers import wait_for
from fleet_helpers import Fleet
from lifecycle_helpers import X, offset_of

from edge_agent.packaging import packages
from edge_agent.fleet import document as d
from edge_agent.fleet.board import CRASH_ENV
from edge_agent.tools import model_builder

pytestmark = pytest.mark.native_only
MIB = 1024 * 1024


@pytest.fixture
def fleet(tmp_path, s3, s3_prefix):
    fleet = Fleet(tmp_path / "fleet", s3, s3_prefix)
    yield fleet
    fleet.client.close()


def large_package(fleet, version: str) -> d.Package:
    """A signed package of y = x + 2 carrying 3 MiB of incompressible bytes."""
    filler = fleet.root / "filler.bin"
    filler.write_bytes(os.urandom(3 * MIB))
    out = fleet.root / f"m-{version}.tar.gz"
    packages.build_package(model_builder.offset_model(2.0).content, "m", version,
                           packages.Target.host(), fleet.lab.signer.key_path, str(out),
                           extra_files=[str(filler)])
    data = out.read_bytes()
    key = f"packages/m/{version}.tar.gz"
    fleet.client.put_object(f"{fleet.prefix}/{key}", data)
    return d.Package(key, hashlib.sha256(data).hexdigest(), version, len(data))


def serving(agent):
    with agent.client() as client:
        try:
            return offset_of(client.predict("m", {"x": X}))
        except Exception:
            return None


def test_kill_mid_download_then_resume(fleet, start_agent, monkeypatch):
    v1 = fleet.upload("m", "1.0")
    fleet.put(fleet.document({"m": v1}))
    agent = start_agent(**fleet.settings("b-1"))
    wait_for(lambda: serving(agent) == 1.0, 60, 0.1, "1.0 serves")
    v2 = large_package(fleet, "2.0")
    assert v2.size > 2 * MIB
    agent.stop()
    monkeypatch.setenv(CRASH_ENV, str(MIB))
    agent = start_agent(workdir=agent.workdir, **fleet.settings("b-1"))
    fleet.put(fleet.document({"m": v1}, [d.Stage({"m": v2}, devices=("b-1",))]))
    wait_for(lambda: not agent.alive(), 60, 0.1, "the agent killed mid-download")
    folder = fleet.root / "repository-b-1" / "m"
    partial = [p for p in folder.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and MIB <= partial[0].stat().st_size < v2.size
    partial_size = partial[0].stat().st_size
    assert not [p for p in folder.iterdir() if p.name.startswith("2.0")]
    monkeypatch.delenv(CRASH_ENV)
    agent = start_agent(workdir=agent.workdir, **fleet.settings("b-1"))
    assert serving(agent) == 1.0  # ready: the old version serves, nothing partial loaded
    wait_for(lambda: serving(agent) == 2.0, 60, 0.1, "2.0 serves after the resumed download")
    # No partial file left (1.0, the baseline a failed stage returns to, is kept).
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"1.0-{v1.sha256[:16]}.tar.gz", f"2.0-{v2.sha256[:16]}.tar.gz"])
    assert f"m 2.0 downloaded (resumed at byte {partial_size})" in agent.log()
