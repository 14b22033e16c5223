"""What the model verifier lets through cannot hurt a runtime: the flips of a model it accepts,
loaded by the runtime in a child process whose heap makes over-reads fatal (the process, and
its heap, are the point; the verifier itself: tests/unit/test_model_verifier.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from corrupt_models import GOOD, flipped

from edge_agent.models import _flatverify_py, tflite_schema
from edge_agent.models import verifier as model_verifier

# A heap where reading freed or uninitialized memory past a buffer meets garbage, not
# leftovers of the same data: what made the agent's runtime crash on cut files.
HARSH_HEAP = {"PYTHONMALLOC": "malloc", "MALLOC_PERTURB_": "165"}


def _accepts(verifier, data: bytes) -> bool:
    try:
        verifier.verify(data)
    except ValueError:
        return False
    return True


def test_accepted_flips_load_and_predict_in_a_child_under_a_harsh_heap(tmp_path):
    """Each flip of the first 512 bytes the verifier accepts is handed to the runtime in a
    child process whose heap makes over-reads fatal: none kills it; the runtime refuses some
    (a flipped type or index), and those that load with the model's own inputs and outputs
    answer a + b."""
    verifier = _flatverify_py.Verifier(*model_verifier.schema_arguments(tflite_schema.TABLES,
                                                                        tflite_schema.UNIONS))
    flips = [flipped(at) for at in range(min(512, len(GOOD)))]
    accepted = [data for data in flips if _accepts(verifier, data)]
    assert accepted and len(accepted) < len(flips)
    for i, data in enumerate(accepted):
        (tmp_path / f"{i}.tflite").write_bytes(data)
    script = textwrap.dedent("""
        import os, sys, numpy as np
        from edge_agent.models.engine import create_interpreter
        a = np.arange(4, dtype=np.float32).reshape(1, 4); b = a * 3
        for path in sys.argv[1:]:
            data = open(path, "rb").read()
            pid = os.fork()
            if pid == 0:
                try:
                    i = create_interpreter(data, 1)
                    ins, outs = i.get_input_details(), i.get_output_details()
                    if ([d["name"] for d in ins] == ["a", "b"] and len(outs) == 1
                            and all(tuple(d["shape"]) == (1, 4) and d["dtype"] == np.float32
                                    for d in ins + outs)):
                        i.set_tensor(ins[0]["index"], a); i.set_tensor(ins[1]["index"], b)
                        i.invoke()
                        assert (i.get_tensor(outs[0]["index"]) == a + b).all(), path
                        os._exit(10)
                    os._exit(11)
                except AssertionError:
                    os._exit(12)
                except Exception:
                    os._exit(13)
            _, status = os.waitpid(pid, 0)
            print(path, status)
    """)
    run = subprocess.run([sys.executable, "-c", script,
                          *(str(tmp_path / f"{i}.tflite") for i in range(len(accepted)))],
                         env={**os.environ, **HARSH_HEAP}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    statuses = [int(line.split()[1]) for line in run.stdout.splitlines()]
    assert len(statuses) == len(accepted)
    assert all(os.WIFEXITED(s) for s in statuses), statuses  # no signal
    codes = [os.WEXITSTATUS(s) for s in statuses]
    assert 12 not in codes, codes  # a model that loads as add answers a + b
    assert 10 in codes  # flips of data the runtime does not check (names, identifier)
