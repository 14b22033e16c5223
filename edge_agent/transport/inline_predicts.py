"""The framed front's inline Predicts: the compiled pass (cext/_inline_predicts.pyx), else its
pure-Python twin (edge_agent/transport/_inline_predicts_py.py); the seam of the frame
splitter's (EDGE_AGENT_PUREPYTHON=1 forces the twin)."""
from __future__ import annotations

from edge_agent import pure_python

if pure_python():
    from edge_agent.transport._inline_predicts_py import InlinePredicts
else:
    try:
        from edge_agent.transport._inline_predicts import InlinePredicts
    except ModuleNotFoundError as missing:  # no build; a broken or stale one is an error
        if missing.name != "edge_agent.transport._inline_predicts":
            raise
        from edge_agent.transport._inline_predicts_py import InlinePredicts

__all__ = ["InlinePredicts"]
