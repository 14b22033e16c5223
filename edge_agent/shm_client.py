"""Shared-memory tensors on the client's side: segments to put arrays in, handles to send.

    with SysVSegment.create(image.nbytes) as segment:
        outputs = agent.predict("detector", [segment.write(image)])

A ShmTensor stands in for an array in AgentClient.predict inputs (and names where outputs
go). It needs no runtime: only the compiled edge_agent.shm._shm module and NumPy.

POSIX and memfd segments can also be passed to the agent as file descriptors (SCM_RIGHTS) on
the framed socket: then the agent needs no right to open the segment by name (a memfd has
none). AgentClient does it for a MemfdSegment always and for a PosixSegment with pass_fd=True.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.protocol.tensors import (SHARED_MEMORY, Handle, WireTensor, dtype_of,
                               pb_handle)


def _segments():
    """The compiled module that makes and maps segments, imported when a segment is first
    made: the client, which only names segments (ShmTensor) unless asked to make one, then
    imports without a compiled build."""
    try:
        from edge_agent.shm import _shm
    except ImportError:
        raise ImportError(
            "making or mapping a shared-memory segment needs edge_agent.shm._shm, the compiled "
            "module, which this installation lacks (a checkout without a build: run `make "
            "setup` or `pip install .`); naming an existing segment (ShmTensor) needs no build",
            name="edge_agent.shm._shm") from None
    return _shm


@dataclass(frozen=True)
class ShmTensor:
    """A tensor in shared memory: `size` bytes at `offset` of SysV segment `segment_id`, or
    of the POSIX segment `posix_name` when that is set. size 0 means "the tensor's byte
    length" for inputs and "up to the segment's end" for outputs."""
    segment_id: int
    offset: int
    size: int
    dtype: np.dtype
    shape: tuple[int, ...]
    posix_name: str = ""
    fd: int = -1  # this process's descriptor of the segment (POSIX, memfd), to pass; -1: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @classmethod
    def posix(cls, name: str, offset: int, size: int, dtype, shape, fd: int = -1) -> "ShmTensor":
        return cls(0, offset, size, dtype, shape, posix_name=name, fd=fd)

    @property
    def needs_fd(self) -> bool:
        """Only a descriptor can name it: a memfd, which has no name or id."""
        return self.fd >= 0 and not self.posix_name

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    def wire_handle(self, fd_index: int | None = None) -> Handle:
        """The handle naming it by id or name, or, given fd_index, as the fd_index-th
        descriptor passed with the request."""
        if fd_index is not None:
            return Handle(self.size, self.offset, fd_index=fd_index)
        return Handle(self.size, self.offset, self.segment_id, self.posix_name)

    def handle(self, fd_index: int | None = None) -> pb.SharedMemoryHandle:
        """wire_handle() as a protobuf message."""
        return pb_handle(self.wire_handle(fd_index))

    @classmethod
    def from_reply(cls, tensor: WireTensor) -> tuple[str, "ShmTensor"]:
        """(name, ShmTensor) of a reply tensor the agent wrote into shared memory."""
        handle = tensor.data if tensor.kind == SHARED_MEMORY else Handle()
        dtype = dtype_of(tensor.data_type)
        if dtype is None:
            raise ValueError(f"tensor {tensor.name!r}: unknown data type {tensor.data_type}")
        return tensor.name.decode("utf-8", "replace"), cls(
            handle.segment_id, handle.offset, handle.size, dtype, tuple(tensor.shape),
            handle.posix_name)


def fd_index(fds: list, tensor: ShmTensor, pass_fd: bool) -> int | None:
    """Where `tensor`'s descriptor goes among the descriptors of a request (added to `fds`
    once, however many tensors share the segment); None when it is named, not passed."""
    if tensor.fd < 0 or not (pass_fd or tensor.needs_fd):
        return None
    if tensor.fd not in fds:
        fds.append(tensor.fd)
    return fds.index(tensor.fd)


class _Segment:
    """A segment this process created and maps read-write: write arrays in, read them out."""

    def __init__(self, mapping):
        self._mapping = mapping
        self.nbytes = mapping.length

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def _tensor(self, offset: int, size: int, dtype, shape) -> ShmTensor:
        raise NotImplementedError

    def slot(self, dtype, shape, offset: int = 0) -> ShmTensor:
        """A ShmTensor for `dtype` `shape` at `offset`, e.g. for the agent to write into."""
        dtype = np.dtype(dtype)
        size = dtype.itemsize * math.prod(shape)
        self._check(offset, size)
        return self._tensor(offset, size, dtype, shape)

    def write(self, array: np.ndarray, offset: int = 0) -> ShmTensor:
        """Copy `array` into the segment at `offset`; → the ShmTensor to send."""
        array = np.asarray(array)
        tensor = self.slot(array.dtype, array.shape, offset)
        np.copyto(self.array(tensor), array)
        return tensor

    def array(self, tensor: ShmTensor) -> np.ndarray:
        """A NumPy view of `tensor`'s bytes in this segment (valid until free())."""
        self._check(tensor.offset, tensor.nbytes)
        view = self._mapping.view(tensor.offset, tensor.nbytes)
        return np.frombuffer(view, dtype=tensor.dtype).reshape(tensor.shape)

    def read(self, tensor: ShmTensor) -> np.ndarray:
        """A copy of `tensor`'s bytes in this segment, e.g. an output the agent wrote."""
        return self.array(tensor).copy()

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or offset + size > self.nbytes:
            raise ValueError(f"{size} bytes at offset {offset} do not fit the "
                             f"{self.nbytes}-byte segment")

    def free(self) -> None:
        raise NotImplementedError


class SysVSegment(_Segment):
    """A SysV segment: create(), write() arrays, send the ShmTensors, free() when done."""

    def __init__(self, shmid: int):
        mapping, _ = _segments().sysv_attach(shmid, writable=True)
        super().__init__(mapping)
        self.shmid = shmid

    @classmethod
    def create(cls, nbytes: int, mode: int = 0o600) -> "SysVSegment":
        """A new private segment of at least one byte, readable by the agent when it runs
        as this user (or root); give the group or others read bits otherwise."""
        shmid = _segments().sysv_create(max(1, nbytes), mode)
        try:
            return cls(shmid)
        except OSError:
            _segments().sysv_remove(shmid)
            raise

    def _tensor(self, offset, size, dtype, shape) -> ShmTensor:
        return ShmTensor(self.shmid, offset, size, dtype, shape)

    def free(self) -> None:
        """Remove the segment (IPC_RMID) and detach (once views from array() are released)."""
        if self._mapping.closed:
            return
        try:
            _segments().sysv_remove(self.shmid)
        except OSError:
            pass  # already removed by someone else: detaching is all that is left
        self._mapping.close()


class PosixSegment(_Segment):
    """A POSIX segment (shm_open name): create(), write() arrays, send, free() (unlink)."""

    def __init__(self, name: str):
        mapping, _ = _segments().posix_attach(name, writable=True)
        super().__init__(mapping)
        self.name = name

    @classmethod
    def create(cls, nbytes: int, name: str | None = None, mode: int = 0o600) -> "PosixSegment":
        """A new object of `nbytes` (a unique name when none is given)."""
        name = name or f"/edge-agent-{os.getpid()}-{os.urandom(6).hex()}"
        _segments().posix_create(name, max(1, nbytes), mode)
        try:
            return cls(name)
        except OSError:
            _segments().posix_unlink(name)
            raise

    def _tensor(self, offset, size, dtype, shape) -> ShmTensor:
        return ShmTensor.posix(self.name, offset, size, dtype, shape, self._mapping.fileno())

    def free(self) -> None:
        """Unlink the name and unmap (once views from array() are released)."""
        if self._mapping.closed:
            return
        try:
            _segments().posix_unlink(self.name)
        except FileNotFoundError:
            pass
        self._mapping.close()


class MemfdSegment(_Segment):
    """An anonymous segment (memfd_create): no name and no permission bits, so nobody can open
    it; the agent reaches it only through the descriptor the client passes with each call."""

    def __init__(self, fd: int):
        mapping, _ = _segments().fd_attach(fd, writable=True, name="memfd")
        super().__init__(mapping)
        self.fd = fd

    @classmethod
    def create(cls, nbytes: int, name: str = "edge-agent") -> "MemfdSegment":
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(1, nbytes))
            return cls(fd)
        except OSError:
            os.close(fd)
            raise

    def _tensor(self, offset, size, dtype, shape) -> ShmTensor:
        return ShmTensor(0, offset, size, dtype, shape, fd=self.fd)

    def free(self) -> None:
        """Close the descriptor and unmap (once views from array() are released); the memory
        goes when the agent has let go of it too."""
        if self._mapping.closed:
            return
        self._mapping.close()
        os.close(self.fd)
