"""`make run` (edge_agent/tools/run_local.py): the agent serves the signed demo model from a
local repository until Ctrl-C; a second run starts from its own copy, not checked again."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np

from edge_agent.client import AgentClient
from edge_agent.errors import AgentError
from edge_agent.tools import model_builder


def _serve_once(directory, socket_path, log) -> None:
    process = subprocess.Popen([sys.executable, "-m", "edge_agent.tools.run_local",
                                "--directory", str(directory), "--socket", socket_path],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300  # a bound for a broken run (emulated boards are slow)
        while True:
            assert process.poll() is None, "make run ended by itself"
            try:
                with AgentClient(socket_path) as client:
                    [model] = client.model_states()
                    break
            except AgentError:  # not serving yet
                assert time.monotonic() < deadline, "make run did not serve in time"
                time.sleep(0.1)
        assert (model.name, model.source, model.state, model.version) == (
            "demo", "repository", "serving", "1.0.0")
        features = np.load(directory / "features.npy")
        with AgentClient(socket_path) as client:
            scores = client.predict("demo", {"features": features})["scores"]
        expected = model_builder.demo_model().reference({"features": features})["scores"]
        assert np.allclose(scores, expected, rtol=1e-5, atol=1e-6)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(30) == 0


def test_make_run_serves_the_demo_model_until_ctrl_c(tmp_path):
    directory = tmp_path / "run"
    socket_path = str(tmp_path / "agent.sock")
    log_path = tmp_path / "run.log"
    with open(log_path, "ab") as log:
        _serve_once(directory, socket_path, log)
        _serve_once(directory, socket_path, log)
    output = log_path.read_text()
    assert output.count("checked in a separate process") == 1, output
    assert "the same bytes were checked before" in output
