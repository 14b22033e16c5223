"""The compiled modules' seams imported afresh in the test's own process, as a process started
with a given EDGE_AGENT_PUREPYTHON, or without a build, would import them: no child process
(tests/unit starts none), and nothing the rest of the process holds is replaced."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

# The compiled modules, each with the seam that chooses between it and its twin (the shared
# memory module has no twin: docs/DEVELOPMENT.md, "Compiled modules and their twins").
COMPILED = {
    "edge_agent.protocol._framing": "edge_agent.protocol.frames",
    "edge_agent.protocol._predict": "edge_agent.protocol.predict_codec",
    "edge_agent.models._flatverify": "edge_agent.models.verifier",
    "edge_agent.models._plain_call": "edge_agent.models.plain_call",
    "edge_agent.transport._inline_predicts": "edge_agent.transport.inline_predicts",
    "edge_agent.observe._metrics": "edge_agent.observe.metrics",
    "edge_agent.shm._shm": "edge_agent.shm.segments",
}


def fresh_import(module: str, monkeypatch, pure: str | None = None,
                 missing: tuple[str, ...] = ()) -> ModuleType:
    """`module` executed anew into a module object of its own (not put in sys.modules), with
    EDGE_AGENT_PUREPYTHON set to `pure` (None: unset) and the compiled modules `missing`
    failing to import as without a build (None in sys.modules makes an import raise
    ImportError). monkeypatch undoes both after the test."""
    if pure is None:
        monkeypatch.delenv("EDGE_AGENT_PUREPYTHON", raising=False)
    else:
        monkeypatch.setenv("EDGE_AGENT_PUREPYTHON", pure)
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.loader is not None, module
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    return fresh
