"""The fuzz harnesses of fuzz/ (atheris), each for a bounded number of inputs: what `make fuzz`
runs for hours, run here long enough to catch a regression of what they check."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent.parent / "fuzz"
# Fuzzing: a long scenario, run natively only (docs/CROSS.md).
pytestmark = pytest.mark.native_only

pytest.importorskip("atheris", reason="atheris is not installed (it has wheels for x86_64 "
                    "Linux only; requirements-dev.txt installs it there)")
if not (FUZZ / "frames.py").is_file():
    pytest.skip("fuzz/ is not beside tests/ (the emulated-board run carries tests/ only)",
                allow_module_level=True)


@pytest.mark.parametrize("harness, runs", [("frames", 50000), ("models", 150)])
def test_a_bounded_fuzz_run_finds_nothing(tmp_path, harness, runs):
    """frames: bytes → decoder → dispatch, tens of thousands of inputs (a few seconds);
    models: corrupt model files through the load path, one forked child each (slower: 150
    here, `make fuzz` runs both for as long as it is asked)."""
    found = tmp_path / "found"
    found.mkdir()
    result = subprocess.run(
        [sys.executable, str(FUZZ / f"{harness}.py"), f"-runs={runs}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", "-timeout=120", "-rss_limit_mb=4096",
         str(found), str(FUZZ / "corpus" / harness)],
        capture_output=True, text=True,
        env={**os.environ, "EDGE_AGENT_FUZZ_WORK": str(tmp_path / "work")})
    tail = result.stderr[-4000:]
    assert result.returncode == 0, tail
    assert f"Done {runs} runs" in result.stderr, tail
    assert not list(tmp_path.glob("crash-*")), tail
