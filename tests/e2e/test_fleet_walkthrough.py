"""docs/FLEET.md's walkthrough, run as written: keys, packages, two boards (agent
processes the script starts), publish to 10%, watch, promote, roll back, against the real
SeaweedFS of tests/s3server.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from s3server import ACCESS_KEY, BUCKET, REGION, SECRET_KEY

from edge_agent.fleet.document import in_percentage
from edge_agent.tools import model_builder

pytestmark = pytest.mark.native_only
DOC = Path(__file__).resolve().parents[2] / "docs" / "FLEET.md"


def walkthrough() -> str:
    text = DOC.read_text()
    match = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)\n```", text, re.S)
    assert match, "docs/FLEET.md has no walkthrough block"
    return match.group(1)


def test_the_boards_the_walkthrough_names_are_in_and_out_of_its_10_percent():
    assert in_percentage("plant", "board-4", 10) and not in_percentage("plant", "board-1", 10)


def test_the_walkthrough_runs_as_written(tmp_path, s3, s3_prefix):
    for version, offset in (("V1", 1.0), ("V2", 2.0)):
        (tmp_path / f"model-{version}.tflite").write_bytes(
            model_builder.offset_model(offset).content)
    env = dict(os.environ, FLEET_URL=f"s3://{BUCKET}/{s3_prefix}",
               AWS_ENDPOINT_URL=s3.endpoint, AWS_REGION=REGION,
               AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               MODEL_V1=str(tmp_path / "model-V1.tflite"),
               MODEL_V2=str(tmp_path / "model-V2.tflite"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    work = tmp_path / "walkthrough"
    work.mkdir()
    try:
        done = subprocess.run(["bash", "-c", walkthrough()], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        logs = "".join(p.read_text() for p in work.glob("board-*/agent.log"))
        raise AssertionError(f"the walkthrough did not finish:\n{e.stdout}\n{e.stderr}\n{logs}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published sequence 4" in done.stdout
    final = done.stdout.strip().splitlines()[-2:]
    assert all(re.match(r"board-[14] .* serving 1\.0 +serving", line) for line in final), final
