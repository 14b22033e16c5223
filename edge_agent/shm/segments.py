"""Shared-memory tensors on the agent's side: attach, check, cache, read inputs, write outputs.

A Predict tensor may name a SysV segment (`segment_id`, a shmid) or, as an extension, a POSIX
object (`posix_name`) instead of carrying bytes. For each such handle the agent:

1. describes the segment as it is now (shmctl IPC_STAT, or lstat of /dev/shm/NAME): a segment
   that does not exist, is being removed, is empty (0 bytes) or is no regular file (a FIFO
   or device someone put in /dev/shm) is INVALID_ARGUMENT;
2. checks that the caller (SO_PEERCRED uid/gid and the supplementary groups read once when
   the connection was accepted, Caller.groups) may read it (or
   write it, for outputs) by its owner, group and mode, as the kernel would: else
   PERMISSION_DENIED, so the agent never reads for a client what the client could not read
   itself. Strict mode (edge_agent_shm_require_readonly) also refuses world-writable segments;
3. takes the attachment from its cache if it is still the same segment, else attaches anew,
   outside the cache's lock: an attach that is slow holds up only its own call;
4. checks offset and size against the segment's real size and hands the engine a view of the
   mapped bytes: the engine's set_tensor is the one copy.

The cache never serves stale memory: a SysV shmid cannot be given to a new segment while the
agent is attached to the old one (a removed segment stays in the kernel's table, marked
SHM_DEST, until its last detach), so "IPC_STAT succeeds and SHM_DEST is clear" proves the
cached attachment is still the segment the id names; the creator pid, creation time and size
are compared as well. A POSIX name is tied to its inode: (st_dev, st_ino, size) of the name
now must match the mapped object's.

On the framed socket a handle may instead name a descriptor the client passed with the call
(`fd_index`, edge_agent.platform.passed_fds): the object it refers to is mapped for that call
only and never cached (the descriptor is the client's, closed when the call ends), with no
owner or mode check, only the descriptor's own access mode. docs/SHARED_MEMORY.md is the user's guide.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import Callable, NamedTuple, Sequence

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent.platform import permissions
from edge_agent.platform.passed_fds import check_access, is_shared_memory, passed_fd
from edge_agent.errors import AgentError, StatusCode, invalid_argument
from edge_agent.protocol.tensors import Handle, handle_of

# The compiled module maps segments and guards every read of one against SIGBUS (a POSIX
# object truncated under the agent): no pure-Python twin can catch that signal, so there is
# none (docs/DEVELOPMENT.md, "Compiled modules and their twins"). Without a build the agent
# serves everything else and refuses shared-memory tensors with UNIMPLEMENTED, naming the build.
try:
    from edge_agent.shm import _shm
except ImportError:
    _shm = None  # attach() refuses, naming the build
NO_BUILD = ("shared-memory tensors need edge_agent.shm._shm, the compiled module, which this "
            "installation lacks (a checkout without a build: run `make setup` or `pip install .`); "
            "send the tensor's bytes in the request instead")

log = logging.getLogger(__name__)

POSIX_DIR = "/dev/shm"  # where glibc's shm_open keeps its objects on Linux
MAX_SHMID = 2**31 - 1   # shmids are C ints
NAME_MAX = 255

READ, WRITE = permissions.READ, permissions.WRITE
_DIRECTION = {READ: "read", WRITE: "write"}


# --- who may touch a segment ----------------------------------------------------------------

def may_access(caller, st: _shm.SegmentStat, want: int) -> bool:
    """The kernel's ipcperms() decision for `want` (READ or WRITE): the owner or creator
    gets the owner bits, a member of the owner's or creator's group the group bits
    (permissions.may_access says the rest)."""
    return permissions.may_access(caller, (st.uid, st.cuid), (st.gid, st.cgid), st.mode, want)


# --- naming segments ------------------------------------------------------------------------

class SegmentRef(NamedTuple):
    """Which segment a handle names: a SysV shmid, a POSIX name (without its slash), or the
    index of a descriptor passed with the call. A tuple: it is hashed as a cache key on every
    call."""
    shmid: int | None
    posix_name: str | None
    fd_index: int | None = None

    def __str__(self) -> str:
        if self.fd_index is not None:
            return f"passed descriptor #{self.fd_index}"
        if self.posix_name is not None:
            return f"POSIX segment '/{self.posix_name}'"
        return f"SysV segment {self.shmid}"


def segment_ref(handle: Handle, what: str) -> SegmentRef:
    """The segment a handle names; INVALID_ARGUMENT for an id or name that cannot be one."""
    if handle.fd_index is not None:
        return SegmentRef(None, None, handle.fd_index)
    if handle.posix_name:
        name = handle.posix_name[1:] if handle.posix_name.startswith("/") else handle.posix_name
        if (not name or "/" in name or "\0" in name or name in (".", "..")
                or len(name.encode()) > NAME_MAX):
            raise invalid_argument(
                f"{what}: {handle.posix_name!r} is not a POSIX shared-memory name (one path "
                f"component of at most {NAME_MAX} bytes, optionally after a '/')")
        return SegmentRef(None, name)
    if handle.segment_id > MAX_SHMID:
        raise invalid_argument(f"{what}: there is no SysV segment {handle.segment_id} "
                               f"(shmids are at most {MAX_SHMID})")
    return SegmentRef(handle.segment_id, None)


def _posix_path_stat(name: str) -> _shm.SegmentStat:
    """lstat of /dev/shm/NAME; NotASegment for anything but a regular file (never opened)."""
    st = os.stat(os.path.join(POSIX_DIR, name), follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise _shm.NotASegment(errno.ENODEV, "not a regular file")
    return _shm.SegmentStat(st.st_size, st.st_uid, st.st_gid, st.st_uid, st.st_gid,
                            st.st_mode & 0o7777, (st.st_dev, st.st_ino), False, 0)


def current_stat(ref: SegmentRef, what: str) -> _shm.SegmentStat:
    """The segment as the kernel describes it now; INVALID_ARGUMENT if gone or being removed."""
    try:
        st = (_posix_path_stat(ref.posix_name) if ref.posix_name is not None
              else _shm.sysv_stat(ref.shmid))
    except OSError as e:
        raise _os_failure(e, ref, what) from None
    if st.removing:
        raise invalid_argument(f"{what}: {ref} has been removed (IPC_RMID); create a new "
                               "segment and send its id")
    if st.size == 0:  # only a POSIX object can be: shmget refuses 0 bytes
        raise _empty(ref, what)
    return st


def _empty(ref: SegmentRef, what: str) -> AgentError:
    return invalid_argument(f"{what}: {ref} is empty (0 bytes); size it (ftruncate) before "
                            "naming it")


def _os_failure(error: OSError, ref: SegmentRef, what: str) -> AgentError:
    if ref.fd_index is not None:
        if isinstance(error, _shm.NotASegment):
            return invalid_argument(f"{what}: {ref} is not a shared-memory segment (not a "
                                    "regular file: a POSIX object, a memfd or a file)")
        if error.errno in (errno.EACCES, errno.EPERM):  # a memfd sealed against writing
            return AgentError(StatusCode.PERMISSION_DENIED,
                              f"{what}: {ref} may not be mapped as asked ({error.strerror})")
        return invalid_argument(f"{what}: cannot map {ref}: {error.strerror}")
    if isinstance(error, _shm.NotASegment):
        return invalid_argument(f"{what}: {ref} is not a shared-memory segment (/dev/shm/"
                                f"{ref.posix_name} is not a regular file)")
    if error.errno in (errno.EINVAL, errno.EIDRM, errno.ENOENT):
        return invalid_argument(f"{what}: {ref} does not exist (never created, or removed)")
    if error.errno in (errno.EACCES, errno.EPERM):
        # The caller may use the segment (checked before); the agent's own user may not.
        if ref.posix_name is None:
            fix = ("run the agent with CAP_IPC_OWNER (the systemd unit grants it: "
                   "AmbientCapabilities=CAP_IPC_OWNER), or give the agent's user or group "
                   "read access to the segment")
        else:
            fix = ("pass the segment to the agent as a file descriptor, or give the agent's "
                   "user or group read access to /dev/shm/" + ref.posix_name)
        return AgentError(StatusCode.PERMISSION_DENIED,
                          f"{what}: the agent's own user (uid {os.getuid()}) may not open "
                          f"{ref} ({error.strerror}); {fix}")
    return invalid_argument(f"{what}: cannot use {ref}: {error.strerror}")


# --- the attachment cache -------------------------------------------------------------------

class Attachment:
    """One mapped segment in the cache."""
    __slots__ = ("ref", "writable", "mapping", "identity", "last_used", "cached")

    def __init__(self, ref: SegmentRef, writable: bool, mapping, st: _shm.SegmentStat):
        self.ref = ref
        self.writable = writable
        self.mapping = mapping
        self.identity = st.identity
        self.last_used = 0.0
        self.cached = False

    def matches(self, st: _shm.SegmentStat) -> bool:
        """Still the segment that was mapped, at the size that was mapped."""
        m = self.mapping
        return st.identity == self.identity and st.size == m.length and not m.faulted

    def close(self) -> None:
        # Unmaps now, or when the last view handed out for a call in flight is released.
        self.mapping.close()


class SharedMemory:
    """Attachments shared by every call of one AgentService; thread-safe."""

    def __init__(self, require_readonly: bool = False, cache_size: int = 64,
                 idle_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.require_readonly = require_readonly
        self.cache_size = cache_size
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple, Attachment] = OrderedDict()  # least recent first
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._closed = threading.Event()

    @classmethod
    def from_config(cls, config) -> "SharedMemory":
        return cls(config.edge_agent_shm_require_readonly, config.edge_agent_shm_cache_size,
                   config.edge_agent_shm_idle_seconds)

    def call(self, caller) -> "ShmCall":
        """The shared-memory side of one Predict call by `caller`."""
        return ShmCall(self, caller)

    @property
    def attachment_count(self) -> int:
        return len(self._entries)

    def attach(self, ref: SegmentRef, caller, want: int, what: str, offset: int,
               size: int | None) -> tuple[Attachment, memoryview]:
        """A view of bytes [offset, offset + size) (size None: to the end) of the segment,
        which `caller` may `want` (READ or WRITE), and its attachment; raises
        INVALID_ARGUMENT or PERMISSION_DENIED as the module docstring says.

        The view is taken under the lock: once it exists, the mapping stays mapped even if
        another call evicts the attachment, so nothing can unmap the bytes under a call. A new
        attachment is made outside the lock (open, mmap, shmat may be slow; the lock guards
        only the cache), so one call's attach never stalls the others or the sweeper.
        """
        if _shm is None:
            raise AgentError(StatusCode.UNIMPLEMENTED, f"{what}: {NO_BUILD}")
        writable = want == WRITE
        if ref.fd_index is not None:
            return self._attach_passed(ref, caller, writable, what, offset, size)
        key = (ref, writable)
        try:
            st = current_stat(ref, what)
        except AgentError:
            self._forget(key)  # gone, being removed or empty: let its memory go now
            raise
        self._check_permission(ref, st, caller, want, what)
        with self._lock:
            entry = self._cached(key, st)
            if entry is not None:
                return entry, self._use(entry, ref, offset, size, what)
        fresh = self._attach_new(ref, writable, st, what)
        with self._lock:
            entry = self._cached(key, st)  # another call may have attached it meanwhile
            if entry is not None:
                fresh.close()
            else:
                entry = fresh
                self._purge_removed()
                if self.cache_size > 0:
                    entry.cached = True
                    self._entries[key] = entry
                    self._evict_beyond_limit()
            view = self._use(entry, ref, offset, size, what)
        if entry.cached:
            self._start_sweeper()
        return entry, view

    def _attach_passed(self, ref: SegmentRef, caller, writable: bool, what: str, offset: int,
                       size: int | None) -> tuple[Attachment, memoryview]:
        """attach() of a descriptor the client passed: mapped for this call only."""
        fd = passed_fd(caller, ref.fd_index, what)
        check_access(fd, writable, what)
        if not is_shared_memory(fd):
            raise invalid_argument(
                f"{what}: {ref} is not a shared-memory segment: pass a memfd or a POSIX "
                "shared-memory object (/dev/shm), not a pipe, socket, device or a file of "
                "another file system")
        try:
            mapping, st = _shm.fd_attach(fd, writable, str(ref))
        except OSError as e:
            raise _os_failure(e, ref, what) from None
        entry = Attachment(ref, writable, mapping, st)  # never cached: unmapped with its view
        if mapping.length == 0:
            entry.close()
            raise _empty(ref, what)
        return entry, self._use(entry, ref, offset, size, what)

    def _cached(self, key, st: _shm.SegmentStat) -> Attachment | None:
        """The cached attachment of `key` if it still maps the segment `st` describes (most
        recently used now); a stale one is dropped. Call with the lock held."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.matches(st):
            self._drop(key)  # the name now means another object, or it changed size
            return None
        self._entries.move_to_end(key)
        return entry

    def _use(self, entry: Attachment, ref, offset, size, what) -> memoryview:
        """The bounded view of one call; an uncached attachment goes with its view. Call with
        the lock held, so no eviction can slip between the lookup and the view."""
        entry.last_used = self._clock()
        try:
            return _bounded_view(entry.mapping, ref, offset, size, what)
        finally:
            if not entry.cached:
                entry.close()  # unmapped when the view is released

    def _forget(self, key) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key)

    def _drop(self, key) -> None:
        entry = self._entries.pop(key)
        entry.cached = False
        entry.close()

    def _check_permission(self, ref, st, caller, want, what) -> None:
        if not may_access(caller, st, want):
            raise AgentError(StatusCode.PERMISSION_DENIED, (
                f"{what}: uid {caller.uid} (gid {caller.gid}) may not {_DIRECTION[want]} {ref} "
                f"(owner uid {st.uid}, group gid {st.gid}, mode {st.mode & 0o777:04o})"))
        if self.require_readonly and st.mode & 0o002:
            raise AgentError(StatusCode.PERMISSION_DENIED, (
                f"{what}: {ref} may be written by anyone (mode {st.mode & 0o777:04o}) and "
                "edge_agent_shm_require_readonly refuses such segments; create it without "
                "write permission for others"))

    def _attach_new(self, ref: SegmentRef, writable: bool, st, what: str) -> Attachment:
        try:
            if ref.posix_name is not None:
                mapping, mapped = _shm.posix_attach("/" + ref.posix_name, writable)
            else:
                mapping, mapped = _shm.sysv_attach(ref.shmid, writable)
        except OSError as e:
            raise _os_failure(e, ref, what) from None
        entry = Attachment(ref, writable, mapping, mapped)
        if mapped.identity != st.identity or mapped.removing:
            entry.close()  # replaced between the check and the attach: check it again
            raise invalid_argument(f"{what}: {ref} was replaced or removed while being "
                                   "attached; try again")
        if mapping.length == 0:  # truncated to nothing since it was described
            entry.close()
            raise _empty(ref, what)
        return entry

    def _evict_beyond_limit(self) -> None:
        while len(self._entries) > self.cache_size:
            self._drop(next(iter(self._entries)))

    def _purge_removed(self) -> None:
        """Detach cached segments that are gone or being removed: their memory is only freed
        once the agent lets go. Runs on a cache miss, which costs an attach anyway."""
        for key, entry in list(self._entries.items()):
            if self._stale(entry):
                self._drop(key)

    @staticmethod
    def _stale(entry: Attachment) -> bool:
        ref = entry.ref
        try:
            st = (_posix_path_stat(ref.posix_name) if ref.posix_name is not None
                  else _shm.sysv_stat(ref.shmid))
        except OSError:
            return True
        return st.removing or not entry.matches(st)

    def sweep(self) -> int:
        """Detach what is idle longer than idle_seconds or no longer there; → how many."""
        deadline = self._clock() - self.idle_seconds
        closed = 0
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.last_used < deadline or self._stale(entry):
                    self._drop(key)
                    closed += 1
        return closed

    def _start_sweeper(self) -> None:
        if self._sweeper is None and not self._closed.is_set():
            with self._lock:
                if self._sweeper is None:
                    self._sweeper = threading.Thread(target=self._sweep_loop, daemon=True,
                                                     name="edge-agent-shm-sweep")
                    self._sweeper.start()

    def _sweep_loop(self) -> None:
        period = min(max(self.idle_seconds / 2, 0.1), 5.0)
        while not self._closed.wait(period):
            try:
                self.sweep()
            except Exception:  # never let the sweeper die silently and leak attachments
                log.exception("shared-memory sweep failed")

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for key in list(self._entries):
                self._drop(key)


# --- one call --------------------------------------------------------------------------------

class ShmCall:
    """The segments one Predict call uses: its input reader and output writer.

    Use as a context manager around the engine call: on the way out it reports a POSIX
    segment that was truncated under the call (its bytes read as zeros) as INVALID_ARGUMENT.
    """
    __slots__ = ("shm", "caller", "_used")

    def __init__(self, shm: SharedMemory, caller):
        self.shm = shm
        self.caller = caller
        self._used: list = []

    def __enter__(self) -> "ShmCall":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        used, self._used = self._used, []
        if exc_type is None:
            for entry in used:
                if entry.mapping.faulted:
                    raise invalid_argument(f"{entry.ref} was truncated while the agent used it; "
                                           "its contents were not what the call named")

    def faulted(self) -> list:
        """The segments used so far that were truncated under the call (read as zeros)."""
        return [entry.ref for entry in self._used if entry.mapping.faulted]

    def read(self, handle: Handle | pb.SharedMemoryHandle, nbytes: int, what: str):
        """The tensor's bytes in place: a read-only view of the segment, exactly nbytes long
        (the one size and bounds check of a shared-memory tensor, for Predict and capture).
        `what` names the tensor in messages ("input 'x'", "output tensor 0 'y'")."""
        handle = handle_of(handle)
        size = handle.size or nbytes
        if size != nbytes:
            raise invalid_argument(
                f"{what}: the shared-memory handle says {size} bytes but the tensor's "
                f"metadata makes {nbytes} bytes (size 0 means exactly that)")
        entry, view = self.shm.attach(segment_ref(handle, what), self.caller, READ, what,
                                      handle.offset, size)
        self._used.append(entry)
        return view

    def output_writer(self, handles: Sequence[Handle | pb.SharedMemoryHandle], outputs: Sequence):
        """A writer(position, name, array) → Handle for the engine, one handle per output in
        the model's order, every segment attached and permission-checked before invoke."""
        if len(handles) != len(outputs):
            names = ", ".join(spec.name for spec in outputs)
            raise invalid_argument(
                f"output_handles: the model has {len(outputs)} output(s) ({names}), "
                f"got {len(handles)} handle(s); give one per output, in order, or none")
        targets = []
        for handle, spec in zip(handles, outputs):
            handle = handle_of(handle)
            what = f"output '{spec.name}'"
            # Room: `size` bytes, or (size 0) whatever the segment has after the offset.
            entry, room = self.shm.attach(segment_ref(handle, what), self.caller, WRITE, what,
                                          handle.offset, handle.size or None)
            self._used.append(entry)
            targets.append((handle, entry.ref, room))

        def write(position: int, name: str, array: np.ndarray) -> Handle:
            handle, ref, room = targets[position]
            nbytes = array.nbytes
            if nbytes > len(room):
                raise invalid_argument(
                    f"output '{name}': {array.dtype} {list(array.shape)} is {nbytes} bytes "
                    f"but the handle leaves room for {len(room)} bytes of {ref} at offset "
                    f"{handle.offset}")
            np.copyto(np.frombuffer(room[:nbytes], dtype=array.dtype).reshape(array.shape), array)
            if ref.fd_index is not None:
                return Handle(nbytes, handle.offset, fd_index=ref.fd_index)
            if ref.posix_name is not None:
                return Handle(nbytes, handle.offset, posix_name=handle.posix_name)
            return Handle(nbytes, handle.offset, segment_id=ref.shmid)
        return write


def _bounded_view(mapping, ref: SegmentRef, offset: int, size: int | None, what: str):
    length = mapping.length
    if size is None:
        size = length - offset if offset <= length else 0
    if offset > length or size > length - offset:
        raise invalid_argument(
            f"{what}: bytes {offset}..{offset + size} lie beyond the end of {ref} "
            f"({length} bytes)")
    return mapping.view(offset, size)
