"""Fuzz harness: any bytes as a model file, through LoadModel's load path, then one
prediction on zeros: the path a corrupt or hostile .tflite file takes into the agent.

    make fuzz                     (long run; new inputs go to fuzz/out/models)
    python fuzz/models.py -runs=2000 OUT_DIR fuzz/corpus/models

What must hold for every input (an AssertionError is a finding): LoadModel answers OK or a
documented code, never INTERNAL or UNKNOWN, and raises nothing but AgentError; a loaded model
answers a prediction on zeros the same way.

Crash safety: the load path verifies every model's flatbuffer against the schema
(edge_agent/models/verifier.py), then proves it in a child process of its own before the
agent's runtime sees its bytes (edge_agent/models/model_check.py). The harness still loads each input in a
forked child, under a memory and a time limit, so that a crash cannot end the run: a child
killed by a signal means bytes that passed the check then crashed the agent's own runtime. It
is counted and printed (EDGE_AGENT_FUZZ_STRICT=1 fails on it) and worth keeping as a test.
"""
from __future__ import annotations

import os
import resource
import signal
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import WORK, agent_config, known_internal  # noqa: E402

with atheris.instrument_imports(include=["edge_agent"]):
    import numpy as np

    from edge_agent import agent_pb2 as pb
    from edge_agent.errors import AgentError, StatusCode
    from edge_agent.api.service import AgentService

NEVER = {StatusCode.INTERNAL, StatusCode.UNKNOWN}
CHILD_MEMORY_BYTES = 2 << 30  # address space a child may take (the runtime maps a lot)
CHILD_SECONDS = 20
# Exit codes of the child: 0 served, 1 refused with a documented code, 2 a finding.
SERVED, REFUSED, FINDING = 0, 1, 2


class Harness:
    def __init__(self):
        WORK.mkdir(parents=True, exist_ok=True)
        self.service = AgentService(agent_config())
        self.path = WORK / f"model-{os.getpid()}.tflite"
        self.crashes = 0

    def run(self, data: bytes) -> None:
        self.path.write_bytes(data)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            self.child(write_end)  # never returns
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            report = f.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            self.crashes += 1
            name = signal.Signals(os.WTERMSIG(status)).name
            if os.environ.get("EDGE_AGENT_FUZZ_STRICT") == "1":
                raise AssertionError(f"the load path died of {name}")
            print(f"crash #{self.crashes}: the agent's runtime died of {name} on an input "
                  "that passed the check in a child process", file=sys.stderr)
            return
        assert os.WEXITSTATUS(status) != FINDING, report

    def child(self, report_fd: int) -> None:
        code, message = FINDING, "the child failed before loading"
        try:
            resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
            signal.alarm(CHILD_SECONDS)  # SIGALRM ends a runtime that never returns
            code, message = self.load_and_predict()
        except BaseException as e:  # anything but AgentError is a finding
            code, message = FINDING, f"{type(e).__name__}: {e}"
        finally:
            os.write(report_fd, message.encode(errors="replace")[:4000])
            os._exit(code)

    def load_and_predict(self) -> tuple[int, str]:
        try:
            reply = self.service.load_model(pb.LoadModelRequest(name="fuzz", url=str(self.path)))
            request = pb.PredictRequest(name="fuzz")
            for tensor in reply.model.input_tensor_metadatas:
                shape = [max(d, 1) for d in tensor.shape]
                dtype = {pb.FLOAT32: np.float32, pb.UINT8: np.uint8, pb.INT8: np.int8,
                         pb.INT32: np.int32, pb.INT64: np.int64}.get(tensor.data_type, np.uint8)
                request.tensors.add(byte_data=np.zeros(shape, dtype).tobytes())
            self.service.predict(request)
            return SERVED, "OK"
        except AgentError as e:
            if e.code in NEVER and not known_internal(e.message):
                return FINDING, f"{e.code.name}: {e.message}"
            return REFUSED, f"{e.code.name}: {e.message}"


def main() -> None:
    harness = Harness()
    atheris.Setup(sys.argv, harness.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
