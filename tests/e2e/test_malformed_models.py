"""Cut and flipped models against a live agent whose heap makes over-reads fatal
(PYTHONMALLOC=malloc with MALLOC_PERTURB_: memory past a buffer is freed or fresh and filled
with garbage, not the same bytes in every process): before the flatbuffer verifier
(edge_agent.models.verifier) the runtime followed a cut file's offsets past its copy of the
bytes and some of these killed the agent after the check in a child had passed them. A bounded
sample here; every cut and flip, and 500 loads during rewrites, in `make fuzz-models`
(EDGE_AGENT_FULL_SWEEP=1)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from agents import AgentProcess

from edge_agent.models import verifier as model_verifier
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder

from corrupt_models import GOOD, write

HARSH_HEAP = {"PYTHONMALLOC": "malloc", "MALLOC_PERTURB_": "165"}
# `make fuzz-models` sets it: every cut and flip, and 500 loads during rewrites.
FULL = os.environ.get("EDGE_AGENT_FULL_SWEEP") == "1"
pytestmark = pytest.mark.native_only


class HarshHeapAgent(AgentProcess):
    def command(self) -> list[str]:
        return ["env", *(f"{k}={v}" for k, v in HARSH_HEAP.items()), *super().command()]


# The agent's load path (AgentService.load_model) in a process of its own with the harsh heap,
# the check in a child reporting a pass: what happened in the agents that died, where the child
# had read harmless memory past the same bytes. Exit 0: every case refused or loaded.
LOAD_PATH = textwrap.dedent("""
    import sys
    from edge_agent import agent_pb2 as pb, config
    from edge_agent.errors import AgentError, StatusCode
    from edge_agent.models.model_check import Proof
    from edge_agent.api.service import AgentService
    service = AgentService(config.from_mapping({
        "edge_agent_state_dir": sys.argv[1], "edge_agent_allow_unsigned_models": True,
        "edge_agent_num_threads": 1}))
    service.prover.prove = lambda *args, **kwargs: Proof(peak_bytes=0)
    for path in sys.argv[2:]:
        print(path, flush=True)
        try:
            service.load_model(pb.LoadModelRequest(name="m", url=path))
            service.unload_model(pb.UnloadModelRequest(name="m"))
        except AgentError as e:
            assert e.code == StatusCode.FAILED_PRECONDITION, e
    service.close()
""")


def test_cut_models_never_reach_the_runtime_when_the_child_passed_them(tmp_path):
    """Before the verifier, the runtime in this process died of SIGSEGV on most of these
    cuts (reading past its copy of the bytes into garbage)."""
    paths = [str(write(tmp_path, f"cut-{n}", GOOD[:n])) for n in range(8, len(GOOD), 7)]
    run = subprocess.run([sys.executable, "-c", LOAD_PATH, str(tmp_path / "state"), *paths],
                         env={**os.environ, **HARSH_HEAP}, capture_output=True, text=True,
                         timeout=300)
    last = run.stdout.split()[-1:] or ["(none)"]
    assert run.returncode != -signal.SIGSEGV, f"the load path died of SIGSEGV at {last[0]}"
    assert run.returncode == 0, run.stderr[-2000:]


def sample() -> dict[str, bytes]:
    """~30 cases: cuts across the file (299 first: the cut that killed agents) and flips of
    the first 512 bytes, spread evenly; every one of them when FULL."""
    cases = {"cut-299": GOOD[:299]}
    for n in range(1 if FULL else 9, len(GOOD), 1 if FULL else 23):
        cases[f"cut-{n}"] = GOOD[:n]
    for at in range(0 if FULL else 3, min(512, len(GOOD)), 1 if FULL else 29):
        data = bytearray(GOOD)
        data[at] ^= 0xFF
        cases[f"flip-{at}"] = bytes(data)
    return cases


def test_cut_and_flipped_models_never_kill_the_agent(tmp_path):
    (tmp_path / "agent").mkdir()
    agent = HarshHeapAgent(tmp_path / "agent", {}).start()
    verifier = model_verifier.tflite_verifier()
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=2)
    try:
        with agent.client() as client:
            for name, content in sample().items():
                path = write(tmp_path, name, content)
                try:
                    verifier.verify(content)
                    well_formed = True
                except ValueError:
                    well_formed = False
                try:
                    client.load_model("m", str(path))
                except AgentError as e:
                    assert e.code == StatusCode.FAILED_PRECONDITION, (name, e)
                    if not well_formed:  # the verifier's words, or the header's check before it
                        assert ("is not a well-formed TensorFlow Lite model" in e.message
                                or "is not a TensorFlow Lite model" in e.message), e
                else:
                    assert well_formed, name
                    client.unload_model("m")
                assert agent.alive(), (name, agent.log()[-2000:])
            client.load_model("good", str(write(tmp_path, "good", GOOD)))
            np.testing.assert_array_equal(client.predict("good", inputs)["sum"],
                                          built.reference(inputs)["sum"])
    finally:
        code = agent.stop()
    assert code == 0, agent.log()[-2000:]


def _refused_variants() -> list[bytes]:
    """Cuts and flips the verifier refuses: a load that succeeds read the good model whole."""
    verifier = model_verifier.tflite_verifier()
    variants = [GOOD[:n] for n in (36, 100, 200, 256, 299)]
    for at in (11, 63, 124, 211):
        data = bytearray(GOOD)
        data[at] ^= 0xFF
        variants.append(bytes(data))
    for data in variants:
        with pytest.raises(ValueError):
            verifier.verify(data)
    return variants


@pytest.mark.parametrize("how", ["in-place", "rename"])
def test_loads_during_rewrites_never_kill_the_agent(tmp_path, how):
    """A writer keeps replacing the model between the good one and cut or flipped ones, in
    place (a reader may see any mix) or by rename, while a client loads it: each load is
    refused or is the good model, whole; the agent never dies. 250 loads each when FULL."""
    (tmp_path / "agent").mkdir()
    agent = HarshHeapAgent(tmp_path / "agent", {}).start()
    path = write(tmp_path, "racy", GOOD)
    variants = [v for bad in _refused_variants() for v in (GOOD, bad)]
    stop = threading.Event()
    rounds = [0]

    def rewrite() -> None:
        spare = tmp_path / "racy.next"
        while not stop.is_set():
            for content in variants:
                if how == "rename":
                    spare.write_bytes(content)
                    os.replace(spare, path)
                else:
                    with open(path, "r+b") as f:
                        f.write(content)
                        f.truncate()
                rounds[0] += 1

    writer = threading.Thread(target=rewrite, name="rewriter")
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=3)
    outcomes = {"loaded": 0, "refused": 0}
    writer.start()
    try:
        with agent.client() as client:
            for _ in range(250 if FULL else 10):
                try:
                    client.load_model("racy", str(path))
                except AgentError as e:
                    assert e.code == StatusCode.FAILED_PRECONDITION, e
                    outcomes["refused"] += 1
                else:
                    outcomes["loaded"] += 1
                    np.testing.assert_array_equal(client.predict("racy", inputs)["sum"],
                                                  built.reference(inputs)["sum"])
                    client.unload_model("racy")
                assert agent.alive(), agent.log()[-2000:]
    finally:
        stop.set()
        writer.join()
        code = agent.stop()
    assert code == 0, agent.log()[-2000:]
    assert rounds[0] > 0
    print(how, outcomes, "rewrites", rounds[0])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
