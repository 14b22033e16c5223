"""edge-agent: a lean model-serving agent for small Linux boards.

Speaks the SageMaker Edge Manager agent's agent.proto over a framed UNIX socket. The
client is edge_agent.client.AgentClient; the agent is `edge-agent serve`.

pure_python() is the one switch of the compiled modules' seams (docs/DEVELOPMENT.md,
"Compiled modules and their twins"); it lives here, where it imports nothing of the package.
"""
import os as _os

with open(_os.path.join(_os.path.dirname(__file__), "VERSION")) as _f:
    __version__ = _f.read().strip()


def pure_python() -> bool:
    """True when EDGE_AGENT_PUREPYTHON is set to anything but "" or "0": every seam then
    imports its module's pure-Python twin instead of the compiled one. A seam calls it once,
    when it is imported, so the switch holds for the life of the process."""
    return _os.environ.get("EDGE_AGENT_PUREPYTHON", "") not in ("", "0")
