"""The C client library (clients/c) against a real agent: every call and every error path.

The library, its example and a test driver (tests/c_client_driver.c: one library call per
line of stdin, one JSON result per line of stdout) are built once per session with the system
compiler; each driver runs under valgrind, which fails the test on any leak or invalid access.
Expected outputs come from the models' NumPy references.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from capture_helpers import disk_manifests, lines, payload, wait_for

from edge_agent.errors import AgentError
from edge_agent.protocol import HEADER, Kind
from edge_agent.shm_client import SysVSegment
from edge_agent.protocol.tensors import data_type_of, dtype_of
from edge_agent.tools import model_builder

ROOT = Path(__file__).resolve().parent.parent.parent
C_DIR = ROOT / "clients" / "c"
NOBODY = 65534
VALGRIND = shutil.which("valgrind")
VALGRIND_ARGS = ["--quiet", "--leak-check=full", "--show-leak-kinds=definite,indirect,possible",
                 "--errors-for-leak-kinds=definite,indirect,possible", "--error-exitcode=99"]


def _missing() -> str | None:
    """Why the C client cannot be built here, or None."""
    if not (C_DIR / "edge_agent_client.c").exists():
        return "no clients/c beside the tests (the emulated-board run copies only tests/)"
    for program in ("cc", "make", "pkg-config"):
        if shutil.which(program) is None:
            return f"no `{program}`"
    if subprocess.run(["pkg-config", "--exists", "libprotobuf-c"]).returncode != 0:
        return "libprotobuf-c-dev is not installed (install/test-packages.txt)"
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"C client: {MISSING}")


@pytest.fixture(scope="session")
def public_dir():
    """A directory another user can reach (pytest's tmp dirs are root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="edge-agent-c-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def c_build(public_dir):
    """The library, the example, the benchmark and the driver, built once in a public dir."""
    build = public_dir / "build"
    run = subprocess.run(["make", "-C", str(C_DIR), f"BUILD={build}", "all", "bench"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in run.stderr, run.stderr
    cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "libprotobuf-c"],
                            capture_output=True, text=True, check=True).stdout.split()
    driver = build / "driver"
    subprocess.run(["cc", "-std=c11", "-g", "-O1", "-Wall", "-Wextra", f"-I{C_DIR}", "-o",
                    str(driver), str(ROOT / "tests" / "c_client_driver.c"),
                    str(build / "libedge_agent_client.a"), *cflags, "-pthread"],
                   check=True)
    return build


class Driver:
    """One run of the driver program (under valgrind when it is installed)."""

    def __init__(self, build: Path, log: Path, *args: str, user: int | None = None):
        self.log = log
        command = [str(build / "driver"), *args]
        if VALGRIND:
            command = [VALGRIND, *VALGRIND_ARGS, f"--log-file={log}", *command]
        if user is not None:
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                       *command]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.finished: dict | None = None

    def __call__(self, *words) -> dict:
        self.process.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the driver died ({self.process.wait()}): {self.report()}")
        return json.loads(line)

    def report(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def finish(self) -> dict:
        """Ends the run: its last words; fails on a leak or an invalid access."""
        if self.finished is None:
            self.finished = self("quit")
            self.process.stdin.close()
            code = self.process.wait()
            assert code == 0, f"driver exit {code} (99: valgrind found errors):\n{self.report()}"
        return self.finished


@pytest.fixture
def driver(c_build, public_dir):
    """driver(*args, user=None) → a new Driver; every one must end clean (no leak)."""
    drivers: list[Driver] = []

    def start(*args: str, user: int | None = None) -> Driver:
        log = public_dir / f"valgrind-{uuid.uuid4().hex}.log"
        if user is not None:  # valgrind writes its log as that user
            log.touch()
            os.chown(log, user, user)
        drivers.append(Driver(c_build, log, *args, user=user))
        return drivers[-1]

    yield start
    for d in drivers:
        d.finish()


class Files:
    """Arrays written to files the driver reads, and the driver's tensor specs naming them."""

    def __init__(self, directory: Path):
        self.directory = directory

    def spec(self, array: np.ndarray, name: str | None = None, *, typed: bool = True,
             source: str = "file", offset: int = 0, segment: int = 0, size: int | None = None) -> str:
        path = self.directory / f"{uuid.uuid4().hex}.bin"
        np.ascontiguousarray(array).tofile(path)
        path.chmod(0o644)
        dtype = data_type_of(array.dtype) if typed else "-"
        shape = ",".join(str(d) for d in array.shape) if typed else "-"
        if source == "file":
            where = f"file={path}"
        else:  # "sysv" or "posix": a segment the C program makes
            where = f"{source}={path}@{offset}/{segment}/{array.nbytes if size is None else size}"
        return f"{name or '-'}:{dtype}:{shape}:{where}"


@pytest.fixture
def files(public_dir):
    directory = public_dir / uuid.uuid4().hex
    directory.mkdir(mode=0o755)
    return Files(directory)


def outputs(result: dict) -> dict[str, np.ndarray]:
    """The arrays of a predict result, by name."""
    assert result["code"] == 0, result
    return {o["name"]: np.frombuffer(bytes.fromhex(o["hex"]), dtype_of(o["dtype"])).reshape(o["shape"])
            for o in result["outputs"]}


def connected(driver, agent, *args, timeout_ms: int = 0) -> Driver:
    d = driver(*args)
    assert d("connect", agent.socket_path, 5000, timeout_ms)["code"] == 0
    return d


# --- the calls ---------------------------------------------------------------------------------

def test_the_leak_checker_is_here():
    """Without valgrind the C tests still run, unchecked for leaks: this says so."""
    if VALGRIND is None:
        pytest.skip("no valgrind (install/test-packages.txt): the C tests run without a leak check")

def test_generated_code_matches_the_proto(tmp_path):
    """clients/c/agent.pb-c.[ch] are what protoc-c makes of proto/agent.proto today."""
    if shutil.which("protoc-c") is None:
        pytest.skip("no protoc-c (protobuf-c-compiler, install/test-packages.txt)")
    # The text depends on protoc-c's version, which the header records (1004001 = 1.4.1).
    committed = re.search(r"#elif (\d+) < PROTOBUF_C_MIN_COMPILER_VERSION",
                          (C_DIR / "agent.pb-c.h").read_text())
    number = int(committed.group(1))
    committed_version = f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"
    here = subprocess.run(["protoc-c", "--version"], capture_output=True, text=True).stdout.split()
    if committed_version not in here:
        pytest.skip(f"clients/c/agent.pb-c.* come from protoc-c {committed_version} (Debian 12); "
                    f"this protoc-c is {' '.join(here[:2])}, whose output differs in form")
    subprocess.run(["protoc-c", f"--proto_path={ROOT / 'proto'}", f"--c_out={tmp_path}",
                    "agent.proto"], check=True)
    for name in ("agent.pb-c.c", "agent.pb-c.h"):
        assert (tmp_path / name).read_text() == (C_DIR / name).read_text(), \
            f"clients/c/{name} is stale: run `make -C clients/c proto`"


def test_the_example_round_trips(c_build, agent, model_files):
    """The example program: load, predict (by position, no metadata), list, unload."""
    command = [str(c_build / "example"), agent.socket_path, str(model_files["demo"]), "demo"]
    if VALGRIND:
        command = [VALGRIND, *VALGRIND_ARGS, *command]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    printed = run.stdout.splitlines()
    assert printed[0] == "loaded demo (xnnpack)"
    name, _, _, _, shape, _, *values = printed[1].split()[1:]
    features = np.arange(8, dtype=np.float32).reshape(1, 8)
    expected = model_builder.demo_model().reference({"features": features})["scores"]
    assert (name, shape) == ("scores", "[1,3]")
    np.testing.assert_allclose(np.array(values, np.float32), expected.ravel(), rtol=1e-5)
    assert printed[2] == f"model demo {model_files['demo']}"
    assert printed[3] == "unloaded demo"
    with agent.client() as client:
        assert client.list_models() == []


def test_load_describe_list_unload(driver, agent, model_files):
    d = connected(driver, agent)
    loaded = d("load", "add", model_files["add"])
    assert loaded["code"] == 0, loaded
    assert loaded["model"] == {
        "name": "add", "url": str(model_files["add"]), "delegate": "xnnpack", "version": "",
        "inputs": [{"name": "a", "dtype": 5, "shape": [1, 4]}, {"name": "b", "dtype": 5, "shape": [1, 4]}],
        "outputs": [{"name": "sum", "dtype": 5, "shape": [1, 4]}]}
    assert d("load", "dynamic", f"file://{model_files['dynamic']}")["code"] == 0
    assert d("describe", "dynamic")["model"]["inputs"] == [{"name": "x", "dtype": 5, "shape": [-1, 4]}]
    assert [m["name"] for m in d("list")["models"]] == ["add", "dynamic"]
    assert d("describe", "add")["model"] == loaded["model"]
    assert d("unload", "add")["code"] == 0
    assert [m["name"] for m in d("list")["models"]] == ["dynamic"]
    assert d("unload", "dynamic")["code"] == 0
    assert d("list") == {"code": 0, "status": "OK", "message": "", "models": []}


def test_a_package_version_reaches_the_c_client(driver, start_agent, tmp_path):
    import package_cases as cases

    signer = cases.Signer(tmp_path / "keys")
    out = tmp_path / "pkg"
    cases.packages.build_package(model_builder.demo_model().content, "demo", "3.1-rc.2",
                                 cases.packages.Target.host(), signer.key_path, str(out))
    agent = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust))
    d = connected(driver, agent)
    loaded = d("load", "demo", out)
    assert loaded["code"] == 0, loaded
    assert loaded["model"]["version"] == "3.1-rc.2"
    assert d("list")["models"][0]["version"] == "3.1-rc.2"


def test_predict_by_position_by_name_and_without_metadata(driver, agent, model_files, files):
    model = model_builder.add_model()
    a, b = model.sample_inputs(seed=1).values()
    expected = model.reference({"a": a, "b": b})["sum"]
    d = connected(driver, agent)
    d("load", "add", model_files["add"])
    by_position = d("predict", "add", files.spec(a), files.spec(b))
    by_name = d("predict", "add", files.spec(b, "b"), files.spec(a, "a"))  # any order
    untyped = d("predict", "add", files.spec(a, typed=False), files.spec(b, typed=False))
    for result in (by_position, by_name, untyped):
        got = outputs(result)
        assert list(got) == ["sum"] and got["sum"].dtype == np.float32
        np.testing.assert_array_equal(got["sum"], expected)


def test_predict_every_output_and_exact_integers(driver, agent, model_files, files):
    d = connected(driver, agent)
    for name in ("multi", "quant-uint8", "dynamic"):
        assert d("load", name, model_files[name])["code"] == 0
    multi = model_builder.multi_output_model()
    x = multi.sample_inputs(seed=2)["x"]
    got = outputs(d("predict", "multi", files.spec(x, "x")))
    assert list(got) == ["doubled", "squared", "negated"]  # the model's order
    for name, value in multi.reference({"x": x}).items():
        np.testing.assert_array_equal(got[name], value)

    quant = model_builder.quantized_add_model("uint8")
    inputs = quant.sample_inputs(seed=3)
    got = outputs(d("predict", "quant-uint8", *(files.spec(v, k) for k, v in inputs.items())))
    np.testing.assert_array_equal(got["sum"], quant.reference(inputs)["sum"])
    assert got["sum"].dtype == np.uint8

    x = np.arange(12, dtype=np.float32).reshape(3, 4)  # batch 3 on a [-1, 4] input
    got = outputs(d("predict", "dynamic", files.spec(x, "x")))
    np.testing.assert_array_equal(got["y"], model_builder.dynamic_batch_model().reference({"x": x})["y"])


def test_a_large_tensor_crosses_in_many_pieces(driver, agent, files, tmp_path):
    """602112 bytes each way: the socket takes and gives it in short writes and reads."""
    model = model_builder.image_model()
    path = model.write(tmp_path / "image.tflite")
    image = model.sample_inputs(seed=4)["image"]
    d = connected(driver, agent)
    assert d("load", "image", path)["code"] == 0
    got = outputs(d("predict", "image", files.spec(image, "image")))
    np.testing.assert_allclose(got["out"], model.reference({"image": image})["out"], rtol=1e-6)


def test_threads_sharing_one_client_take_turns(driver, agent, tmp_path, files):
    """Four threads released together by a barrier share one client: each gets its own
    answer every time (the replies are never crossed)."""
    model = model_builder.dynamic_batch_model()
    path = model.write(tmp_path / "dynamic.tflite")
    d = connected(driver, agent)
    assert d("load", "dynamic", path)["code"] == 0
    xs = [np.full((1, 4), i + 1, np.float32) for i in range(4)]
    result = d("threads", "dynamic", 25, *(files.spec(x, "x") for x in xs))
    for x, thread in zip(xs, result["threads"]):
        assert (thread["failures"], thread["differing"]) == (0, 0), result
        got = np.frombuffer(bytes.fromhex(thread["hex"]), np.float32).reshape(1, 4)
        np.testing.assert_array_equal(got, model.reference({"x": x})["y"])


def test_signals_interrupting_every_wait_change_nothing(driver, agent, model_files, files):
    """SIGALRM every 200 µs, installed without SA_RESTART: the library's poll, send and recv
    see EINTR again and again, and every call still returns the right answer."""
    model = model_builder.slow_model()
    x = model.sample_inputs(seed=5)["x"]
    expected = model.reference({"x": x})["y"]
    d = driver("--signals")
    assert d("connect", agent.socket_path, 5000, 0)["code"] == 0
    assert d("load", "slow", model_files["slow"])["code"] == 0
    spec = files.spec(x, "x")
    for _ in range(5):
        np.testing.assert_allclose(outputs(d("predict", "slow", spec))["y"], expected,
                                   rtol=1e-4, atol=1e-5)
    assert d.finish()["signals"] > 0


# --- shared memory -----------------------------------------------------------------------------

def test_a_sysv_input_made_by_the_c_program(driver, agent, model_files, files):
    model = model_builder.add_model()
    a, b = model.sample_inputs(seed=6).values()
    d = connected(driver, agent)
    d("load", "add", model_files["add"])
    mixed = d("predict", "add", files.spec(a, "a", source="sysv", offset=64, segment=4096),
              files.spec(b, "b"))
    np.testing.assert_array_equal(outputs(mixed)["sum"], a + b)
    both = d("predict", "add", files.spec(a, source="sysv"), files.spec(b, source="sysv", offset=8))
    np.testing.assert_array_equal(outputs(both)["sum"], a + b)
    size_zero = d("predict", "add", files.spec(a, "a", source="sysv", size=0), files.spec(b, "b"))
    np.testing.assert_array_equal(outputs(size_zero)["sum"], a + b)  # 0: the tensor's length
    posix = d("predict", "add", files.spec(a, "a", source="posix", offset=32, segment=4096),
              files.spec(b, "b", source="sysv"))
    np.testing.assert_array_equal(outputs(posix)["sum"], a + b)


def test_outputs_written_into_the_c_programs_segment(driver, agent, model_files, files):
    model = model_builder.multi_output_model()
    x = model.sample_inputs(seed=7)["x"]
    d = connected(driver, agent)
    d("load", "multi", model_files["multi"])
    result = d("predict", "multi", files.spec(x, "x"), "out=16", "out=64", "out=4096")
    assert [o["shm"] for o in result["outputs"]] == [1, 1, 1]  # EA_SHM_SYSV: not inline
    for name, value in model.reference({"x": x}).items():
        np.testing.assert_array_equal(outputs(result)[name], value)
    too_small = d("predict", "multi", files.spec(x, "x"), "out=16", "out=8", "out=16")
    assert too_small["status"] == "INVALID_ARGUMENT", too_small
    assert "squared" in too_small["message"], too_small


def test_shared_memory_errors(driver, agent, model_files, files):
    model = model_builder.add_model()
    a, b = model.sample_inputs(seed=8).values()
    d = connected(driver, agent)
    d("load", "add", model_files["add"])
    beyond = d("predict", "add", files.spec(a, "a", source="sysv", offset=4088, segment=4096),
               files.spec(b, "b"))
    assert beyond["status"] == "INVALID_ARGUMENT", beyond
    assert "lie beyond the end of SysV segment" in beyond["message"], beyond
    wrong_size = d("predict", "add", files.spec(a, "a", source="sysv", size=12), files.spec(b, "b"))
    assert wrong_size["status"] == "INVALID_ARGUMENT", wrong_size
    with SysVSegment.create(64) as segment:
        removed = segment.shmid
    gone = d("predict", "add", f"a:5:1,4:shmid={removed}@0/16", files.spec(b, "b"))
    assert gone["status"] == "INVALID_ARGUMENT", gone
    huge_offset = d("predict", "add", f"a:5:1,4:shmid={removed}@{2**64 - 8}/16", files.spec(b, "b"))
    assert huge_offset["status"] == "INVALID_ARGUMENT", huge_offset
    np.testing.assert_array_equal(outputs(d("predict", "add", files.spec(a), files.spec(b)))["sum"],
                                  a + b)  # the connection is still good


# --- a second user -----------------------------------------------------------------------------

@pytest.fixture
def public_agent(start_agent, public_dir, model_files):
    """An agent with its socket open to every user, the add model loaded."""
    workdir = public_dir / f"agent-{uuid.uuid4().hex}"
    workdir.mkdir(mode=0o755)
    agent = start_agent(workdir=workdir, edge_agent_socket_mode="0666")
    shutil.copy(model_files["add"], workdir / "add.tflite")
    with agent.client() as client:
        client.load_model("add", str(workdir / "add.tflite"))
    return agent


def test_another_users_c_program_cannot_read_roots_segment(driver, public_agent, files):
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("becoming another user needs root and setpriv (util-linux)")
    a, b = model_builder.add_model().sample_inputs(seed=9).values()
    d = driver(user=NOBODY)
    assert d("connect", public_agent.socket_path, 5000, 0)["code"] == 0
    with SysVSegment.create(a.nbytes, mode=0o600) as private:  # root's
        tensor = private.write(a)
        denied = d("predict", "add", f"a:5:1,4:shmid={tensor.segment_id}@0/16", files.spec(b, "b"))
    assert denied["status"] == "PERMISSION_DENIED", denied
    assert "uid 65534" in denied["message"], denied
    own = d("predict", "add", files.spec(a, "a", source="sysv"), files.spec(b, "b"))
    np.testing.assert_array_equal(outputs(own)["sum"], a + b)  # nobody's own segment
    assert public_agent.alive()


# --- errors ------------------------------------------------------------------------------------

def test_every_call_reports_the_agents_status_and_message(driver, agent, model_files, files, tmp_path):
    model = model_builder.add_model()
    a, b = model.sample_inputs(seed=10).values()
    d = connected(driver, agent)
    assert d("load", "add", model_files["add"])["code"] == 0

    def error(*words):
        result = d(*words)
        assert result["code"] != 0, result
        return result["status"], result["message"]

    assert error("describe", "nope") == ("NOT_FOUND", "no model named 'nope' is loaded (loaded: add)")
    assert error("unload", "nope")[0] == "NOT_FOUND"
    assert error("predict", "nope", files.spec(a), files.spec(b))[0] == "NOT_FOUND"
    status, message = error("load", "bad_name!", model_files["add"])
    assert status == "INVALID_ARGUMENT" and "bad_name!" in message
    assert error("load", "missing", tmp_path / "missing.tflite")[0] == "NOT_FOUND"
    assert error("load", "web", "http://127.0.0.1/m.tflite")[0] == "INVALID_ARGUMENT"
    assert error("load", "add", model_files["add"])[0] == "ALREADY_EXISTS"
    status, message = error("load", "custom", model_files["custom"])
    assert status == "FAILED_PRECONDITION" and "EdgeAgentMissingOp" in message
    status, message = error("predict", "add", files.spec(a.reshape(4, 1), "a"), files.spec(b, "b"))
    assert status == "INVALID_ARGUMENT" and "input 'a'" in message
    status, message = error("predict", "add", files.spec(a.astype(np.float64), "a"), files.spec(b, "b"))
    assert status == "INVALID_ARGUMENT" and "FLOAT32" in message
    status, message = error("predict", "add", files.spec(a[:, :3], typed=False), files.spec(b, typed=False))
    assert status == "INVALID_ARGUMENT" and "12 bytes" in message
    assert error("predict", "add", files.spec(a, "a"), files.spec(b, "nope"))[0] == "INVALID_ARGUMENT"
    assert error("predict", "add", files.spec(a, "a"), files.spec(b))[0] == "INVALID_ARGUMENT"
    assert error("predict", "add", files.spec(a))[0] == "INVALID_ARGUMENT"  # one input of two
    path = files.spec(a).rsplit(":", 1)[1]  # by name, no data type: the library says why
    assert error("predict", "add", f"a:-:-:{path}", f"b:-:-:{path}") == (
        "INVALID_ARGUMENT", "input 0 ('a'): a name or a shape needs the data type too (or give "
        "none of the three)")
    assert d("predict", "add", f"a:5:-:{path}", f"b:5:-:{path}")["code"] == 0  # the model's shape
    np.testing.assert_array_equal(outputs(d("predict", "add", files.spec(a), files.spec(b)))["sum"],
                                  a + b)  # every error left the connection usable
    assert agent.alive()


def test_an_unsigned_model_is_refused_when_not_allowed(driver, start_agent, model_files):
    agent = start_agent(edge_agent_allow_unsigned_models=False)
    d = connected(driver, agent)
    refused = d("load", "add", model_files["add"])
    assert refused["status"] == "FAILED_PRECONDITION", refused
    assert d("list")["models"] == []


def test_capture_and_its_status(driver, start_agent, files, tmp_path):
    captures = tmp_path / "captures"
    agent = start_agent(sagemaker_edge_core_capture_data_disk_path=str(captures),
                        sagemaker_edge_core_capture_data_push_period_seconds=0.05)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.array([7, -1], np.int64)
    d = connected(driver, agent)
    made = d("capture", "cam", "new", 1700000000, f"in={files.spec(x, 'x', source='sysv')}",
             f"out={files.spec(y, 'y')}", 'aux=meta:1:{"k":1}')
    assert made["code"] == 0, made
    cid = str(uuid.UUID(made["capture_id"]))
    assert uuid.UUID(cid).version == 4
    with agent.client() as client:
        wait_for(lambda: client.get_capture_data_status(cid) == "SUCCESS", what="the capture")
    assert d("status", cid) == {"code": 0, "status": "OK", "message": "", "capture_status": 1,
                                "reason": ""}
    (entry,) = lines(disk_manifests(captures))
    read = lambda name: next(captures.rglob(name)).read_bytes()  # noqa: E731
    assert entry["capture_id"] == cid and entry["model_name"] == "cam"
    assert entry["inference_timestamp"].startswith("2023-11-14T22:13:20")
    assert payload(entry["input_tensors"][0], read) == x.tobytes()
    assert entry["input_tensors"][0]["shape"] == [2, 3]
    assert payload(entry["output_tensors"][0], read) == y.tobytes()
    assert entry["aux_inputs"][0]["encoding"] == "JSON"
    assert base64.b64decode(entry["aux_inputs"][0]["data"]) == b'{"k":1}'

    again = d("capture", "cam", cid, "now", f"in={files.spec(x, 'x')}")
    assert again["status"] == "ALREADY_EXISTS", again
    unknown = d("status", str(uuid.uuid4()))
    assert unknown["status"] == "NOT_FOUND", unknown
    assert d("capture", "cam", "bad/id", "now", f"in={files.spec(x, 'x')}")["status"] == \
        "INVALID_ARGUMENT"
    assert d("capture", "cam", "new", "now")["status"] == "INVALID_ARGUMENT"  # nothing to capture


# --- the connection ----------------------------------------------------------------------------

def test_no_agent_is_unavailable(driver, tmp_path):
    d = driver()
    result = d("connect", tmp_path / "absent.sock", 1000, 1000)
    assert result["status"] == "UNAVAILABLE" and "No such file" in result["message"], result
    long = d("connect", "/" + "x" * 200, 1000, 1000)
    assert long["status"] == "INVALID_ARGUMENT", long


def test_the_agent_closing_on_an_oversized_frame(driver, start_agent, model_files, files):
    """A frame over edge_agent_max_frame_bytes: the agent answers RESOURCE_EXHAUSTED with the
    request's id and closes; the library reports that, then UNAVAILABLE; the agent serves on."""
    agent = start_agent(edge_agent_max_frame_bytes=1024)
    d = connected(driver, agent)
    assert d("load", "add", model_files["add"])["code"] == 0
    big = np.zeros((1, 4096), np.float32)
    closed = d("predict", "add", files.spec(big, "a"), files.spec(big, "b"))
    assert closed["status"] == "RESOURCE_EXHAUSTED", closed
    assert "exceeds the limit" in closed["message"], closed
    after = d("list")
    assert after["status"] == "UNAVAILABLE", after
    assert agent.alive()
    fresh = connected(driver, agent)
    assert [m["name"] for m in fresh("list")["models"]] == ["add"]


def test_too_many_clients_is_read_not_a_broken_pipe(driver, start_agent):
    agent = start_agent(edge_agent_max_connections=1)

    def take_the_place():  # the fixture's readiness probe may hold it a moment after closing
        client = agent.client()
        try:
            client.list_models()
            return client
        except AgentError:
            client.close()
            return None

    with wait_for(take_the_place, what="the one place at the agent"):
        d = connected(driver, agent)
        refused = d("list")
        assert refused["status"] == "RESOURCE_EXHAUSTED", refused
        assert "too many clients" in refused["message"], refused


# --- a hostile peer: a fake agent on a UNIX socket ---------------------------------------------

def read_request(conn: socket.socket) -> int | None:
    """Reads one request frame: its request id (None at end of stream)."""
    header = b""
    while len(header) < HEADER.size:
        chunk = conn.recv(HEADER.size - len(header))
        if not chunk:
            return None
        header += chunk
    *_, request_id, length = HEADER.unpack(header)
    while length:
        length -= len(conn.recv(length))
    return request_id


def fake_agent(path: Path, answer) -> threading.Thread:
    """Accepts one connection, reads one request frame and calls answer(conn, request_id)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve():
        with listener:
            conn, _ = listener.accept()
            with conn:
                request_id = read_request(conn)
                if request_id is not None:
                    answer(conn, request_id)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def reply(request_id: int, body: bytes, status: int = 0, method: int = 4) -> bytes:
    return HEADER.pack(b"EA", 1, Kind.REPLY, method, status, request_id, len(body)) + body


HOSTILE = {
    "not a frame": (lambda c, i: c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
                    "INTERNAL", "not an edge-agent reply"),
    "cut short": (lambda c, i: c.sendall(reply(i, b"\x0a\x08" + bytes(8))[:20]),
                  "UNAVAILABLE", "in the middle of a reply"),
    "closed": (lambda c, i: None, "UNAVAILABLE", "closed the connection before replying"),
    "huge length": (lambda c, i: c.sendall(HEADER.pack(b"EA", 1, Kind.REPLY, 4, 0, i, 2**32 - 1)),
                    "RESOURCE_EXHAUSTED", "over the client's limit"),
    "garbage body": (lambda c, i: c.sendall(reply(i, b"\xff\xff\xff\xff")),
                     "INTERNAL", "not a valid"),
    "other ids first": (lambda c, i: c.sendall(reply(i + 7, b"stale", 5) + reply(i, b"")),
                        "OK", ""),
    "error with id 0": (lambda c, i: c.sendall(reply(0, b"going away", 13)),
                        "INTERNAL", "going away"),
    "a status gRPC lacks": (lambda c, i: c.sendall(reply(i, b"odd", 99)), "UNKNOWN", "odd"),
    "silence": (lambda c, i: c.recv(1), "DEADLINE_EXCEEDED", "no reply from the agent within 300 ms"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_peer_gets_a_clear_error(driver, public_dir, case):
    answer, status, message = HOSTILE[case]
    path = public_dir / f"{uuid.uuid4().hex[:8]}.sock"
    thread = fake_agent(path, answer)
    d = driver()
    # A short call timeout only where none is to come: a busy machine may delay a reply.
    assert d("connect", path, 1000, 300 if case == "silence" else 60000)["code"] == 0
    result = d("list")
    assert (result["status"], message in result["message"]) == (status, True), result
    if case == "silence":  # the fake waits for one more byte: unblock it
        d("close")
    thread.join(10)
    os.unlink(path)


def test_a_late_reply_is_skipped_by_its_request_id(driver, public_dir):
    """A call times out; its reply arrives just before the next call's: the next call gets
    its own reply, not the stale one."""
    def answer(conn, first_id):
        second_id = read_request(conn)  # the client gave up on the first and sent a second
        conn.sendall(reply(first_id, b"\x0a\x06\x12\x04late") + reply(second_id, b""))
        read_request(conn)  # until the client closes

    path = public_dir / f"{uuid.uuid4().hex[:8]}.sock"
    thread = fake_agent(path, answer)
    d = driver()
    assert d("connect", path, 1000, 300)["code"] == 0
    assert d("list")["status"] == "DEADLINE_EXCEEDED"
    d("timeout", 60000)  # the replies now come at once; a busy machine may still delay them
    assert d("list") == {"code": 0, "status": "OK", "message": "", "models": []}
    d("close")
    thread.join(10)
    os.unlink(path)


def test_a_request_cut_short_by_the_timeout_spends_the_client(driver, public_dir, files):
    """A peer that never reads: a 4 MiB request cannot be sent within the call timeout. The
    frame is half out, so the stream is lost: DEADLINE_EXCEEDED, then UNAVAILABLE saying why."""
    path = public_dir / f"{uuid.uuid4().hex[:8]}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    d = driver()
    assert d("connect", path, 1000, 300)["code"] == 0
    conn, _ = listener.accept()  # and never read from it
    with listener, conn:
        big = np.zeros(1 << 20, np.float32)
        stuck = d("predict", "add", files.spec(big, "a"))
        assert stuck["status"] == "DEADLINE_EXCEEDED", stuck
        assert "cut short" in stuck["message"], stuck
        after = d("list")
        assert after["status"] == "UNAVAILABLE" and "cut short" in after["message"], after
    os.unlink(path)
