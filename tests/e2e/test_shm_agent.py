"""Shared-memory tensors through a real agent process, with segments the tests make."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from agents import AgentProcess, public_directory
from fifo_helpers import fifo, returns

from edge_agent.shm import _shm
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError, StatusCode
from edge_agent.shm_client import PosixSegment, ShmTensor, SysVSegment
from edge_agent.tools import model_builder

NOBODY = 65534
GROUP = 4242  # a group nobody is not in
F32 = np.float32


@pytest.fixture(scope="module")
def public_dir():
    """One public directory for the module's agent and the tests that use it."""
    with public_directory("edge-agent-shm-") as directory:
        yield directory


@pytest.fixture(scope="module")
def shm_agent(public_dir, model_files):
    """One agent for the module, its socket open to every user (the nobody tests need it)."""
    workdir = public_dir / "agent"
    workdir.mkdir(mode=0o755)
    agent = AgentProcess(workdir, {"edge_agent_socket_mode": "0666"}).start()
    with agent.client() as client:
        for name in ("add", "multi", "dynamic"):
            client.load_model(name, str(model_files[name]))
        big = model_builder.add_model((1, 16384))  # 64 KiB per input
        client.load_model("big", str(big.write(public_dir / "big.tflite")))
    yield agent
    agent.stop()


@pytest.fixture
def client(shm_agent):
    with shm_agent.client() as c:
        yield c
    assert shm_agent.alive(), shm_agent.log()


@pytest.fixture
def segments():
    """make(kind, nbytes, mode) → a new SysV or POSIX segment, freed after the test."""
    made = []

    def make(kind="sysv", nbytes=4096, mode=0o600):
        made.append(SysVSegment.create(nbytes, mode) if kind == "sysv"
                    else PosixSegment.create(nbytes, mode=mode))
        return made[-1]
    yield make
    for segment in made:
        segment.free()


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 4)).astype(F32), rng.standard_normal((1, 4)).astype(F32)


def _expect_error(code, match, call, *args, **kwargs):
    with pytest.raises(AgentError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value.message
    assert match in info.value.message, info.value.message
    return info.value.message


def _attachments(pid: int) -> int:
    """Segments the process has mapped: SysV attachments and /dev/shm objects."""
    with open(f"/proc/{pid}/maps") as f:
        return len({line.split(None, 5)[-1] for line in f
                    if "SYSV" in line or "/dev/shm/" in line})


# --- inputs -----------------------------------------------------------------------------------

def test_the_agent_runs_the_compiled_module(shm_agent):
    with open(f"/proc/{shm_agent.process.pid}/maps") as f:
        assert any(os.path.basename(_shm.__file__) in line for line in f)


@pytest.mark.parametrize("kind_a, kind_b", [
    ("sysv", "bytes"), ("bytes", "posix"), ("posix", "sysv"), ("sysv", "sysv")])
def test_inputs_mix_shared_memory_and_bytes(client, segments, kind_a, kind_b):
    a, b = _inputs()
    values = {}
    for name, kind, array in (("a", kind_a, a), ("b", kind_b, b)):
        # Offset 8: tensors need not start at the segment's beginning.
        values[name] = array if kind == "bytes" else segments(kind).write(array, offset=8)
    outputs = client.predict("add", values)
    np.testing.assert_array_equal(outputs["sum"], a + b)


def test_positional_inputs_and_size_zero_or_exact(client, segments):
    a, b = _inputs(1)
    segment = segments()
    ta, tb = segment.write(a), segment.write(b, offset=64)
    # An unset size (0) means the tensor's byte length, as old clients send it.
    unsized = ShmTensor(ta.segment_id, ta.offset, 0, F32, (1, 4))
    np.testing.assert_array_equal(client.predict("add", [unsized, tb])["sum"], a + b)
    wrong = ShmTensor(tb.segment_id, tb.offset, 12, F32, (1, 4))
    _expect_error(StatusCode.INVALID_ARGUMENT, "says 12 bytes", client.predict, "add", [ta, wrong])


@pytest.mark.parametrize("offset, size, match", [
    (4096 - 8, 16, "beyond the end"),
    (4097, 0, "beyond the end"),
    (2**64 - 1, 16, "beyond the end"),
    (2**63, 16, "beyond the end"),
    (2**64 - 16, 16, "beyond the end"),
])
def test_out_of_bounds_handles_are_invalid(client, segments, offset, size, match):
    a, b = _inputs()
    segment = segments("sysv", 4096)
    bad = ShmTensor(segment.shmid, offset, size, F32, (1, 4))
    message = _expect_error(StatusCode.INVALID_ARGUMENT, match, client.predict, "add", {"a": bad, "b": b})
    assert f"SysV segment {segment.shmid}" in message and "4096 bytes" in message
    posix = segments("posix", 4096)
    bad = ShmTensor.posix(posix.name, offset, size, F32, (1, 4))
    _expect_error(StatusCode.INVALID_ARGUMENT, match, client.predict, "add", {"a": bad, "b": b})
    np.testing.assert_array_equal(client.predict("add", {"a": a, "b": b})["sum"], a + b)


@pytest.mark.parametrize("handle, match", [
    (ShmTensor(2**31 - 2, 0, 0, F32, (1, 4)), "does not exist"),
    (ShmTensor(2**31, 0, 0, F32, (1, 4)), "no SysV segment"),
    (ShmTensor(2**64 - 1, 0, 0, F32, (1, 4)), "no SysV segment"),
    (ShmTensor.posix("/edge-agent-no-such-segment", 0, 0, F32, (1, 4)), "does not exist"),
    (ShmTensor.posix("a/b", 0, 0, F32, (1, 4)), "not a POSIX shared-memory name"),
    (ShmTensor.posix("/..", 0, 0, F32, (1, 4)), "not a POSIX shared-memory name"),
    (ShmTensor.posix("/", 0, 0, F32, (1, 4)), "not a POSIX shared-memory name"),
    (ShmTensor.posix("x" * 300, 0, 0, F32, (1, 4)), "not a POSIX shared-memory name"),
])
def test_handles_naming_no_segment_are_invalid(client, handle, match):
    _, b = _inputs()
    _expect_error(StatusCode.INVALID_ARGUMENT, match, client.predict, "add", {"a": handle, "b": b})


@pytest.mark.parametrize("kind", ["sysv", "posix"])
def test_a_removed_segment_is_invalid_not_stale(client, kind):
    a, b = _inputs()
    segment = SysVSegment.create(64) if kind == "sysv" else PosixSegment.create(64)
    tensor = segment.write(a)
    np.testing.assert_array_equal(client.predict("add", [tensor, b])["sum"], a + b)  # cached now
    segment.free()
    _expect_error(StatusCode.INVALID_ARGUMENT, "removed" if kind == "sysv" else "does not exist",
                  client.predict, "add", [tensor, b])


def test_a_fifo_named_as_a_segment_is_refused_and_blocks_nobody(client, shm_agent):
    # Opening a FIFO waits for a writer: named as a segment, it must be refused, not opened,
    # and must hold up neither this client nor others.
    a, b = _inputs()
    name = f"edge-agent-test-fifo-{os.getpid()}"
    with fifo(f"/dev/shm/{name}"):
        handle = ShmTensor.posix(f"/{name}", 0, 0, F32, (1, 4))
        message = _expect_error(StatusCode.INVALID_ARGUMENT, "is not a shared-memory segment",
                                returns, lambda: client.predict("add", [handle, b]))
        assert name in message
        with SysVSegment.create(64) as segment, shm_agent.client() as other:
            result = returns(lambda: other.predict("add", [segment.write(a), b]))
            np.testing.assert_array_equal(result["sum"], a + b)


def test_an_empty_posix_segment_is_invalid(client, segments):
    a, b = _inputs()
    segment = segments("posix", 64)
    os.truncate(f"/dev/shm{segment.name}", 0)
    handle = ShmTensor.posix(segment.name, 0, 0, F32, (1, 4))
    _expect_error(StatusCode.INVALID_ARGUMENT, "is empty (0 bytes)",
                  client.predict, "add", [handle, b])  # was INTERNAL: "the mapping is closed"
    slot = segment.slot(F32, (1, 4))
    _expect_error(StatusCode.INVALID_ARGUMENT, "is empty (0 bytes)",
                  client.predict, "add", [a, b], outputs=[slot])


def test_a_shrunk_posix_segment_is_checked_at_its_new_size(client, segments):
    a, b = _inputs()
    segment = segments("posix", 4096)
    tensor = segment.write(a, offset=2048)
    np.testing.assert_array_equal(client.predict("add", [tensor, b])["sum"], a + b)  # cached
    os.truncate(f"/dev/shm{segment.name}", 1024)
    _expect_error(StatusCode.INVALID_ARGUMENT, "(1024 bytes)", client.predict, "add", [tensor, b])


def test_a_reused_shmid_serves_the_new_segment(client, shm_agent):
    next_id = "/proc/sys/kernel/shm_next_id"
    if not os.access(next_id, os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/shm_next_id (root, own IPC namespace)")
    a, b = _inputs()
    first = SysVSegment.create(64)
    tensor = first.write(a)
    client.predict("add", [tensor, b])
    first.free()
    _expect_error(StatusCode.INVALID_ARGUMENT, "removed", client.predict, "add", [tensor, b])
    with open(next_id, "w") as f:
        f.write(str(tensor.segment_id))  # the kernel gives the next segment this very id
    second = SysVSegment.create(64)
    try:
        assert second.shmid == tensor.segment_id
        np.testing.assert_array_equal(client.predict("add", [second.write(b), b])["sum"], b + b)
    finally:
        second.free()


# --- permissions ------------------------------------------------------------------------------

def _predict_as_nobody(socket_path: str, model: str, inputs, outputs=None, groups=()) -> str:
    """Run one predict in a child process that dropped to uid/gid nobody (with supplementary
    `groups`): → the status name.

    A forked child, because nobody cannot execute this machine's Python from /root."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = "CHILD FAILED"
        try:
            os.setgroups(list(groups))
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with AgentClient(socket_path) as client:
                client.predict(model, inputs, outputs=outputs)
            status = "OK"
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


@pytest.mark.parametrize("kind", ["sysv", "posix"])
def test_another_users_private_segment_is_denied(shm_agent, segments, kind):
    a, b = _inputs()
    private = segments(kind, mode=0o600).write(a)  # root's, 0600
    status = _predict_as_nobody(shm_agent.socket_path, "add", [private, b])
    assert status.startswith("PERMISSION_DENIED") and "uid 65534" in status, status
    readable = segments(kind, mode=0o604).write(a)  # others may read: so may nobody
    assert _predict_as_nobody(shm_agent.socket_path, "add", [readable, b]) == "OK"


def test_a_supplementary_group_of_the_caller_grants_group_access(shm_agent, segments):
    # The groups are those the client had when it connected (SO_PEERGROUPS at accept).
    a, b = _inputs()
    segment = segments("posix", mode=0o640)
    os.chown(f"/dev/shm{segment.name}", -1, GROUP)
    tensor = segment.write(a)
    assert _predict_as_nobody(shm_agent.socket_path, "add", [tensor, b], groups=[GROUP]) == "OK"
    status = _predict_as_nobody(shm_agent.socket_path, "add", [tensor, b])
    assert status.startswith("PERMISSION_DENIED"), status


def test_another_users_segment_cannot_take_outputs(shm_agent, segments):
    a, b = _inputs()
    target = segments("sysv", mode=0o604)  # nobody may read it, not write it
    status = _predict_as_nobody(shm_agent.socket_path, "add", [a, b],
                                outputs=[target.slot(F32, (1, 4))])
    assert status.startswith("PERMISSION_DENIED") and "may not write" in status, status
    writable = segments("sysv", mode=0o606)
    slot = writable.slot(F32, (1, 4))
    assert _predict_as_nobody(shm_agent.socket_path, "add", [a, b], outputs=[slot]) == "OK"
    np.testing.assert_array_equal(writable.read(slot), a + b)


def test_strict_mode_refuses_world_writable_segments(start_agent, model_files, segments):
    a, b = _inputs()
    strict = start_agent(edge_agent_shm_require_readonly=True)
    with strict.client() as client:
        client.load_model("add", str(model_files["add"]))
        open_to_all = segments("sysv", mode=0o606).write(a)
        _expect_error(StatusCode.PERMISSION_DENIED, "edge_agent_shm_require_readonly",
                      client.predict, "add", [open_to_all, b])
        posix = segments("posix", mode=0o622).write(a)
        _expect_error(StatusCode.PERMISSION_DENIED, "may be written by anyone",
                      client.predict, "add", [posix, b])
        private = segments("sysv", mode=0o640).write(a)
        np.testing.assert_array_equal(client.predict("add", [private, b])["sum"], a + b)


def test_world_writable_segments_pass_without_strict_mode(client, segments):
    a, b = _inputs()
    tensor = segments("sysv", mode=0o666).write(a)
    np.testing.assert_array_equal(client.predict("add", [tensor, b])["sum"], a + b)


def test_socket_gets_the_configured_mode_and_group(start_agent):
    agent = start_agent(edge_agent_socket_mode="0640", edge_agent_socket_group="nogroup")
    st = os.stat(agent.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, NOBODY)


# --- outputs into shared memory ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sysv", "posix"])
def test_outputs_written_into_the_callers_segments(client, segments, kind):
    x = np.arange(4, dtype=F32).reshape(1, 4) - 1.5
    segment = segments(kind, 4096)
    slots = [segment.slot(F32, (1, 4), offset) for offset in (0, 100, 1000)]
    replies = client.predict("multi", {"x": x}, outputs=slots)
    assert list(replies) == ["doubled", "squared", "negated"]
    expected = model_builder.multi_output_model().reference({"x": x})
    for (name, where), slot in zip(replies.items(), slots):
        assert (where.offset, where.size, where.shape) == (slot.offset, 16, (1, 4))
        assert (where.segment_id, where.posix_name) == (slot.segment_id, slot.posix_name)
        np.testing.assert_array_equal(segment.read(where), expected[name])


def test_output_reply_carries_no_bytes(client, segments):
    from edge_agent import agent_pb2 as pb
    from edge_agent.api.rpcs import Method

    segment = segments()
    request = pb.PredictRequest(name="add")
    for array in _inputs():
        request.tensors.add(byte_data=array.tobytes())
    request.output_handles.add(segment_id=segment.shmid)  # size 0: room to the segment's end
    reply = client.call(Method.PREDICT, request, pb.PredictResponse)
    (tensor,) = reply.tensors
    assert tensor.WhichOneof("data") == "shared_memory_handle"
    assert tensor.shared_memory_handle.size == 16 and list(tensor.tensor_metadata.shape) == [1, 4]


def test_output_handle_errors(client, segments):
    a, b = _inputs()
    segment = segments("sysv", 4096)
    _expect_error(StatusCode.INVALID_ARGUMENT, "has 3 output(s)", client.predict, "multi",
                  [a], outputs=[segment.slot(F32, (1, 4))])
    small = ShmTensor(segment.shmid, 0, 8, F32, (1, 4))
    _expect_error(StatusCode.INVALID_ARGUMENT, "room for 8 bytes", client.predict, "add",
                  [a, b], outputs=[small])
    beyond = ShmTensor(segment.shmid, 4090, 0, F32, (1, 4))
    _expect_error(StatusCode.INVALID_ARGUMENT, "room for 6 bytes", client.predict, "add",
                  [a, b], outputs=[beyond])
    outside = ShmTensor(segment.shmid, 5000, 16, F32, (1, 4))
    _expect_error(StatusCode.INVALID_ARGUMENT, "beyond the end", client.predict, "add",
                  [a, b], outputs=[outside])
    # The refused write left the model usable.
    np.testing.assert_array_equal(client.predict("add", [a, b])["sum"], a + b)


def test_dynamic_output_fills_the_room_it_needs(client, segments):
    x = np.arange(12, dtype=F32).reshape(3, 4)
    segment = segments()
    (where,) = client.predict("dynamic", [segment.write(x)],
                              outputs=[ShmTensor(segment.shmid, 2048, 0, F32, ())]).values()
    assert (where.shape, where.size) == ((3, 4), 48)
    np.testing.assert_array_equal(segment.read(where), x * np.arange(1, 5, dtype=F32))


# --- staying up -------------------------------------------------------------------------------

@pytest.mark.native_only
def test_many_attach_predict_remove_cycles_stay_flat(client, shm_agent):
    """Segments come and go; the agent's attachments and RSS must not pile up."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1, 16384)).astype(F32)

    def cycle(kind):
        segment = SysVSegment.create(a.nbytes) if kind == "sysv" else PosixSegment.create(a.nbytes)
        try:
            out = client.predict("big", [segment.write(a), segment.write(a)])["sum"]
        finally:
            segment.free()
        assert out[0, 0] == a[0, 0] * 2

    pid = shm_agent.process.pid
    for i in range(60):
        cycle("sysv" if i % 2 else "posix")
    rss_before, attached_before = shm_agent.rss_kb(), _attachments(pid)
    most = 0
    for i in range(400):
        cycle("sysv" if i % 2 else "posix")
        most = max(most, _attachments(pid))
    # Removed segments are detached on the next miss: at most this call's and the last one.
    assert most <= 3 and _attachments(pid) <= attached_before + 1
    assert shm_agent.rss_kb() - rss_before < 2048, "RSS grew by more than 2 MiB"


def test_cli_predict_through_shared_memory(shm_agent, tmp_path):
    a, b = _inputs()
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    before = set(os.listdir("/dev/shm"))
    for kind in ("", "posix"):
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent", "client", "--socket", shm_agent.socket_path,
             "predict", "add", f"a={tmp_path / 'a.npy'}", f"b={tmp_path / 'b.npy'}",
             "--out", str(tmp_path / "out"), "--shm", *([kind] if kind else [])],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "sum.npy"), a + b)
    left = {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("edge-agent-")}
    assert not left, f"the CLI left segments behind: {left}"
