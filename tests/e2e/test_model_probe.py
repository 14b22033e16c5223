"""Corrupt models cannot hurt the agent: each is proven in a child process (model_probe)
first, refused with a status that says what happened, and the agent keeps serving.

The corrupt files are the project's own add model (model_builder) truncated, with a byte
flipped, cut to its header, with non-UTF-8 tensor names, or with a huge tensor; the flips
and cuts kept here are ones found (by trying every offset) to crash tflite-runtime with
SIGSEGV when it reads them in-process, and test_the_corrupt_cases_really_crash_the_runtime
proves they still do.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import package_cases as cases
from edge_agent import agent_pb2 as pb
from edge_agent import config as config_module
from edge_agent import model_probe, prover, runtime
from edge_agent.errors import AgentError, StatusCode
from edge_agent.service import AgentService
from edge_agent.tools import model_builder

GOOD = model_builder.add_model().content
# Offsets whose flipped byte (xor 0xff) makes the runtime dereference garbage (SIGSEGV),
# every time (others crash or not depending on what lies past the buffer).
CRASHING_FLIPS = (11, 63, 124, 211)
# Lengths the file is cut to that crash it the same way.
CRASHING_CUTS = (100, 200, 256)
# Where the offsets above were found: elsewhere (another build of the runtime) the same bytes
# may be refused rather than crash it, and either is a FAILED_PRECONDITION.
FOUND_ON = "x86_64"
# The corrupt cases below were found with tflite-runtime 2.14; LiteRT reads some of them
# differently (refuses rather than crashes, or the reverse), so the cases that need a crash
# or a refusal of a known kind are this runtime's.
FOUND_WITH = "tflite_runtime"
pytestmark = pytest.mark.skipif(
    runtime.runtime_name() != FOUND_WITH,
    reason=f"the corrupt cases were found with {FOUND_WITH}; this machine runs "
           f"{runtime.runtime_name()}")
# Cut to the flatbuffer's root offset and file identifier.
HEADER_ONLY = GOOD[:8]

# Runs the model as the agent would in-process, without the child: what used to kill it.
IN_PROCESS = """
import sys, numpy as np
from edge_agent.runtime import interpreter_module
i = interpreter_module().Interpreter(model_content=open(sys.argv[1], "rb").read(), num_threads=1)
i.allocate_tensors()
for d in i.get_input_details():
    i.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
i.invoke()
"""


def flipped(offset: int) -> bytes:
    data = bytearray(GOOD)
    data[offset] ^= 0xFF
    return bytes(data)


def non_utf8_names() -> bytes:
    stored = b"\x03\x00\x00\x00sum"  # the output's name: a length-prefixed string
    assert GOOD.count(stored) == 1
    return GOOD.replace(stored, b"\x03\x00\x00\x00s\xffm")


CORRUPT = {
    **{f"flip-{o}": flipped(o) for o in CRASHING_FLIPS},
    **{f"cut-{n}": GOOD[:n] for n in CRASHING_CUTS},
    "header-only": HEADER_ONLY,
}


def write(directory: Path, name: str, content: bytes) -> Path:
    path = directory / f"{name}.tflite"
    path.write_bytes(content)
    return path


def still_serving(client, good: Path) -> None:
    """The agent answers, loads and predicts as before."""
    client.load_model("good", str(good))
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=1)
    np.testing.assert_array_equal(client.predict("good", inputs)["sum"],
                                  built.reference(inputs)["sum"])
    client.unload_model("good")


def in_process_service(tmp_path) -> AgentService:
    return AgentService(config_module.from_mapping({
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))


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
    agent = start_agent()
    good = write(tmp_path, "good", GOOD)
    crashed = []
    with agent.client() as client:
        for name, content in CORRUPT.items():
            path = write(tmp_path, name, content)
            # A cut file is read past its end: what lies there in the checking process decides,
            # on any machine (a clean Debian 12 amd64 once read cut-256 as a model that runs).
            if platform.machine() == FOUND_ON and not name.startswith("cut-"):
                message = refused(client, path)
            else:  # a cut, or off FOUND_ON: it may read as a model that runs
                try:
                    client.load_model("bad", str(path))
                except AgentError as e:
                    assert e.code == StatusCode.FAILED_PRECONDITION, e
                    assert client.list_models() == []
                    message = e.message
                else:
                    client.unload_model("bad")
                    still_serving(client, good)
                    continue
            # The runtime reads past the buffer or through garbage offsets: what lies there
            # decides whether it says no or crashes; either way the agent is unharmed.
            if ("the runtime crashed reading this model (SIGSEGV): the file is corrupt or was "
                    "written for another runtime") in message:
                crashed.append(name)
            else:
                assert "the runtime refused the model" in message, message
            assert message.startswith("model 'bad': ")
            assert agent.alive()
            still_serving(client, good)
    if platform.machine() == FOUND_ON:
        assert len(crashed) >= len(CORRUPT) // 2, crashed  # the crash path was taken, often
    assert "model checks run in a helper process" in agent.log()  # forked at start


@pytest.mark.parametrize("use_helper", [True, False], ids=["helper", "fresh-process"])
def test_both_ways_of_running_a_check_tell_the_same(use_helper):
    config = config_module.from_mapping({"edge_agent_num_threads": 1})
    checks = prover.Prover(use_helper=use_helper)
    try:
        assert checks.has_helper is use_helper
        assert checks.prove(GOOD, config, "model 'm'", 1 << 20).peak_bytes > 0
        for content in (flipped(CRASHING_FLIPS[1]), non_utf8_names()):
            with pytest.raises(AgentError) as info:
                checks.prove(content, config, "model 'm'", 1 << 20)
            assert info.value.code == StatusCode.FAILED_PRECONDITION
            if platform.machine() == FOUND_ON and content != non_utf8_names():
                assert "crashed reading this model (SIGSEGV)" in info.value.message
    finally:
        checks.close()


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


def test_the_bytes_proven_are_the_bytes_loaded(tmp_path, monkeypatch):
    """The file is rewritten to a crashing version after it was read and proven, before the
    agent's runtime loads: the agent loads what it proved, never the file anew."""
    path = write(tmp_path, "m", GOOD)
    service = in_process_service(tmp_path)
    real_prove = service.prover.prove
    proven = []

    def prove_then_rewrite(content, config, what, memory_limit):
        proof = real_prove(content, config, what, memory_limit)
        proven.append(content)
        path.write_bytes(flipped(CRASHING_FLIPS[0]))  # would crash this process if read
        return proof

    monkeypatch.setattr(service.prover, "prove", prove_then_rewrite)
    try:
        service.load_model(pb.LoadModelRequest(name="m", url=str(path)))
        assert proven == [GOOD]
        built = model_builder.add_model()
        request = pb.PredictRequest(name="m")
        inputs = built.sample_inputs()
        from edge_agent.tensors import add_array
        for name, array in inputs.items():
            add_array(request.tensors, name, array)
        reply = service.predict(request)
        out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
        np.testing.assert_array_equal(out, built.reference(inputs)["sum"])
    finally:
        service.close()


def test_the_budget_reserves_what_the_child_measured(tmp_path, monkeypatch, model_files):
    service = in_process_service(tmp_path)
    real_prove = service.prover.prove
    proofs = []

    def recording(*args, **kwargs):
        proofs.append(real_prove(*args, **kwargs))
        return proofs[-1]

    monkeypatch.setattr(service.prover, "prove", recording)
    try:
        service.load_model(pb.LoadModelRequest(name="slow", url=str(model_files["slow"])))
        (proof,) = proofs
        size = model_files["slow"].stat().st_size
        # The runtime holds the file and packs its 32 MiB of weights again.
        assert proof.peak_bytes > size
        assert service.budget.used >= proof.peak_bytes
        service.unload_model(pb.UnLoadModelRequest(name="slow"))
        assert service.budget.used == 0
    finally:
        service.close()


@pytest.mark.parametrize("use_helper", [True, False], ids=["helper", "fresh-process"])
def test_a_check_past_its_time_is_killed_and_the_load_refused(tmp_path, monkeypatch,
                                                              use_helper):
    """The time limit, with a check that never answers (no model is slow on every machine):
    killed at the limit, FAILED_PRECONDITION, nothing left running."""
    pid_file = tmp_path / "pid"
    if use_helper:  # the helper is forked from here: its children run this check
        def hang(fd, request, report):
            pid_file.write_text(str(os.getpid()))
            time.sleep(1000)
        monkeypatch.setattr(model_probe, "check", hang)
    else:  # a fresh process runs sys.executable
        hang_script = tmp_path / "hang"
        hang_script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 1000\n")
        hang_script.chmod(0o755)
        monkeypatch.setattr(prover.sys, "executable", str(hang_script))
    config = config_module.from_mapping({"edge_agent_model_probe_timeout_seconds": 0.5})
    checks = prover.Prover(use_helper=use_helper)
    try:
        with pytest.raises(AgentError) as info:
            checks.prove(GOOD, config, "model 'm'", 1 << 20)
        assert checks.has_helper is use_helper  # a check that timed out is no helper fault
    finally:
        checks.close()
    assert info.value.code == StatusCode.FAILED_PRECONDITION
    assert "did not finish loading and running this model within 0.5 s" in info.value.message
    assert "edge_agent_model_probe_timeout_seconds" in info.value.message
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped, not left behind


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
        assert "the runtime crashed reading this model (SIGSEGV)" in message
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
        "from edge_agent.engine import create_interpreter\n"
        "from edge_agent.errors import AgentError\n"
        "from edge_agent.runtime import interpreter_module\n"
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


@pytest.mark.parametrize("report", [b"", b"garbage", b"[1, 2]", b'{"outcome": "ok"}',
                                    b'{"outcome": "ok", "peak_bytes": "x"}',
                                    b'{"outcome": "refused", "code": "NO_SUCH_CODE"}',
                                    b"\xff\xfe"])
def test_a_garbled_report_is_a_refusal_not_an_internal_error(report):
    """The report comes from a process that ran the untrusted bytes: whatever it says is
    read as hostile input."""
    ending = prover._Ending(0, False, report)
    with pytest.raises(AgentError) as info:
        prover._outcome(ending, "model 'm'", 30.0, 1 << 20, 0.1)
    assert info.value.code == StatusCode.FAILED_PRECONDITION


def test_a_dead_helper_is_replaced_by_fresh_processes():
    config = config_module.from_mapping({"edge_agent_num_threads": 1})
    checks = prover.Prover(use_helper=True)
    try:
        os.kill(checks._helper.pid, signal.SIGKILL)
        assert checks.prove(GOOD, config, "model 'm'", 1 << 20).peak_bytes > 0
        assert not checks.has_helper
        with pytest.raises(AgentError) as info:  # and they still catch what crashes
            checks.prove(flipped(CRASHING_FLIPS[0]), config, "model 'm'", 1 << 20)
        assert info.value.code == StatusCode.FAILED_PRECONDITION
    finally:
        checks.close()
