"""The compiled shared-memory module and the agent-side cache, in process, on real segments.
(Whose groups the permission check uses, with child processes and a socket:
tests/integration/test_shm_peers.py.)"""
from __future__ import annotations

import ctypes
import errno
import importlib.machinery
import os
import sys
import threading

import numpy as np
import pytest

from fifo_helpers import fifo, returns

from edge_agent.shm import _shm
from edge_agent import agent_pb2 as pb
from edge_agent.shm import segments as shm
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.caller import Caller
from edge_agent.shm_client import PosixSegment, SysVSegment

ROOT = Caller(os.getpid(), 0, 0)


def test_the_compiled_module_is_in_use():
    # A compiled extension, not a Python stand-in, is what edge_agent.shm.segments calls.
    assert shm._shm is _shm
    assert _shm.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert type(_shm.sysv_attach).__name__ in ("cython_function_or_method", "builtin_function_or_method")


@pytest.fixture
def sysv():
    segments = []

    def make(nbytes=4096, mode=0o600):
        segments.append(SysVSegment.create(nbytes, mode))
        return segments[-1]
    yield make
    for s in segments:
        s.free()


@pytest.fixture
def posix():
    segments = []

    def make(nbytes=4096, mode=0o600):
        segments.append(PosixSegment.create(nbytes, mode=mode))
        return segments[-1]
    yield make
    for s in segments:
        s.free()


# --- the Cython module ----------------------------------------------------------------------

def test_sysv_attach_is_read_only_and_sized_by_the_kernel(sysv):
    segment = sysv(5000)
    segment.write(np.arange(4, dtype=np.float32))
    mapping, st = _shm.sysv_attach(segment.shmid)
    assert (mapping.length, st.size, st.uid, st.mode) == (5000, 5000, os.getuid(), 0o600)
    view = mapping.view(0, 16)
    assert np.frombuffer(view, np.float32).tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError):
        view[0] = 1  # read-only buffer
    with pytest.raises((BufferError, TypeError), match="writable|read-only"):
        ctypes.c_char.from_buffer(mapping)  # asks for a writable buffer
    del view
    mapping.close()


@pytest.mark.parametrize("offset, size", [
    (4097, 0), (4096, 1), (0, 4097), (2**64 - 1, 2), (2**63, 2**63), (1, 2**64 - 1)])
def test_view_bounds_without_overflow(sysv, offset, size):
    mapping, _ = _shm.sysv_attach(sysv(4096).shmid)
    with pytest.raises(ValueError, match="beyond"):
        mapping.view(offset, size)
    assert len(mapping.view(4096, 0)) == 0 and len(mapping.view(0, 4096)) == 4096
    mapping.close()


def test_close_waits_for_the_last_view(sysv):
    segment = sysv()
    segment.write(np.full(4, 7, np.uint8))
    mapping, _ = _shm.sysv_attach(segment.shmid)
    array = np.frombuffer(mapping.view(0, 4), np.uint8)
    mapping.close()
    assert mapping.closed and mapping.mapped  # still mapped: a view is alive
    assert array.tolist() == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="closed"):
        mapping.view(0, 1)
    del array
    assert not mapping.mapped
    assert _shm.sysv_stat(segment.shmid).attached == 1  # only the creator's own attachment


def test_sysv_stat_reports_removal_and_absence(sysv):
    segment = sysv()
    _shm.sysv_remove(segment.shmid)
    assert _shm.sysv_stat(segment.shmid).removing  # the creator is still attached
    segment.free()
    with pytest.raises(OSError) as info:
        _shm.sysv_stat(segment.shmid)
    assert info.value.errno in (errno.EINVAL, errno.EIDRM)


def test_posix_mapping_survives_truncation_under_it(posix):
    # The owner shrinks the object while the agent has it mapped: touching the lost pages
    # would be SIGBUS; the guard turns it into zeros and a flag instead of a dead agent.
    segment = posix(8192)
    segment.write(np.full(8192, 1, np.uint8))
    mapping, st = _shm.posix_attach(segment.name)
    assert mapping.length == st.size == 8192 and not mapping.faulted
    os.truncate(f"/dev/shm/{segment.name.lstrip('/')}", 0)
    data = bytes(mapping.view(4096, 4096))
    assert data == bytes(4096) and mapping.faulted
    mapping.close()
    assert mapping.faulted  # remembered after unmapping, for the call that used it


def test_posix_attach_describes_the_object(posix):
    segment = posix(100, mode=0o640)
    mapping, st = _shm.posix_attach(segment.name)
    assert (st.size, st.mode & 0o777, st.uid) == (100, 0o640, os.getuid())
    assert mapping.fstat().identity == st.identity
    mapping.close()
    with pytest.raises(FileNotFoundError):
        _shm.posix_attach("/edge-agent-no-such-segment")


# --- permissions ----------------------------------------------------------------------------

def _stat(mode, uid=1000, gid=1000, cuid=None, cgid=None):
    return _shm.SegmentStat(64, uid, gid, uid if cuid is None else cuid,
                            gid if cgid is None else cgid, mode, (1, 2, 3), False, 0)


@pytest.mark.parametrize("caller_uid, caller_gid, st, want, allowed", [
    (1000, 5, _stat(0o600), shm.READ, True),            # owner
    (1000, 5, _stat(0o060), shm.READ, False),           # owner bits rule for the owner
    (7, 5, _stat(0o600, cuid=7), shm.READ, True),       # creator counts as owner
    (7, 1000, _stat(0o640), shm.READ, True),            # group
    (7, 1000, _stat(0o640), shm.WRITE, False),
    (7, 8, _stat(0o640, cgid=8), shm.READ, True),       # creator's group
    (7, 8, _stat(0o640), shm.READ, False),              # other
    (7, 8, _stat(0o604), shm.READ, True),
    (7, 8, _stat(0o604), shm.WRITE, False),
    (7, 8, _stat(0o606), shm.WRITE, True),
    (0, 0, _stat(0o000), shm.WRITE, True),              # root, as the kernel allows
])
def test_permission_follows_the_kernel(caller_uid, caller_gid, st, want, allowed):
    caller = Caller(-1, caller_uid, caller_gid)  # no supplementary groups: primary group only
    assert shm.may_access(caller, st, want) is allowed




def test_a_caller_matching_no_owner_or_group_gets_the_other_bits():
    stranger = Caller(pid=-1, uid=-2, gid=-2)
    assert stranger.groups == frozenset()
    for st in (_stat(0o660, uid=2**32 - 2, gid=2**32 - 2), _stat(0o060, gid=0)):
        assert not shm.may_access(stranger, st, shm.READ)
    assert shm.may_access(stranger, _stat(0o604), shm.READ)  # others may: so may it


# --- the cache ----------------------------------------------------------------------------

def _read(cache, handle, nbytes, caller=ROOT):
    with cache.call(caller) as call:
        return bytes(call.read(handle, nbytes, "x"))


def test_cache_reuses_then_detects_a_reused_shmid(sysv, tmp_path):
    next_id = "/proc/sys/kernel/shm_next_id"
    if not os.access(next_id, os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/shm_next_id (root, own IPC namespace)")
    cache = shm.SharedMemory()
    first = sysv(64)
    first.write(np.full(8, 1, np.uint8))
    handle = pb.SharedMemoryHandle(segment_id=first.shmid, size=8)
    assert _read(cache, handle, 8) == bytes([1] * 8)
    assert _read(cache, handle, 8) == bytes([1] * 8) and cache.attachment_count == 1
    shmid = first.shmid
    first.free()  # removed: the agent's attachment keeps it alive, marked SHM_DEST
    with pytest.raises(AgentError) as info:
        _read(cache, handle, 8)
    assert info.value.code == StatusCode.INVALID_ARGUMENT and "removed" in info.value.message
    assert cache.attachment_count == 0  # detached at once: the id is free again
    with open(next_id, "w") as f:
        f.write(str(shmid))
    second = sysv(64)
    assert second.shmid == shmid
    second.write(np.full(8, 2, np.uint8))
    assert _read(cache, handle, 8) == bytes([2] * 8)
    cache.close()


def test_cache_follows_a_replaced_posix_name(posix):
    cache = shm.SharedMemory()
    segment = posix(64)
    segment.write(np.full(8, 1, np.uint8))
    handle = pb.SharedMemoryHandle(posix_name=segment.name, size=8)
    assert _read(cache, handle, 8) == bytes([1] * 8)
    segment.free()
    with pytest.raises(AgentError, match="does not exist"):
        _read(cache, handle, 8)
    replacement = PosixSegment.create(128, name=segment.name)
    try:
        replacement.write(np.full(8, 3, np.uint8))
        assert _read(cache, handle, 8) == bytes([3] * 8)
        os.truncate(f"/dev/shm{segment.name}", 4096)  # grown: mapped anew at the new size
        handle.offset = 4000
        assert _read(cache, handle, 8) == bytes(8)
    finally:
        replacement.free()
    cache.close()


def test_cache_is_bounded_and_sweeps_what_is_idle(sysv):
    now = [0.0]
    cache = shm.SharedMemory(cache_size=2, idle_seconds=10, clock=lambda: now[0])
    segments = [sysv(64) for _ in range(3)]
    for i, segment in enumerate(segments):
        now[0] = i
        _read(cache, pb.SharedMemoryHandle(segment_id=segment.shmid, size=8), 8)
    assert cache.attachment_count == 2
    assert _shm.sysv_stat(segments[0].shmid).attached == 1  # evicted: only the creator
    now[0] = 11.5  # segment 1 was used at 1, segment 2 at 2
    assert cache.sweep() == 1 and cache.attachment_count == 1
    segments[2].free()
    assert cache.sweep() == 1 and cache.attachment_count == 0  # removed: detached
    cache.close()


def test_no_cache_still_serves_each_call(sysv):
    cache = shm.SharedMemory(cache_size=0)
    segment = sysv(64)
    segment.write(np.full(8, 5, np.uint8))
    assert _read(cache, pb.SharedMemoryHandle(segment_id=segment.shmid), 8) == bytes([5] * 8)
    assert cache.attachment_count == 0
    assert _shm.sysv_stat(segment.shmid).attached == 1


def test_a_call_reports_a_segment_truncated_under_it(posix):
    cache = shm.SharedMemory()
    segment = posix(8192)
    segment.write(np.full(8192, 1, np.uint8))
    handle = pb.SharedMemoryHandle(posix_name=segment.name, offset=4096, size=4096)
    with pytest.raises(AgentError) as info:
        with cache.call(ROOT) as call:
            view = call.read(handle, 4096, "x")
            os.truncate(f"/dev/shm{segment.name}", 0)  # the owner shrinks it mid-call
            assert bytes(view) == bytes(4096)  # what set_tensor would copy: zeros, no SIGBUS
            del view
    assert info.value.code == StatusCode.INVALID_ARGUMENT and "truncated" in info.value.message
    with pytest.raises(AgentError, match="is empty"):  # and then it is seen as it is now
        _read(cache, handle, 4096)
    cache.close()


# --- what is no segment, or an empty one ------------------------------------------------------

@pytest.fixture
def shm_fifo():
    """A FIFO in /dev/shm where a client could name it as a POSIX segment: → its name."""
    name = f"edge-agent-test-fifo-{os.getpid()}"
    with fifo(f"{shm.POSIX_DIR}/{name}"):
        yield name


@pytest.mark.parametrize("writable", [False, True])
def test_posix_attach_refuses_a_fifo_without_blocking(shm_fifo, writable):
    with pytest.raises(_shm.NotASegment, match="not a shared-memory segment"):
        returns(lambda: _shm.posix_attach("/" + shm_fifo, writable))


def test_posix_attach_refuses_a_link(posix, tmp_path):
    target = posix(64)
    link = f"{shm.POSIX_DIR}/edge-agent-test-link-{os.getpid()}"
    os.symlink(f"{shm.POSIX_DIR}{target.name}", link)
    try:
        with pytest.raises(OSError) as info:
            _shm.posix_attach("/" + os.path.basename(link))
        assert info.value.errno == errno.ELOOP
    finally:
        os.unlink(link)


def test_a_fifo_named_as_a_segment_is_invalid_and_never_opened(shm_fifo, posix):
    cache = shm.SharedMemory()
    handle = pb.SharedMemoryHandle(posix_name="/" + shm_fifo, size=8)
    with pytest.raises(AgentError) as info:
        returns(lambda: _read(cache, handle, 8))
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert "is not a shared-memory segment" in info.value.message, info.value.message
    segment = posix(64)  # and the cache keeps serving
    assert returns(lambda: _read(cache, pb.SharedMemoryHandle(posix_name=segment.name, size=8),
                                 8)) == bytes(8)
    cache.close()


def test_a_fifo_swapped_in_after_the_check_is_refused_by_the_attach(shm_fifo, monkeypatch):
    # The name was a regular file when described, a FIFO by the time it is opened.
    monkeypatch.setattr(shm, "_posix_path_stat", lambda name: _stat(0o600, uid=0, gid=0))
    cache = shm.SharedMemory()
    with pytest.raises(AgentError, match="is not a shared-memory segment") as info:
        returns(lambda: _read(cache, pb.SharedMemoryHandle(posix_name=shm_fifo, size=8), 8))
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    cache.close()


def test_a_zero_length_posix_mapping_is_open_and_empty(posix):
    segment = posix(0)
    os.truncate(f"{shm.POSIX_DIR}{segment.name}", 0)  # create() rounds 0 up to 1 byte
    mapping, st = _shm.posix_attach(segment.name)
    assert (mapping.length, st.size) == (0, 0)
    assert not mapping.closed and mapping.mapped
    assert len(mapping.view(0, 0)) == 0 and bytes(memoryview(mapping)) == b""
    with pytest.raises(ValueError, match="beyond"):
        mapping.view(0, 1)
    mapping.close()
    assert not mapping.mapped


@pytest.mark.parametrize("nbytes", [0, 8])
def test_an_empty_posix_segment_is_invalid_not_internal(posix, nbytes):
    segment = posix(64)
    os.truncate(f"{shm.POSIX_DIR}{segment.name}", 0)
    cache = shm.SharedMemory()
    with pytest.raises(AgentError) as info:
        _read(cache, pb.SharedMemoryHandle(posix_name=segment.name), nbytes)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert "is empty (0 bytes)" in info.value.message, info.value.message
    assert cache.attachment_count == 0
    cache.close()


def test_a_slow_attach_stalls_neither_other_calls_nor_the_sweeper(posix, monkeypatch):
    # One call's attach is stuck (as an open() of a FIFO would be); the cache's lock must not
    # be held meanwhile, or every shared-memory call and the sweeper wait for it.
    slow, other = posix(64), posix(64)
    entered, let_go = threading.Event(), threading.Event()
    real_attach = _shm.posix_attach

    def attach(name, writable=False):
        if name == slow.name:
            entered.set()
            let_go.wait()
        return real_attach(name, writable)
    monkeypatch.setattr(_shm, "posix_attach", attach)
    cache = shm.SharedMemory()
    stuck = threading.Thread(target=_read, daemon=True,
                             args=(cache, pb.SharedMemoryHandle(posix_name=slow.name, size=8), 8))
    stuck.start()
    try:
        assert entered.wait(60)
        assert returns(lambda: _read(cache, pb.SharedMemoryHandle(posix_name=other.name, size=8),
                                     8)) == bytes(8)
        assert returns(cache.sweep) == 0
    finally:
        let_go.set()
        stuck.join(60)
    assert not stuck.is_alive() and cache.attachment_count == 2
    cache.close()


# --- without a build ----------------------------------------------------------------------

def test_without_the_build_a_shared_memory_tensor_is_unimplemented_naming_it(monkeypatch, sysv):
    """_shm has no pure-Python twin (it guards reads against SIGBUS): without it the agent
    refuses shared-memory tensors with UNIMPLEMENTED, saying what is missing, and the rest
    of the call path is unchanged."""
    segment = sysv(64)
    monkeypatch.setattr(shm, "_shm", None)
    cache = shm.SharedMemory(cache_size=4)
    handle = pb.SharedMemoryHandle(segment_id=segment.shmid, offset=0, size=16)
    with pytest.raises(AgentError) as refused, cache.call(ROOT) as call:
        call.read(handle, 16, "input 'x'")
    assert refused.value.code == StatusCode.UNIMPLEMENTED
    assert refused.value.message.startswith("input 'x': shared-memory tensors need "
                                            "edge_agent.shm._shm, the compiled module")
    assert "make setup" in refused.value.message and cache.attachment_count == 0
    cache.close()


def test_without_the_build_the_client_names_segments_and_making_one_names_the_build(
        monkeypatch):
    import edge_agent.shm
    from edge_agent.shm_client import ShmTensor, SysVSegment

    monkeypatch.setitem(sys.modules, "edge_agent.shm._shm", None)  # ImportError, as unbuilt
    monkeypatch.delattr(edge_agent.shm, "_shm")
    named = ShmTensor(5, 0, 16, np.dtype(np.float32), (4,))  # naming one needs no build
    assert named.segment_id == 5
    with pytest.raises(ImportError) as missing:
        SysVSegment.create(10)
    assert missing.value.name == "edge_agent.shm._shm"
    assert "needs edge_agent.shm._shm, the compiled module" in str(missing.value)
