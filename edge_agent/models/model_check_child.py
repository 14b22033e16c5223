"""The check of model bytes, in the process that runs it: the only code that hands bytes
nobody has proven yet to the runtime, and so the only code that may be crashed by them.

It runs in a process of its own, made for the check (edge_agent/models/model_check.py decides how: forked
from a helper, or `python -m edge_agent.models.model_check_child`), and does to the bytes what the agent
will do: builds an interpreter with the agent's delegate settings, allocates its tensors,
resizes dynamic (-1) dimensions to 1 and invokes once on zero inputs, then reports the memory
the model cost it (and, for a package with test vectors, runs it on the test inputs and
compares its outputs: vectors.validate), under RLIMIT_DATA: its own baseline plus what the agent allows (a failing
allocation then meets std::bad_alloc instead of the kernel's OOM killer). The outcome is one
JSON line: {"outcome": "ok", "peak_bytes": N}, {"outcome": "memory", ...} or
{"outcome": "refused", "code": ..., "message": ...}; a crash reports nothing and is told by
the signal that ended the process. docs/MODEL_LOADING.md is the reference.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from typing import Callable

from edge_agent.errors import AgentError, StatusCode
from edge_agent.platform.memory import resident_bytes


def _status_bytes(key: str) -> int | None:
    """A figure of /proc/self/status: VmData is what RLIMIT_DATA counts; VmHWM the peak
    RSS of this process image (getrusage's ru_maxrss would include the RSS of the agent
    an exec'd child was forked from). None where the kernel (or an emulator) does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _private_dirty_bytes() -> int:
    """Memory this process has written since it began (Private_Dirty): pages it allocated, and
    pages inherited from a parent that it changed. 0 where the kernel does not say."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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


def _check(content: bytes, settings: dict, vectors: bytes | None = None,
           measure: Callable[[], int] | None = None) -> dict:
    """The outcome of the check; `measure()`, called once the model has run on zero inputs
    and before any test vectors (whose batch may be larger than what the agent will
    allocate), gives its "peak_bytes"."""
    from edge_agent.platform import delegates
    from edge_agent.config import from_mapping
    from edge_agent.models.engine import create_interpreter

    config = from_mapping(settings)
    try:
        interpreter, _ = delegates.interpreter_with_delegate(content, config, "the model",
                                                             create_interpreter)
        _exercise(interpreter)
        peak = measure() if measure is not None else 0
        if vectors is not None:
            from edge_agent.packaging.vectors import TestVectors, validate

            validate(interpreter, TestVectors.from_bytes(vectors))
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
    return {"outcome": "ok", "peak_bytes": peak}


def preload() -> None:
    """Import everything a check needs. Done before the baseline is taken, so the figure
    reported is what the model cost, not the agent's modules (which the agent has anyway);
    and by the pre-forked helper once, so its children start with it all."""
    from edge_agent.models import engine# noqa: F401
    from edge_agent.platform.runtime import interpreter_module
    import numpy  # noqa: F401

    interpreter_module()


def check(fd: int, request: dict, report: int, vectors_fd: int | None = None) -> None:
    """The whole check in this process, which must be one of its own (it sets limits on
    itself and may be killed by the bytes): read the model from `fd`, write the outcome as
    one JSON line to the descriptor `report`. `vectors_fd`: a package's test vectors
    (vectors.TestVectors.to_bytes), which the model then runs on, its outputs compared with
    the expected ones. The runtime's own prints (to fd 1 and 2) go nowhere, so nothing it
    says can be mistaken for the report."""
    # A delegate may tell this run from the agent's own (the tests' recording delegate keeps
    # its barrier for the agent's invokes).
    os.environ["EDGE_AGENT_MODEL_PROBE"] = "1"
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is expected; no core file
    preload()
    vectors = None
    if vectors_fd is not None:  # read before the baseline: the agent held them already
        with os.fdopen(vectors_fd, "rb") as f:
            f.seek(0)
            vectors = f.read()
    data = _status_bytes("VmData")
    if data is not None:  # else no baseline to add the allowance to: no memory limit
        limit = data + int(request["limit"])
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    baseline, written = resident_bytes(), _private_dirty_bytes()
    with os.fdopen(fd, "rb") as f:
        f.seek(0)  # the offset is shared with whoever wrote it, who left it at the end
        content = f.read()

    def measure() -> int:
        # The peak RSS of this process image above the baseline; but a forked child may
        # reuse heap its parent freed, which is resident already and does not raise the RSS:
        # what it wrote (Private_Dirty) counts that, with the interpreter alive.
        return max((_status_bytes("VmHWM") or baseline) - baseline,
                   _private_dirty_bytes() - written)

    result = _check(content, request["settings"], vectors, measure)
    os.write(report, (json.dumps(result) + "\n").encode())


def main(argv: list[str]) -> int:
    """`python -m edge_agent.models.model_check_child REQUEST`: the model in the descriptor the request
    names, the report on stdout."""
    request = json.loads(argv[0])
    check(request["fd"], request, os.dup(1), request.get("vectors_fd"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
