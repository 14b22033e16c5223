"""Every benchmark script still starts: its imports resolve and its command line parses
(`--help`). The figures themselves are the benchmarks' business, never a test's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py")) if BENCHMARKS.is_dir() else []
# One process start-up per script: a long scenario, run natively only (docs/CROSS.md).
pytestmark = pytest.mark.native_only


@pytest.mark.skipif(not SCRIPTS, reason="no benchmarks/ beside the tests (an installed wheel)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_benchmark_starts(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower(), result.stdout
