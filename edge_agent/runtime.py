"""Which TensorFlow Lite runtime this machine has: tflite-runtime, else LiteRT.

Imported lazily, on the first load, so `edge-agent client ...` never pays for it.
"""
from __future__ import annotations

import functools
from types import ModuleType


@functools.lru_cache(maxsize=None)
def interpreter_module() -> ModuleType:
    """The module that has Interpreter and load_delegate."""
    try:
        import tflite_runtime.interpreter as module
    except ImportError:
        try:
            import ai_edge_litert.interpreter as module
        except ImportError:
            raise ImportError(
                "no TensorFlow Lite runtime: install tflite-runtime (Python < 3.12) or "
                "ai-edge-litert") from None
    return module


def runtime_name() -> str:
    module = interpreter_module()
    return module.__name__.split(".")[0]
