"""The shell commands: `edge-agent client ...` against a real agent, and `edge-agent demo`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from edge_agent.tools import model_builder


def edge_agent(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "edge_agent", *args],
                            capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_client_commands(agent, model_files, tmp_path):
    sock = ["client", "--socket", agent.socket_path]
    out = edge_agent(*sock, "load", "add", str(model_files["add"])).stdout
    assert "add" in out and "a float32[1,4]" in out
    assert "sum float32[1,4]" in edge_agent(*sock, "describe", "add").stdout
    assert edge_agent(*sock, "list").stdout.startswith("add")

    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=9)
    for name, array in inputs.items():
        np.save(tmp_path / f"{name}.npy", array)
    out_dir = tmp_path / "out"
    edge_agent(*sock, "predict", "add", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
               "--out", str(out_dir))
    np.testing.assert_allclose(np.load(out_dir / "sum.npy"), built.reference(inputs)["sum"],
                               rtol=1e-6)
    named = edge_agent(*sock, "predict", "add", f"b={tmp_path / 'b.npy'}", f"a={tmp_path / 'a.npy'}")
    assert "sum float32[1, 4]" in named.stdout

    edge_agent(*sock, "unload", "add")
    assert edge_agent(*sock, "list").stdout == ""


def test_client_errors_print_the_status_and_fail(agent):
    result = edge_agent("client", "--socket", agent.socket_path, "describe", "nope", check=False)
    assert result.returncode == 1
    assert "NOT_FOUND: no model named 'nope' is loaded" in result.stderr


def test_client_without_an_agent(tmp_path):
    result = edge_agent("client", "--socket", str(tmp_path / "none.sock"), "list", check=False)
    assert result.returncode == 1 and "UNAVAILABLE: cannot connect" in result.stderr


def test_demo_runs_a_round_trip_and_stops():
    result = edge_agent("demo")
    assert "signed package" in result.stdout and "NumPy reference agrees" in result.stdout
    assert "agent stopped (exit status 0)" in result.stdout


def test_serve_stops_on_a_wrong_value_naming_the_key(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"edge_agent_socket_path": str(tmp_path / "s.sock"),
                                "edge_agent_memory_budget_mb": -5}))
    result = subprocess.run([sys.executable, "-m", "edge_agent", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "configuration error: edge_agent_memory_budget_mb: must be at least 1" in result.stderr
    assert not (tmp_path / "s.sock").exists()
