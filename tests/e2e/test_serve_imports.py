"""What the agent process imports while it serves: never the development tools
(docs/DEVELOPMENT.md, "Tools"). A process of its own, because what matters is what a fresh
interpreter loads on the serve path, lazy imports inside functions included."""
from __future__ import annotations

import sys

import numpy as np
from agents import AgentProcess


# What only the development tools need: the agent's serve path must never load them (they
# are for the demo, bench, tests and docs; docs/DEVELOPMENT.md, "Tools").
TOOL_MODULES = ("edge_agent.tools", "tflite", "flatbuffers")
# The libraries of features a configuration turns on, and the agent's modules that use them:
# with none of those features configured the agent must not load them (idle memory, issue 23).
# HTTP/2 (h2 and its hpack, hyperframe) for edge_agent_grpc_socket_path; prometheus-client
# for the metrics endpoint; paho-mqtt for the heartbeat and the fleet's broker; requests
# (urllib3, idna, certifi, charset_normalizer) and any boto for S3 captures and the fleet's
# downloads; PyNaCl for signed packages; grpcio never (the tools' reference server only).
FEATURE_LIBRARIES = ("h2", "hpack", "hyperframe", "prometheus_client", "paho", "requests",
                     "urllib3", "idna", "certifi", "charset_normalizer", "botocore", "boto3",
                     "nacl", "grpc")
FEATURE_MODULES = ("edge_agent.transport.grpc_front", "edge_agent.observe.exposition",
                   "edge_agent.observe.heartbeat", "edge_agent.fleet.link",
                   "edge_agent.fleet.board", "edge_agent.client", "edge_agent.shm_client")


class _ImportTracingAgent(AgentProcess):
    """The agent with -X importtime, which writes every module it imports to stderr (the
    agent's log) at the moment it is imported, lazy imports inside functions included."""

    def command(self) -> list[str]:
        return [sys.executable, "-X", "importtime", *super().command()[1:]]


def _imported_modules(log: str) -> set[str]:
    # "import time: self [us] | cumulative | imported package", the name indented by depth.
    return {line.rsplit("|", 1)[1].strip() for line in log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_serving_a_model_imports_no_development_tool(tmp_path, model_files):
    agent = _ImportTracingAgent(tmp_path, {
        "edge_agent_grpc_socket_path": str(tmp_path / "grpc.sock")}).start()
    try:
        with agent.client() as client:
            client.load_model("add", str(model_files["add"]))
            x = np.ones((1, 4), np.float32)
            outputs = client.predict("add", {"a": x, "b": x})
            client.unload_model("add")
    finally:
        assert agent.stop() == 0, agent.log()
    np.testing.assert_array_equal(outputs["sum"], x + x)
    imported = _imported_modules(agent.log())
    assert "edge_agent.api.service" in imported and "edge_agent.transport.framed_front" in imported, agent.log()
    loaded_tools = sorted(m for m in imported if m.split(".")[0] in TOOL_MODULES
                          or m.startswith("edge_agent.tools"))
    assert not loaded_tools, f"the serve path imported development tools: {loaded_tools}"
    # Without edge_agent_deployment_url nor edge_agent_mqtt_url: no fleet source, no MQTT
    # (the `fleet` subcommand's parser, argparse only, registers with every command line).
    unused = sorted(m for m in imported if m.split(".")[0] == "paho"
                    or (m.startswith("edge_agent.fleet.") and m != "edge_agent.fleet.cli"))
    assert not unused, f"the serve path imported the fleet's or MQTT's modules: {unused}"


def test_a_default_configuration_loads_no_library_of_a_feature_it_does_not_use(tmp_path,
                                                                                 model_files):
    """The agent as a board starts it by default (no gRPC socket, no metrics port, no MQTT, no
    fleet, captures to disk), serving a model and capturing a call: none of the optional
    features' libraries is loaded, nor the client's modules (the command line's parser takes
    the default socket from the configuration's table)."""
    agent = _ImportTracingAgent(tmp_path).start()
    try:
        with agent.client() as client:
            client.load_model("add", str(model_files["add"]))
            x = np.ones((1, 4), np.float32)
            outputs = client.predict("add", {"a": x, "b": x})
            client.capture_data("add", {"a": x, "b": x}, outputs)
            client.unload_model("add")
    finally:
        assert agent.stop() == 0, agent.log()
    imported = _imported_modules(agent.log())
    assert "edge_agent.capture.capture_calls" in imported, agent.log()
    loaded = sorted(m for m in imported if m.split(".")[0] in FEATURE_LIBRARIES
                    or m in FEATURE_MODULES)
    assert not loaded, f"a default configuration loaded what its features do not use: {loaded}"
