"""The command that starts an agent of this installation in a child process (the demo, the
bench and the footprint benchmark use it).

Not `python -m edge_agent`: that puts the current directory first on sys.path, so run from a
source checkout (whose ./edge_agent has no compiled modules) the child would import that tree
instead of the installed package and stop at `No module named 'edge_agent.protocol._framing'`.
Python 3.11's -P would leave the directory out, but 3.10 has no -P: the child drops the
current directory ('' for -c) from sys.path itself, the same way on every version.
"""
from __future__ import annotations

import sys

_MAIN_WITHOUT_CWD = (
    "import sys\n"
    "if sys.path[:1] == ['']:\n"
    "    del sys.path[0]\n"
    "from edge_agent.app.cli import main\n"
    "raise SystemExit(main())\n")


def agent_command(*args: str) -> list[str]:
    """argv that runs `edge-agent ARGS...` with this interpreter and the installed package."""
    return [sys.executable, "-c", _MAIN_WITHOUT_CWD, *args]
