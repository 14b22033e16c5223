"""edge-agent: a lean model-serving agent for small Linux boards, speaking the SageMaker Edge
Manager agent's agent.proto over a framed UNIX socket (and gRPC). Applications import the
public modules at the top: client (AgentClient), shm_client (shared-memory tensors) and errors;
the agent is `edge-agent serve` (app/). The packages, lowest first: protocol (the wire,
sans-IO) and platform (this machine); packaging, shm, observe; models and capture; api (the RPC
table and the service core); transport (the fronts); fleet; app (the composition root). A
package imports only those below it, and a few small shared modules (errors, config, api.caller
...); tests/unit/test_imports.py holds the table, docs/DEVELOPMENT.md draws the map. tools/
holds the development tools and the demo and bench commands, which nothing that serves imports.

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
