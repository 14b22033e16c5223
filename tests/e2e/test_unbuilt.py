"""A checkout without a build (no compiled module importable) and an agent told to use the
pure-Python twins (EDGE_AGENT_PUREPYTHON=1) serve, load and Predict with the tensors in the
message; only shared-memory tensors need the build, and say so. A fresh interpreter is the
point: a missing build is a property of a whole process (docs/DEVELOPMENT.md, "Compiled
modules and their twins")."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from agents import ROOT, AgentProcess
from seams import COMPILED

from edge_agent.errors import AgentError, StatusCode
from edge_agent.shm_client import SysVSegment

# Run first in the child: None in sys.modules makes an import fail with ImportError, as a
# missing build does.
WITHOUT_A_BUILD = ("import sys\n"
                   f"for name in {sorted(COMPILED)!r}:\n"
                   "    sys.modules[name] = None\n")

SERVE = ("from edge_agent.app.cli import main\n"
         "raise SystemExit(main(['serve', '--config', sys.argv[1]]))\n")

# What each way of running reports as the modules in use: (seam, its attribute) → module.
IN_USE = ("import sys\n"
          "from edge_agent.protocol import frames, predict_codec\n"
          "from edge_agent.models import verifier\n"
          "from edge_agent.observe import metrics\n"
          "from edge_agent.shm import segments\n"
          "print(frames.FrameSplitter.__module__, predict_codec.decode_request.__module__,\n"
          "      verifier.Verifier.__module__, metrics.CallCounts.__module__,\n"
          "      segments._shm is not None)\n")
TWINS = ["edge_agent.protocol._framing_py", "edge_agent.protocol._predict_py",
         "edge_agent.models._flatverify_py", "edge_agent.observe._metrics_py"]

WAYS = {"no build": (WITHOUT_A_BUILD, {}),
        "EDGE_AGENT_PUREPYTHON=1": ("", {"EDGE_AGENT_PUREPYTHON": "1"})}


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("way", sorted(WAYS))
def test_each_seam_takes_its_twin(way, monkeypatch):
    prelude, env = WAYS[way]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = _python(prelude + IN_USE)
    assert run.returncode == 0, run.stderr
    # The shared-memory module has no twin: without a build it is missing; the switch leaves
    # the compiled one in use.
    assert run.stdout.split() == TWINS + [str(way != "no build")]


class UnbuiltAgent(AgentProcess):
    """`edge-agent serve` in a process whose compiled modules fail to import."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", WITHOUT_A_BUILD + SERVE, str(self.config_path)]


@pytest.mark.parametrize("way", sorted(WAYS))
def test_an_agent_on_the_twins_serves_loads_and_predicts(tmp_path, way, monkeypatch,
                                                        model_files):
    _, env = WAYS[way]
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the agent process inherits it
    kind = UnbuiltAgent if way == "no build" else AgentProcess
    workdir = tmp_path / "agent"
    workdir.mkdir()
    agent = kind(workdir).start(timeout=60)
    try:
        a = np.arange(4, dtype=np.float32).reshape(1, 4)
        b = np.full((1, 4), 0.5, dtype=np.float32)
        with agent.client() as client:
            client.load_model("add", str(model_files["add"]))
            for _ in range(3):
                np.testing.assert_array_equal(client.predict("add", [a, b])["sum"], a + b)
            with pytest.raises(AgentError) as refused:
                client.predict("add", {"c": a, "b": b})  # no such input: the codec's error
            assert refused.value.code == StatusCode.INVALID_ARGUMENT
            with SysVSegment.create(64) as segment:  # this process has the build
                shared = segment.write(a)
                if way == "no build":
                    with pytest.raises(AgentError) as refused:
                        client.predict("add", [shared, b])
                    assert refused.value.code == StatusCode.UNIMPLEMENTED
                    assert "edge_agent.shm._shm, the compiled module" in refused.value.message
                else:
                    np.testing.assert_array_equal(client.predict("add", [shared, b])["sum"],
                                                  a + b)
            [model] = client.get_metrics().models  # counted by the counters in use
            assert model.predict_seconds.count == (3 if way == "no build" else 4)
            assert client.list_models()  # still serving after every refusal
        assert agent.alive()
    finally:
        assert agent.stop() == 0, agent.log()


def test_the_client_imports_and_frames_without_a_compiled_build():
    code = WITHOUT_A_BUILD + """if True:
        from edge_agent import protocol
        from edge_agent.client import AgentClient
        from edge_agent.protocol import FrameSplitter, encode_request
        from edge_agent.api.rpcs import Method
        frame = encode_request(Method.LIST_MODELS, 7, b"hi")
        splitter = FrameSplitter(100)
        splitter.get_buffer(len(frame))[:] = frame
        splitter.buffer_updated(len(frame))
        print(protocol.FrameSplitter.__module__, splitter.next_view()[3])
        try:
            from edge_agent.shm_client import SysVSegment
            SysVSegment.create(10)
        except ImportError as e:
            print("segments need the build:", e.name)
    """
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["edge_agent.protocol._framing_py 7",
                                       "segments need the build: edge_agent.shm._shm"]
