"""edge-agent: a lean model-serving agent for small Linux boards, speaking the SageMaker Edge
Manager agent's agent.proto over a framed UNIX socket (and gRPC). Applications import the
public modules at the top: client (AgentClient), shm_client (shared-memory tensors) and errors;
the agent is `edge-agent serve` (app/). The packages, lowest first: protocol (the wire,
sans-IO) and platform (this machine); packaging, shm, observe; models and capture; api (the RPC
table and the service core); transport (the fronts); fleet; app (the composition root). A
package imports only those below it, and a few small shared modules (errors, config, api.caller
...); tests/unit/test_imports.py holds the table, docs/DEVELOPMENT.md draws the map. tools/
holds the development tools and the demo and bench commands, which nothing that serves imports.
"""
import os as _os

with open(_os.path.join(_os.path.dirname(__file__), "VERSION")) as _f:
    __version__ = _f.read().strip()
