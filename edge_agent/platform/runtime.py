"""Which TensorFlow Lite runtime this machine has: LiteRT (ai-edge-litert), else tflite-runtime.

LiteRT first: it is the maintained one and the only one from Python 3.12 up; on Python 3.11 the
package installs tflite-runtime (smaller, measured in docs/INSTALL.md), so LiteRT is there only
if someone asked for it (`edge-agent[litert]`), and then it is what they want.
Imported lazily, on the first load, so `edge-agent client ...` never pays for it.
"""
from __future__ import annotations

import functools
from types import ModuleType


@functools.lru_cache(maxsize=None)
def interpreter_module() -> ModuleType:
    """The module that has Interpreter and load_delegate."""
    try:
        import ai_edge_litert.interpreter as module
    except ImportError:
        try:
            import tflite_runtime.interpreter as module
        except ImportError:
            raise ImportError(
                "no TensorFlow Lite runtime: install ai-edge-litert, or tflite-runtime "
                "(Python < 3.12)") from None
    return module


def runtime_name() -> str:
    module = interpreter_module()
    return module.__name__.split(".")[0]
