"""An external delegate (tests/delegate/recording_delegate.c) configured for the agent in a
thread: created with its options for the check and for the agent's own interpreter, the model
run, the delegate freed at unload, the log naming it. (In process: tests/integration/test_delegates.py;
the runtime's own messages and the CLI: tests/e2e/test_delegates_agent.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.tools import model_builder


@pytest.fixture
def record(tmp_path) -> Path:
    return tmp_path / "delegate-record.txt"


def recorded(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_external_delegate_gets_its_options_and_the_model_runs(start_agent, model_files,
                                                               recording_delegate, record):
    agent = start_agent(edge_agent_delegate="external",
                        edge_agent_delegate_library=recording_delegate,
                        edge_agent_delegate_options={"record_to": str(record), "mode": "fast",
                                                     "cache": 2})
    built = model_builder.add_model()
    with agent.client() as client:
        info = client.load_model("add", str(model_files["add"]))
        assert info.delegate == f"external:{recording_delegate}"
        assert client.describe_model("add").delegate == f"external:{recording_delegate}"
        inputs = built.sample_inputs()
        outputs = client.predict("add", inputs)
        np.testing.assert_array_equal(outputs["sum"], built.reference(inputs)["sum"])
        # The runtime created it with the configured options (numbers as strings) and asked
        # it to take nodes; it took none, so the CPU computed the sum above. The child that
        # proved the model first (model_probe) ran it with the same delegate and options.
        created = f"create record_to={record} mode=fast cache=2"
        assert recorded(record) == [created, "prepare", "destroy", created, "prepare"]
        client.unload_model("add")
    assert recorded(record)[-1] == "destroy"  # freed with its interpreter
    assert f"run by external:{recording_delegate}" in agent.log()
