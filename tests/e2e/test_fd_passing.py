"""Descriptors passed with a request (SCM_RIGHTS) through a real agent: shared-memory tensors
by fd_index, models by `fd:N`, the rules of which frame they belong to, and no descriptor of
a client ever left open in the agent."""
from __future__ import annotations

import array
import fcntl
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from agents import AgentProcess, public_directory
from wire import wait_taken
from wire import closed_by_peer, raw_connection, read_replies

from edge_agent import agent_pb2 as pb
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import HEADER, Kind, encode_request
from edge_agent.api.rpcs import Method
from edge_agent.shm_client import MemfdSegment, PosixSegment, ShmTensor
from edge_agent.transport.socket_io import MAX_FDS
from edge_agent.tools import model_builder

NOBODY = 65534
F32 = np.float32


@pytest.fixture(scope="module")
def public_dir():
    """One public directory for the module's agent and the tests that use it."""
    with public_directory("edge-agent-fd-") as directory:
        yield directory


@pytest.fixture(scope="module")
def fd_agent(public_dir, model_files):
    workdir = public_dir / "agent"
    workdir.mkdir(mode=0o755)
    # Captures are delivered under the work directory, with the agent's other files.
    agent = AgentProcess(workdir, {"edge_agent_socket_mode": "0666",
                                   "sagemaker_edge_core_capture_data_disk_path":
                                   str(workdir / "captures")}).start()
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))
        client.load_model("multi", str(model_files["multi"]))
    yield agent
    agent.stop()


@pytest.fixture
def client(fd_agent):
    with fd_agent.client() as c:
        yield c
    assert fd_agent.alive(), fd_agent.log()


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 4)).astype(F32), rng.standard_normal((1, 4)).astype(F32)


def _open_fds(agent: AgentProcess) -> int:
    """Descriptors the agent holds other than sockets and its own files: connections come and
    go with their clients' timing, and the files under its work directory (its log; the
    capture journal, status and batches, which the capture delivery thread opens and closes
    on its own schedule after any CaptureData) are the agent's. What a client passes (memfds,
    files elsewhere) must never stay."""
    directory = f"/proc/{agent.process.pid}/fd"
    own = os.path.realpath(agent.workdir) + os.sep
    count = 0
    for fd in os.listdir(directory):
        try:
            target = os.readlink(f"{directory}/{fd}")
        except FileNotFoundError:
            continue  # closed while listed
        count += not (target.startswith("socket:") or target.startswith(own))
    return count


def _expect(code, match, call, *args, **kwargs) -> str:
    with pytest.raises(AgentError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value.message
    assert match in info.value.message, info.value.message
    return info.value.message


def _send_with_fds(sock: socket.socket, data: bytes, fds) -> None:
    sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    if sent < len(data):
        sock.sendall(data[sent:])


def _hang_up(sock: socket.socket) -> None:
    """Close a connection and wait until the agent has closed its end (and its descriptor)."""
    sock.shutdown(socket.SHUT_WR)
    assert closed_by_peer(sock)
    sock.close()


def _fd_handle_predict(request_id: int, fd_index: int) -> bytes:
    request = pb.PredictRequest(name="add")
    request.tensors.add().shared_memory_handle.fd_index = fd_index
    request.tensors.add().byte_data = np.zeros((1, 4), F32).tobytes()
    return encode_request(Method.PREDICT, request_id, request.SerializeToString())


# --- shared memory by descriptor --------------------------------------------------------------

def test_posix_segments_passed_as_descriptors_need_no_name(client):
    """Inputs and outputs in POSIX segments whose names are gone: only the descriptor the
    client passes can reach them."""
    a, b = _inputs()
    inputs, outputs = PosixSegment.create(4096, mode=0o600), PosixSegment.create(4096, mode=0o600)
    try:
        x, y, slot = inputs.write(a), inputs.write(b, offset=64), outputs.slot(F32, (1, 4))
        os.unlink(f"/dev/shm{inputs.name}")  # no name left to open
        os.unlink(f"/dev/shm{outputs.name}")
        result = client.predict("add", [x, y], outputs=[slot], pass_fd=True)
        [(name, written)] = result.items()
        assert written.posix_name == outputs.name and written.fd == slot.fd
        np.testing.assert_array_equal(outputs.read(written), a + b)
        _expect(StatusCode.INVALID_ARGUMENT, "does not exist", client.predict, "add", [x, y])
    finally:
        inputs._mapping.close()
        outputs._mapping.close()


def test_memfd_inputs_and_outputs(client):
    a, b = _inputs(1)
    with MemfdSegment.create(4096) as inputs, MemfdSegment.create(4096) as outputs:
        x, y = inputs.write(a), inputs.write(b, offset=16)  # one descriptor for both
        result = client.predict("add", [x, y])
        np.testing.assert_array_equal(result["sum"], a + b)
        slots = [outputs.slot(F32, (1, 4), offset=16 * i) for i in range(3)]
        result = client.predict("multi", [x], outputs=slots)
        assert list(result) == ["doubled", "squared", "negated"]
        for name, expected in zip(result, (a + a, a * a, -a)):
            assert result[name].fd == outputs.fd
            np.testing.assert_array_equal(outputs.read(result[name]), expected)


def test_capture_reads_a_passed_descriptor(client):
    a, b = _inputs(2)
    with MemfdSegment.create(4096) as segment:
        capture_id = client.capture_data("add", [segment.write(a)], [b])
    assert client.get_capture_data_status(capture_id) in ("IN_PROGRESS", "SUCCESS")


def test_a_read_only_descriptor_cannot_take_outputs(client):
    a, b = _inputs()
    segment = PosixSegment.create(4096, mode=0o600)
    read_only = os.open(f"/dev/shm{segment.name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = ShmTensor(0, 0, 16, F32, (1, 4), fd=read_only)  # no name: passed
        _expect(StatusCode.PERMISSION_DENIED, "output 'sum': the descriptor was opened "
                "read-only", client.predict, "add", [a, b], outputs=[target])
        # As an input it serves: the segment holds zeros, so the sum is b.
        np.testing.assert_array_equal(client.predict("add", [target, b])["sum"], b)
    finally:
        os.close(read_only)
        segment.free()


def test_a_sealed_memfd_cannot_take_outputs(client):
    a, b = _inputs()
    fd = os.memfd_create("sealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4096)
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        except OSError as e:  # an emulator that does not translate F_ADD_SEALS
            pytest.skip(f"memfd sealing is not available here: {e}")
        target = ShmTensor(0, 0, 16, F32, (1, 4), fd=fd)
        _expect(StatusCode.PERMISSION_DENIED, "may not be mapped", client.predict, "add",
                [a, b], outputs=[target])
    finally:
        os.close(fd)


def test_descriptors_that_are_no_segment_or_out_of_bounds(client):
    a, b = _inputs()
    read_end, write_end = os.pipe()
    try:
        pipe = ShmTensor(0, 0, 16, F32, (1, 4), fd=read_end)
        _expect(StatusCode.INVALID_ARGUMENT, "not a shared-memory segment", client.predict,
                "add", [pipe, b])
    finally:
        os.close(read_end)
        os.close(write_end)
    with MemfdSegment.create(16) as small:
        beyond = ShmTensor(0, 8, 16, F32, (1, 4), fd=small.fd)
        _expect(StatusCode.INVALID_ARGUMENT, "beyond the end of passed descriptor #0",
                client.predict, "add", [beyond, b])
    empty = os.memfd_create("empty", os.MFD_CLOEXEC)
    try:
        _expect(StatusCode.INVALID_ARGUMENT, "is empty", client.predict, "add",
                [ShmTensor(0, 0, 16, F32, (1, 4), fd=empty), b])
    finally:
        os.close(empty)


def test_an_index_beyond_the_passed_descriptors(client):
    request = pb.PredictRequest(name="add")
    request.tensors.add().shared_memory_handle.fd_index = 0
    request.tensors.add().byte_data = bytes(16)
    _expect(StatusCode.INVALID_ARGUMENT, "no file descriptor came with the request",
            client.call, Method.PREDICT, request, pb.PredictResponse)
    with MemfdSegment.create(64) as segment:
        request.tensors[0].shared_memory_handle.fd_index = 1
        _expect(StatusCode.INVALID_ARGUMENT, "only 1 came with the request", client.call,
                Method.PREDICT, request, pb.PredictResponse, fds=[segment.fd])


def test_cli_predict_through_passed_segments(fd_agent, tmp_path):
    a, b = _inputs(3)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    for options in (["--shm", "memfd"], ["--shm", "posix", "--pass-fd"]):
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent", "client", "--socket", fd_agent.socket_path,
             "predict", "add", f"a={tmp_path / 'a.npy'}", f"b={tmp_path / 'b.npy'}",
             "--out", str(tmp_path / "out"), *options],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "sum.npy"), a + b)


def test_a_client_in_c_passes_a_memfd(fd_agent, tmp_path):
    """tests/fd_client/fd_client.c sends a Predict with a memfd as the docs show it in C."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) here")
    program = tmp_path / "fd_client"
    source = Path(__file__).resolve().parent.parent / "fd_client" / "fd_client.c"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(program), str(source)],
                   check=True, timeout=120)
    request = pb.PredictRequest(name="add")
    request.tensors.add().shared_memory_handle.CopyFrom(pb.SharedMemoryHandle(fd_index=0))
    request.tensors.add().shared_memory_handle.CopyFrom(pb.SharedMemoryHandle(fd_index=0,
                                                                              offset=16))
    request.output_handles.add(fd_index=0, offset=64)
    frame = tmp_path / "frame.bin"
    frame.write_bytes(encode_request(Method.PREDICT, 1, request.SerializeToString()))
    result = subprocess.run([str(program), fd_agent.socket_path, str(frame)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["status 0", "output 11 22 33 44"], result.stdout


# --- models by descriptor ----------------------------------------------------------------------

def test_a_model_loaded_from_a_passed_file(client, model_files):
    with open(model_files["fc"], "rb") as f:
        f.seek(100)  # the agent reads from the start, whatever the offset
        info = client.load_model_from_file("fc-by-fd", f)
        assert f.tell() == 100  # and leaves the client's offset alone
    try:
        assert info.url == "fd:0"
        inputs = model_builder.fully_connected_model().sample_inputs(seed=1)
        assert len(client.predict("fc-by-fd", inputs)) == 1
    finally:
        client.unload_model("fc-by-fd")


def test_a_passed_file_that_is_no_model(client, tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    with open(junk, "rb") as f:
        _expect(StatusCode.FAILED_PRECONDITION, "is not a TensorFlow Lite model",
                client.load_model_from_file, "junk", f)
    read_end, write_end = os.pipe()
    try:
        _expect(StatusCode.FAILED_PRECONDITION, "not a regular file",
                client.load_model_from_file, "pipe", read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    with open(junk, "wb") as f:  # write-only: the agent may not read through it
        _expect(StatusCode.PERMISSION_DENIED, "write-only", client.load_model_from_file,
                "wronly", f)


def test_unsigned_models_by_descriptor_follow_the_same_rule(start_agent, model_files):
    agent = start_agent(edge_agent_allow_unsigned_models=False)
    with agent.client() as c, open(model_files["add"], "rb") as f:
        _expect(StatusCode.FAILED_PRECONDITION, "unsigned .tflite models are not allowed",
                c.load_model_from_file, "add", f)


def test_a_signed_package_passed_as_a_descriptor(start_agent, tmp_path):
    from package_cases import Signer

    signer = Signer(tmp_path / "keys")
    agent = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                        edge_agent_allow_unsigned_models=False)
    package = signer.package(tmp_path / "demo.tar.gz")
    demo = model_builder.demo_model()
    inputs = demo.sample_inputs(seed=3)
    with agent.client() as c, open(package, "rb") as f:
        c.load_model_from_file("demo", f)
        outputs = c.predict("demo", [inputs["features"]])
        np.testing.assert_allclose(outputs["scores"], demo.reference(inputs)["scores"], rtol=1e-5)
    tampered = tmp_path / "tampered.tar.gz"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with agent.client() as c, open(tampered, "rb") as f:
        with pytest.raises(AgentError) as info:
            c.load_model_from_file("tampered", f)
        assert info.value.code == StatusCode.FAILED_PRECONDITION


def _as_nobody(work) -> str:
    """Run work() in a forked child that dropped to uid/gid nobody: → its result or error.

    A forked child, because nobody cannot execute this machine's Python from /root."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = "CHILD FAILED"
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            status = work()
        except AgentError as e:
            status = f"{e.code.name}: {e.message}"
        except BaseException as e:  # reported to the parent, which fails the test
            status = f"CHILD FAILED: {e!r}"
        finally:
            os.write(write_end, status.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        status = f.read().decode()
    os.waitpid(pid, 0)
    return status


def test_another_user_loads_the_model_it_opened_itself(fd_agent, public_dir, model_files):
    """nobody passes a descriptor of its own private file (0600 in a 0700 directory); it cannot
    open root's private model, so it has nothing of root's to pass."""
    own = public_dir / "nobody-models"
    own.mkdir(mode=0o700)
    shutil.copy(model_files["add"], own / "mine.tflite")
    os.chown(own, NOBODY, NOBODY)
    os.chown(own / "mine.tflite", NOBODY, NOBODY)
    (own / "mine.tflite").chmod(0o600)
    secret = public_dir / "root-only"
    secret.mkdir(mode=0o700)
    shutil.copy(model_files["fc"], secret / "secret.tflite")

    def load_own() -> str:
        with AgentClient(fd_agent.socket_path) as c, open(own / "mine.tflite", "rb") as f:
            c.load_model_from_file("nobodys", f)
            a, b = _inputs()
            np.testing.assert_array_equal(list(c.predict("nobodys", [a, b]).values())[0], a + b)
            c.unload_model("nobodys")
        try:
            open(secret / "secret.tflite", "rb")
        except PermissionError:
            return "OK"
        return "opened root's file"
    assert _as_nobody(load_own) == "OK"


# --- which frame descriptors belong to ---------------------------------------------------------

def test_too_many_descriptors_are_all_closed_and_refused(fd_agent):
    before = _open_fds(fd_agent)
    sock = raw_connection(fd_agent)
    fds = [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(MAX_FDS + 1)]
    try:
        _send_with_fds(sock, encode_request(Method.LIST_MODELS, 5, b""), fds)
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.INVALID_ARGUMENT and reply.request_id == 5
        assert f"more than {MAX_FDS} file descriptors".encode() in reply.body
        sock.sendall(encode_request(Method.LIST_MODELS, 6, b""))  # the connection goes on
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.OK
        _send_with_fds(sock, encode_request(Method.LIST_MODELS, 7, b""), fds[:MAX_FDS])
        [reply] = read_replies(sock)  # MAX_FDS is allowed (and unused by ListModels)
        assert reply.status == StatusCode.OK
    finally:
        for fd in fds:
            os.close(fd)
        _hang_up(sock)
    assert _open_fds(fd_agent) == before


def test_descriptors_with_a_malformed_body_are_closed(fd_agent):
    before = _open_fds(fd_agent)
    sock = raw_connection(fd_agent)
    with MemfdSegment.create(64) as segment:
        _send_with_fds(sock, encode_request(Method.PREDICT, 8, b"\xff\xff\xff"), [segment.fd])
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.INVALID_ARGUMENT and b"malformed" in reply.body
        _send_with_fds(sock, HEADER.pack(b"EA", 1, Kind.REQUEST, Method.PREDICT, 1, 9, 0),
                       [segment.fd])
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.INVALID_ARGUMENT and b"status 0, got 1" in reply.body
        _send_with_fds(sock, encode_request(99, 10, b""), [segment.fd])
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.UNIMPLEMENTED
    _hang_up(sock)
    assert _open_fds(fd_agent) == before


def test_descriptors_go_with_the_frame_they_begin(fd_agent):
    """Three frames in one receive, the descriptor sent with the last: it belongs to it."""
    with MemfdSegment.create(4096) as segment:
        a = np.arange(4, dtype=F32).reshape(1, 4)
        segment.write(a)
        sock = raw_connection(fd_agent)
        first = encode_request(Method.LIST_MODELS, 1, b"") + encode_request(Method.LIST_MODELS, 2, b"")
        sock.sendall(first)
        _send_with_fds(sock, _fd_handle_predict(3, 0), [segment.fd])
        replies = {r.request_id: r for r in read_replies(sock, 3)}
        assert [replies[i].status for i in (1, 2, 3)] == [StatusCode.OK] * 3
        out = pb.PredictResponse.FromString(replies[3].body)
        np.testing.assert_array_equal(np.frombuffer(out.tensors[0].byte_data, F32), a.ravel())
        # A frame whose first bytes came with the descriptor and the rest later: still its own.
        frame = _fd_handle_predict(4, 0)
        _send_with_fds(sock, frame[:10], [segment.fd])
        sock.sendall(frame[10:])
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.OK and reply.request_id == 4
        sock.close()


def test_descriptors_in_the_middle_of_a_frame_close_the_connection(fd_agent):
    before = _open_fds(fd_agent)
    with MemfdSegment.create(4096) as segment:
        sock = raw_connection(fd_agent)
        frame = _fd_handle_predict(5, 0)
        sock.sendall(frame[:20])
        wait_taken(sock)  # else the kernel may deliver both parts in one receive
        _send_with_fds(sock, frame[20:], [segment.fd])
        [reply] = read_replies(sock)  # the frame is not run: its reply is the refusal
        assert reply.status == StatusCode.INVALID_ARGUMENT and reply.request_id == 5
        assert b"arrived in the middle of a frame" in reply.body
        assert closed_by_peer(sock)
        sock.close()
    assert _open_fds(fd_agent) == before


def test_descriptors_of_a_frame_refused_by_the_pending_budget_are_closed(start_agent):
    """The budget holds one large body, 7 MiB of it arrived: a second client's frame is
    refused with its first bytes, and the descriptor sent with its header is closed with it."""
    agent = start_agent(edge_agent_max_frame_bytes=8 * 1024 * 1024,
                        edge_agent_max_pending_bytes=8 * 1024 * 1024 + 16,
                        edge_agent_connection_reserve_bytes=0,  # the shared budget alone
                        edge_agent_frame_timeout_seconds=300.0)
    before = _open_fds(agent)
    header = HEADER.pack(b"EA", 1, Kind.REQUEST, Method.LIST_MODELS, 0, 1, 8 * 1024 * 1024)
    holder, refused = raw_connection(agent), raw_connection(agent)
    holder.sendall(header + bytes(7 * 1024 * 1024))
    # Once the socket is read dry the holder holds exactly 8 MiB (protocol/receiving.py): past
    # 4 MiB pending, the space up to the 8 MiB step is set aside before the receive that reads
    # the last bytes, and that receive (MSG_WAITALL) keeps waiting for the rest. So the second
    # frame's first receive (its header and more: one sendmsg) passes the budget, whenever it comes.
    wait_taken(holder)
    with MemfdSegment.create(64) as segment:
        _send_with_fds(refused, header + bytes(64 * 1024), [segment.fd])
    readable, _, _ = select.select([holder, refused], [], [], 120)
    assert readable == [refused]
    assert [f.status for f in read_replies(refused)] == [StatusCode.RESOURCE_EXHAUSTED]
    assert closed_by_peer(refused)
    holder.close()
    refused.close()
    holder = raw_connection(agent)
    _hang_up(holder)  # the agent has taken and ended a later connection ...
    deadline = time.monotonic() + 30
    while _open_fds(agent) != before:  # ... and the descriptor goes with its thread
        assert time.monotonic() < deadline, "the passed descriptor stayed open"
        time.sleep(0.05)


def test_no_descriptor_is_left_open(fd_agent, model_files):
    """Many calls with descriptors, good and bad: the agent's open files come back to where
    they were, each closed when its call ended."""
    with fd_agent.client() as c:
        c.list_models()
        before = _open_fds(fd_agent)
        a, b = _inputs()
        with MemfdSegment.create(4096) as segment:
            x = segment.write(a)
            for _ in range(50):
                c.predict("add", [x, b])
                c.predict("add", [a, b], outputs=[segment.slot(F32, (1, 4), offset=64)])
                with pytest.raises(AgentError):
                    c.predict("nope", [x, b])  # refused before any use of the descriptor
                with pytest.raises(AgentError):
                    c.predict("add", [x])  # refused by the model after attaching
            with open(model_files["add"], "rb") as f:
                for _ in range(10):
                    c.load_model_from_file("leak-check", f)
                    c.unload_model("leak-check")
        assert _open_fds(fd_agent) == before


# --- what a descriptor does not prove --------------------------------------------------------

def test_an_o_path_descriptor_proves_no_access(client, model_files, tmp_path):
    """O_PATH is had without any right to the content: never taken as proof, for a model file
    or a directory."""
    for target in (model_files["add"], tmp_path):
        fd = os.open(target, os.O_PATH)
        try:
            _expect(StatusCode.PERMISSION_DENIED, "O_PATH", client.load_model_from_file,
                    "by-path-only", fd)
        finally:
            os.close(fd)


def test_a_directory_cannot_be_passed_as_a_package(client, tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _expect(StatusCode.FAILED_PRECONDITION, "cannot be passed as a descriptor",
                client.load_model_from_file, "a-directory", fd)
    finally:
        os.close(fd)


def test_a_file_that_is_not_shared_memory_is_no_segment(client, tmp_path):
    """A file of another file system (a network or FUSE mount could make a page fault wait
    while the model's lock is held) is refused; memfds and /dev/shm objects are taken."""
    from edge_agent.platform.passed_fds import is_shared_memory

    for place in (tmp_path, Path(__file__).parent, Path.home()):
        fd, plain = tempfile.mkstemp(dir=place)
        os.unlink(plain)
        if not is_shared_memory(fd):  # a tmpfs is memory too: such a place proves nothing
            break
        os.close(fd)
    else:
        pytest.skip("every writable place here is memory (tmpfs)")
    os.write(fd, np.ones((1, 4), np.float32).tobytes())
    try:
        request = pb.PredictRequest(name="add")
        tensor = request.tensors.add()
        tensor.shared_memory_handle.fd_index = 0
        tensor.shared_memory_handle.size = 16
        request.tensors.add().byte_data = np.ones((1, 4), np.float32).tobytes()
        _expect(StatusCode.INVALID_ARGUMENT, "is not a shared-memory segment", client.call,
                Method.PREDICT, request, fds=(fd,))
    finally:
        os.close(fd)
