"""A loaded model's plain Predict: the compiled PlainCall (cext/_plain_call.pyx), else its
pure-Python twin (edge_agent/models/_plain_call_py.py); the seam of the frame splitter's
(EDGE_AGENT_PUREPYTHON=1 forces the twin)."""
from __future__ import annotations

from edge_agent import pure_python

if pure_python():
    from edge_agent.models._plain_call_py import PlainCall
else:
    try:
        from edge_agent.models._plain_call import PlainCall
    except ModuleNotFoundError as missing:  # no build; a broken or stale one is an error
        if missing.name != "edge_agent.models._plain_call":
            raise
        from edge_agent.models._plain_call_py import PlainCall

__all__ = ["PlainCall"]
