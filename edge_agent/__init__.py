"""edge-agent: a lean model-serving agent for small Linux boards.

Speaks the SageMaker Edge Manager agent's agent.proto over a framed UNIX socket. The
client is edge_agent.client.AgentClient; the agent is `edge-agent serve`.
"""
import os as _os

with open(_os.path.join(_os.path.dirname(__file__), "VERSION")) as _f:
    __version__ = _f.read().strip()
