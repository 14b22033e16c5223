"""The model check (models/model_check.py, model_check_child.py) in its processes: the
pre-forked helper and a fresh process tell the same, a check past its time is killed, a
garbled report is a refusal, a dead helper is replaced, the budget reserves what the child
measured. The corrupt cases are tests/corrupt_models.py's; agents that must survive
them are tests/e2e/test_model_probe.py's."""
from __future__ import annotations

import io
import os
import platform
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent import config as config_module
from edge_agent.models import model_check_child as model_probe
from edge_agent.models import model_check as prover
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder
from edge_agent.packaging.vectors import TestVectors

from corrupt_models import (CRASHING_FLIPS, FOUND_ON, FOUND_WITH_THIS_RUNTIME, GOOD,
                            flipped, non_utf8_names)

pytestmark = FOUND_WITH_THIS_RUNTIME


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


@pytest.mark.parametrize("use_helper", [True, False], ids=["helper", "fresh-process"])
def test_a_check_past_its_time_is_killed_and_the_load_refused(tmp_path, monkeypatch,
                                                              use_helper):
    """The time limit, with a check that never answers (no model is slow on every machine):
    killed at the limit, FAILED_PRECONDITION, nothing left running."""
    pid_file = tmp_path / "pid"
    if use_helper:  # the helper is forked from here: its children run this check
        def hang(fd, request, report, vectors_fd=None):
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


@pytest.mark.parametrize("use_helper", [True, False], ids=["helper", "fresh-process"])
def test_a_crash_while_the_test_vectors_run_is_a_refusal_naming_them(use_helper):
    """The child runs a package's test vectors as well as the model: a crash there is the
    same refusal, saying the vectors were running too. (In an agent, the flatbuffer verifier
    refuses these corrupt bytes before any check: tests/e2e/test_model_probe.py.)"""
    good = model_builder.add_model()
    inputs = good.sample_inputs(seed=1)
    vectors = TestVectors(tuple(_npy(a) for a in inputs.values()),
                          (_npy(good.reference(inputs)["sum"]),))
    config = config_module.from_mapping({"edge_agent_num_threads": 1})
    checks = prover.Prover(use_helper=use_helper)
    try:
        assert checks.prove(GOOD, config, "model 'm'", 1 << 20, vectors).peak_bytes > 0
        with pytest.raises(AgentError) as info:
            checks.prove(flipped(CRASHING_FLIPS[-1]), config, "model 'm'", 1 << 20, vectors)
        assert info.value.code == StatusCode.FAILED_PRECONDITION
        if platform.machine() == FOUND_ON:
            assert ("crashed reading this model or running it on the package's test inputs"
                    in info.value.message), info.value.message
    finally:
        checks.close()


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


# --- what the budget reserves (from tests/unit/test_loading.py: the child's measure) ------

def in_process_service(tmp_path):
    from edge_agent.api.service import AgentService

    return AgentService(config_module.from_mapping({
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))


@FOUND_WITH_THIS_RUNTIME
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
