"""Corrupt model files: the project's own add model (model_builder) truncated, with a byte
flipped, cut to its header, or with non-UTF-8 tensor names; the flips and cuts kept here are
ones found (by trying every offset) to crash tflite-runtime with SIGSEGV when it reads them
in-process. Shared by tests/e2e/test_prover.py and tests/unit/test_loading.py (the check in
process) and tests/e2e/test_model_probe.py (agents that must survive them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.platform import runtime
from edge_agent.tools import model_builder

GOOD = model_builder.add_model().content
# Offsets whose flipped byte (xor 0xff) makes the runtime dereference garbage (SIGSEGV),
# every time (others crash or not depending on what lies past the buffer).
CRASHING_FLIPS = (11, 63, 124, 211)
# Lengths the file is cut to that crash it the same way.
CRASHING_CUTS = (100, 200, 256)
# Where the offsets above were found: elsewhere (another build of the runtime) the same bytes
# may be refused rather than crash it, and either is a FAILED_PRECONDITION.
FOUND_ON = "x86_64"
# The corrupt cases below were found with tflite-runtime 2.14; LiteRT reads some of them
# differently (refuses rather than crashes, or the reverse), so the cases that need a crash
# or a refusal of a known kind are this runtime's.
FOUND_WITH = "tflite_runtime"
FOUND_WITH_THIS_RUNTIME = pytest.mark.skipif(
    runtime.runtime_name() != FOUND_WITH,
    reason=f"the corrupt cases were found with {FOUND_WITH}; this machine runs "
           f"{runtime.runtime_name()}")
# Cut to the flatbuffer's root offset and file identifier.
HEADER_ONLY = GOOD[:8]


def flipped(offset: int) -> bytes:
    data = bytearray(GOOD)
    data[offset] ^= 0xFF
    return bytes(data)


def non_utf8_names() -> bytes:
    stored = b"\x03\x00\x00\x00sum"  # the output's name: a length-prefixed string
    assert GOOD.count(stored) == 1
    return GOOD.replace(stored, b"\x03\x00\x00\x00s\xffm")


CORRUPT = {
    **{f"flip-{o}": flipped(o) for o in CRASHING_FLIPS},
    **{f"cut-{n}": GOOD[:n] for n in CRASHING_CUTS},
    "header-only": HEADER_ONLY,
}


def write(directory: Path, name: str, content: bytes) -> Path:
    path = directory / f"{name}.tflite"
    path.write_bytes(content)
    return path
