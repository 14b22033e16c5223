"""Delegates in agent processes: XNNPACK and plain CPU, told by the runtime's own messages on
the process's stderr; `client describe` naming the delegate. (Delegate loading, fallback and
the Edge TPU in process: tests/integration/test_delegates.py; an external delegate served:
tests/integration/test_delegates_served.py.)"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edge_agent.tools import model_builder


def test_describe_on_the_command_line_says_what_runs_the_model(agent, model_files):
    agent.client().load_model("add", str(model_files["add"]))
    out = subprocess.run([sys.executable, "-m", "edge_agent", "client", "--socket",
                          agent.socket_path, "describe", "add"],
                         capture_output=True, text=True, check=True).stdout
    assert "delegate: xnnpack" in out


@pytest.mark.parametrize("delegate, described, xnnpack", [("xnnpack", "xnnpack", True),
                                                         ("none", "cpu", False)])
def test_cpu_delegates(start_agent, model_files, delegate, described, xnnpack):
    agent = start_agent(edge_agent_delegate=delegate, edge_agent_num_threads=2)
    built = model_builder.fully_connected_model()
    with agent.client() as client:
        assert client.load_model("fc", str(model_files["fc"])).delegate == described
        inputs = built.sample_inputs()
        np.testing.assert_allclose(client.predict("fc", inputs)["y"], built.reference(inputs)["y"],
                                   rtol=1e-5)
    # The runtime says when it applies XNNPACK; "none" keeps to the builtin kernels.
    assert ("XNNPACK delegate for CPU" in agent.log()) == xnnpack
