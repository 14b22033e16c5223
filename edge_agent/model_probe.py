"""Proving model bytes in a child process before the agent's own runtime sees them.

The runtime trusts the bytes it is given: a corrupt .tflite file can crash it (SIGSEGV), make
it allocate without bound, or loop. So every load first hands exactly the bytes the agent
will load (in a sealed memfd, never a path: a file rewritten meanwhile cannot matter) to a
fresh `python -m edge_agent.model_probe` process, which builds an interpreter with the
agent's delegate settings, allocates its tensors, resizes dynamic (-1) dimensions to 1 and
invokes once on zero inputs, under a memory limit and a time limit, and reports the memory
the model cost it. Only a model the child survived is loaded in the agent, and the memory
budget reserves what the child measured.

Why a fresh interpreter process rather than fork(): the agent is multithreaded, and a fork
of it may inherit a lock some other thread held; a fresh process is safe and simple, and
costs a Python start-up per load (measured in docs/BENCHMARKS.md), paid once per model.

The limits: RLIMIT_DATA (private writable memory: heap and anonymous mappings, which is
where the runtime's arena and copies go) is set by the child itself once its imports are
done, to its own baseline plus what the parent allows (the memory budget's free part) plus
room for the interpreter's thread stacks; the runtime then meets a failing allocation
(std::bad_alloc) instead of the kernel's OOM killer. The time limit is
edge_agent_model_probe_timeout_seconds; a child past it is killed.

Delegates: the child opens the delegate the agent would (edge_agent_delegate and its keys),
except an Edge TPU, which one process holds at a time (the agent, once a model runs on it):
there the child proves CPU models with the runtime's CPU kernels (what runs them under the
Edge TPU delegate too), and a model compiled for the Edge TPU is loaded without a proof.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass

from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError, StatusCode, failed_precondition, resource_exhausted

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Beyond the budget: the runtime's bookkeeping and each thread's stack (counted in
# RLIMIT_DATA) need room even for the smallest model.
_SLACK_BYTES = 32 * MIB
_STACK_BYTES = 8 * MIB
_RESULT_LIMIT = 64 * 1024  # the child's report is one short JSON line
_DELEGATE_KEYS = ("edge_agent_delegate", "edge_agent_delegate_options",
                  "edge_agent_delegate_library", "edge_agent_delegate_fallback",
                  "edge_agent_num_threads")


@dataclass(frozen=True)
class Proof:
    """What loading the model cost the child: its peak RSS above its baseline."""
    peak_bytes: int
    seconds: float = 0.0


def holds_edgetpu(config: AgentConfig) -> bool:
    """Whether the configured delegate is an Edge TPU, which the child cannot share."""
    return config.edge_agent_delegate == "edgetpu" or (
        config.edge_agent_delegate == "external"
        and os.path.basename(config.edge_agent_delegate_library).startswith("libedgetpu"))


def _child_settings(config: AgentConfig) -> dict:
    settings = {key: getattr(config, key) for key in _DELEGATE_KEYS}
    if holds_edgetpu(config):
        settings.update(edge_agent_delegate="xnnpack", edge_agent_delegate_library="")
    return settings


def _sealed_memfd(content: bytes) -> int:
    """A memfd holding `content` that nobody can change any more (F_SEAL_*)."""
    import fcntl

    fd = os.memfd_create("edge-agent-model", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view, written = memoryview(content), 0
        while written < len(view):
            written += os.write(fd, view[written:])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def prove(content: bytes, config: AgentConfig, what: str, memory_limit: int) -> Proof:
    """Load, allocate and invoke `content` in a child allowed `memory_limit` bytes beyond its
    own baseline; the Proof, or AgentError: FAILED_PRECONDITION for a model the runtime
    refused, crashed on or could not finish in time, RESOURCE_EXHAUSTED for one that needs
    more memory than it was allowed."""
    import time

    timeout = config.edge_agent_model_probe_timeout_seconds
    limit = max(0, memory_limit) + _SLACK_BYTES + _STACK_BYTES * config.edge_agent_num_threads
    fd = _sealed_memfd(content)
    started = time.monotonic()
    try:
        request = json.dumps({"fd": fd, "limit": limit, "settings": _child_settings(config)})
        child = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.model_probe", request], pass_fds=(fd,),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    finally:
        os.close(fd)  # the child has its own copy of the descriptor
    try:
        output, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise failed_precondition(
            f"{what}: the runtime did not finish loading and running this model within "
            f"{timeout:g} s (edge_agent_model_probe_timeout_seconds): the file is corrupt, or "
            "the model is too slow for this board") from None
    seconds = time.monotonic() - started
    status = child.returncode
    if status < 0:
        name = _signal_name(-status)
        if -status == signal.SIGKILL:
            raise failed_precondition(
                f"{what}: the runtime was killed (SIGKILL) reading this model, most likely by "
                "the kernel for want of memory: the file is corrupt or the model too large")
        raise failed_precondition(
            f"{what}: the runtime crashed reading this model ({name}): the file is corrupt "
            "or was written for another runtime")
    try:
        report = json.loads(output[:_RESULT_LIMIT].decode())
    except ValueError:
        raise failed_precondition(f"{what}: the model check ended with exit status {status} "
                                  "and no result") from None
    outcome = report.get("outcome")
    if outcome == "ok":
        return Proof(max(0, int(report["peak_bytes"])), seconds)
    if outcome == "memory":
        raise resource_exhausted(
            f"{what}: loading this model needs more than the {memory_limit / MIB:.1f} MiB "
            "the model memory budget has free (edge_agent_memory_budget_mb): unload a model "
            f"or raise the budget ({report.get('message', '')})")
    raise AgentError(StatusCode[report.get("code", "FAILED_PRECONDITION")],
                     f"{what}: {report.get('message', 'the runtime refused the model')}")


# --- the child ------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_bytes(key: str) -> int:
    """A figure of /proc/self/status: VmData is what RLIMIT_DATA counts; VmHWM the peak
    RSS of this process image (getrusage's ru_maxrss would include the RSS of the agent
    this child was forked from before its exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _exercise(interpreter) -> None:
    """Resize dynamic dimensions to 1, allocate and invoke once on zero inputs."""
    import numpy as np

    details = interpreter.get_input_details()
    resized = False
    for detail in details:
        signature = detail.get("shape_signature", detail["shape"])
        if any(int(d) < 0 for d in signature):
            interpreter.resize_tensor_input(detail["index"], [max(1, int(d)) for d in signature])
            resized = True
    if resized:
        interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    interpreter.get_output_details()  # names and types, as the agent reads them


def _check(content: bytes, settings: dict) -> dict:
    from edge_agent import delegates
    from edge_agent.config import from_mapping
    from edge_agent.engine import create_interpreter

    config = from_mapping(settings)
    try:
        interpreter, _ = delegates.create_interpreter(content, config, "the model",
                                                      create_interpreter)
        _exercise(interpreter)
    except AgentError as e:
        if e.code == StatusCode.RESOURCE_EXHAUSTED:
            return {"outcome": "memory", "message": e.message}
        return {"outcome": "refused", "code": e.code.name, "message": e.message}
    except MemoryError as e:
        return {"outcome": "memory", "message": str(e) or "MemoryError"}
    except UnicodeDecodeError:
        return {"outcome": "refused", "code": "FAILED_PRECONDITION",
                "message": "the model's tensor names are not valid UTF-8, which the API "
                           "cannot carry: the file is corrupt, or rename its tensors"}
    except Exception as e:  # the runtime's many ways of saying no to hostile bytes
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return {"outcome": "refused", "code": "FAILED_PRECONDITION",
                "message": f"the runtime refused the model: {first}"}
    return {"outcome": "ok"}


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    # The report goes to the parent's pipe; the runtime's own prints (to fd 1 and 2) go
    # nowhere, so nothing it says can be mistaken for the report.
    report = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is expected; no core file
    # Everything a check imports is imported before the baseline is taken, so the figure
    # reported is what the model cost, not the agent's modules (which the agent has anyway).
    from edge_agent import delegates, engine  # noqa: F401
    from edge_agent.runtime import interpreter_module
    import numpy  # noqa: F401

    interpreter_module()
    limit = _status_bytes("VmData") + int(request["limit"])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    baseline = _rss_bytes()
    with os.fdopen(request["fd"], "rb") as f:
        f.seek(0)  # the offset is shared with the parent, which left it at the end
        content = f.read()
    result = _check(content, request["settings"])
    if result["outcome"] == "ok":
        result["peak_bytes"] = _status_bytes("VmHWM") - baseline
    report.write(json.dumps(result) + "\n")
    report.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
