"""What the harnesses share: a fixed work directory, an agent core configured to use it, and
the models the seeds name (frames in the seed corpus carry absolute paths, so they are fixed)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS = FUZZ_DIR / "corpus"
# State and captures of the harness's agent core: one directory per run where asked.
WORK = Path(os.environ.get("EDGE_AGENT_FUZZ_WORK", "/tmp/edge-agent-fuzz"))
MODEL_PATH = Path("/tmp/edge-agent-fuzz-models/add.tflite")  # what LoadModel seeds name
MAX_FRAME_BYTES = 1 << 20


def agent_config():
    from edge_agent.config import from_mapping

    return from_mapping({
        "edge_agent_state_dir": str(WORK / "state"),
        "sagemaker_edge_core_capture_data_disk_path": str(WORK / "captures"),
        "edge_agent_allow_unsigned_models": True,
        "edge_agent_num_threads": 1,
        "edge_agent_max_frame_bytes": MAX_FRAME_BYTES,
        "edge_agent_memory_budget_mb": 256,
    })


def write_models() -> None:
    """The models the seed frames load and predict with, at their fixed paths."""
    from edge_agent.tools import model_builder

    WORK.mkdir(parents=True, exist_ok=True)
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    staged = MODEL_PATH.with_name(f".add-{os.getpid()}.tflite")
    model_builder.add_model().write(staged)
    os.replace(staged, MODEL_PATH)  # whole for every harness that reads it meanwhile


# INTERNAL replies of defects that are reported and still open, by a piece of their message:
# the harnesses count them and go on, so the bounded run in `make test` guards everything else
# meanwhile; EDGE_AGENT_FUZZ_STRICT=1 fails on them too. None is open: issue 10's (a NUL in a
# url, tensor names that are not UTF-8, the runtime's bad_alloc) are fixed.
KNOWN_INTERNAL: tuple[str, ...] = ()


def known_internal(message: str) -> bool:
    if os.environ.get("EDGE_AGENT_FUZZ_STRICT") == "1":
        return False
    for piece in KNOWN_INTERNAL:
        if piece in message:
            print(f"known defect (issue 10): {message[:200]}", file=sys.stderr)
            return True
    return False
