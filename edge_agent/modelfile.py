"""What a bare TensorFlow Lite model file is, told from its first bytes.

Kept apart from packages.py so the load path can tell a bare model from a package without
importing the signature machinery (PyNaCl) until a package is actually loaded.
"""
from __future__ import annotations

from edge_agent.errors import failed_precondition

TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4..8


def looks_like_tflite(data: bytes) -> bool:
    return data[4:8] == TFLITE_IDENTIFIER


def is_bare_model(path: str) -> bool:
    """Whether `path` is a file holding a bare .tflite model (not a package)."""
    try:
        with open(path, "rb") as f:
            return looks_like_tflite(f.read(8))
    except IsADirectoryError:
        return False
    except OSError as e:
        raise failed_precondition(f"cannot read '{path}': {e.strerror}") from None
