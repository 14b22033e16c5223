"""Corrupt models cannot hurt the agent process: each is checked against the schema
(model_verifier) and proven in a child process (model_probe) first, refused with a status
that says what happened, and the agent keeps serving; what the corrupt cases
(tests/corrupt_models.py) do to a process that loads them itself, and to the agent's own
runtime out of memory. (The check in its child: tests/e2e/test_prover.py; in process:
tests/unit/test_loading.py and tests/unit/test_model_verifier.py.)"""
from __future__ import annotations

import dataclasses
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import package_cases as cases
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder

from corrupt_models import (CORRUPT, CRASHING_FLIPS, FOUND_ON, FOUND_WITH_THIS_RUNTIME, GOOD,
                            flipped, non_utf8_names, write)

pytestmark = FOUND_WITH_THIS_RUNTIME

# Runs the model as the agent would in-process, without the child: what used to kill it.
IN_PROCESS = """
import sys, numpy as np
from edge_agent.platform.runtime import interpreter_module
i = interpreter_module().Interpreter(model_content=open(sys.argv[1], "rb").read(), num_threads=1)
i.allocate_tensors()
for d in i.get_input_details():
    i.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
i.invoke()
"""


def still_serving(client, good: Path) -> None:
    """The agent answers, loads and predicts as before."""
    client.load_model("good", str(good))
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=1)
    np.testing.assert_array_equal(client.predict("good", inputs)["sum"],
                                  built.reference(inputs)["sum"])
    client.unload_model("good")


def refused(client, path: Path, code: StatusCode = StatusCode.FAILED_PRECONDITION) -> str:
    with pytest.raises(AgentError) as info:
        client.load_model("bad", str(path))
    assert info.value.code == code, info.value
    assert client.list_models() == []
    return info.value.message


def data_limit_enforced() -> bool:
    """Whether RLIMIT_DATA holds here (qemu-user accepts it but does not apply it)."""
    run = subprocess.run([sys.executable, "-c", (
        "import resource; resource.setrlimit(resource.RLIMIT_DATA, (1 << 28, 1 << 28))\n"
        "try:\n    bytearray(1 << 29)\nexcept MemoryError:\n    print('enforced')")],
        capture_output=True, text=True)
    return run.stdout.strip() == "enforced"


@pytest.mark.skipif(platform.machine() != FOUND_ON,
                    reason=f"the crashing offsets were found with the {FOUND_ON} runtime")
def test_the_corrupt_cases_really_crash_the_runtime(tmp_path):
    """Most of them kill a process that loads them itself (what lies past a bad offset decides
    each one, so not every one every time): the cases are real crashes, not refusals."""
    crashed = []
    for name in (n for n in CORRUPT if n != "header-only"):
        path = write(tmp_path, name, CORRUPT[name])
        run = subprocess.run([sys.executable, "-c", IN_PROCESS, str(path)], capture_output=True)
        if run.returncode == -signal.SIGSEGV:
            crashed.append(name)
    assert len(crashed) >= (len(CORRUPT) - 1) // 2, crashed


def test_corrupt_models_are_refused_and_the_agent_keeps_serving(start_agent, tmp_path):
    """Every case leaves its buffer somewhere: the verifier refuses it in the agent before
    the child or the agent's runtime reads a byte (what the child catches when the runtime
    crashes on a model: tests/e2e/test_prover.py)."""
    agent = start_agent()
    good = write(tmp_path, "good", GOOD)
    with agent.client() as client:
        for name, content in CORRUPT.items():
            message = refused(client, write(tmp_path, name, content))
            assert message.startswith("model 'bad' is not a well-formed TensorFlow Lite model"), \
                message
            assert agent.alive()
            still_serving(client, good)
    assert "model checks run in a helper process" in agent.log()  # forked at start


def test_non_utf8_tensor_names_are_refused(start_agent, tmp_path):
    agent = start_agent()
    with agent.client() as client:
        message = refused(client, write(tmp_path, "names", non_utf8_names()))
        assert "tensor names are not valid UTF-8" in message
        still_serving(client, write(tmp_path, "good", GOOD))


def test_a_model_that_allocates_without_bound_is_refused_within_the_budget(start_agent,
                                                                           tmp_path):
    if not data_limit_enforced():
        pytest.skip("RLIMIT_DATA is not enforced here (qemu-user ignores it): the child's "
                    "memory limit cannot hold")
    # Three float32 tensors of 2**28 elements: 3 GiB of arena from a 352-byte file.
    huge = model_builder.add_model(shape=(1, 2**28)).content
    agent = start_agent(edge_agent_memory_budget_mb=64)
    with agent.client() as client:
        message = refused(client, write(tmp_path, "huge", huge), StatusCode.RESOURCE_EXHAUSTED)
        assert "edge_agent_memory_budget_mb" in message and "std::bad_alloc" in message
        still_serving(client, write(tmp_path, "good", GOOD))
    assert agent.rss_kb() < 512 * 1024  # the agent's own runtime never saw it


@pytest.mark.native_only
def test_a_model_rewritten_while_it_loads_never_kills_the_agent(start_agent, tmp_path):
    """A writer keeps swapping the file's content between a good and a crashing model in
    place while a client loads it: each load gets one version, whole, proven before use."""
    agent = start_agent()
    path = write(tmp_path, "racy", GOOD)
    bad = flipped(CRASHING_FLIPS[0])
    stop = threading.Event()

    def rewrite() -> None:
        with open(path, "r+b") as f:
            while not stop.is_set():
                for content in (bad, GOOD):
                    f.seek(0)
                    f.write(content)
                    f.flush()

    writer = threading.Thread(target=rewrite, name="rewriter")
    writer.start()
    outcomes = set()
    try:
        with agent.client() as client:
            for _ in range(12):
                try:
                    client.load_model("racy", str(path))
                    outcomes.add("loaded")
                    inputs = model_builder.add_model().sample_inputs()
                    client.predict("racy", inputs)
                    client.unload_model("racy")
                except AgentError as e:
                    assert e.code == StatusCode.FAILED_PRECONDITION, e
                    outcomes.add("refused")
                assert agent.alive()
    finally:
        stop.set()
        writer.join()
    assert outcomes  # what each load met depends on the writer; none killed the agent


def test_a_crashing_model_in_a_signed_package_is_refused_the_same_way(start_agent, tmp_path):
    signer = cases.Signer(tmp_path / "keys")
    # A flip the package builder's schema reader still parses (it reads inputs and outputs).
    corrupt = dataclasses.replace(model_builder.add_model(), content=flipped(124))
    package = signer.package(tmp_path / "pkg", model=corrupt, labels=False)
    agent = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                        edge_agent_allow_unsigned_models=False)
    with agent.client() as client:
        # A valid signature proves where the bytes come from, not that the runtime survives them.
        message = refused(client, package)
        assert "is not a well-formed TensorFlow Lite model" in message, message
        assert agent.alive()
        assert client.list_models() == []


def test_bad_alloc_in_the_agents_own_runtime_is_resource_exhausted(tmp_path):
    """Should the runtime run out of memory in the agent itself (the check passed, then
    memory ran short), the load is RESOURCE_EXHAUSTED, not INTERNAL. Run where RLIMIT_DATA
    can make it run short: a process of its own."""
    if not data_limit_enforced():
        pytest.skip("RLIMIT_DATA is not enforced here (qemu-user ignores it)")
    path = write(tmp_path, "huge", model_builder.add_model(shape=(1, 2**28)).content)
    script = (
        "import resource, sys\n"
        "from edge_agent.models.engine import create_interpreter\n"
        "from edge_agent.errors import AgentError\n"
        "from edge_agent.platform.runtime import interpreter_module\n"
        "interpreter_module()\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))\n"
        "try:\n"
        "    create_interpreter(open(sys.argv[1], 'rb').read(), 1)\n"
        "except AgentError as e:\n"
        "    print(e.code.name, e.message)\n")
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.startswith("RESOURCE_EXHAUSTED the runtime ran out of memory"), run.stdout
