# cython: language_level=3, boundscheck=False, wraparound=False
"""Shared-memory segments as bounds-checked buffers: the byte-level core of edge_agent.shm.segments.

One job: attach SysV segments (shmat/shmctl) and map POSIX ones (shm_open/mmap), describe
them (IPC_STAT, fstat) and expose the mapped bytes through the buffer protocol, so a
memoryview of a Mapping reads the segment in place. It needs only libc and the Python
headers. Policy (caching, permissions, messages) lives in edge_agent.shm.segments.

Memory safety rules kept here:
- a Mapping is unmapped only when no buffer exported from it is alive: close() while views
  exist only marks it, and the last released view unmaps it;
- view() checks offset and size against the mapped length without integer overflow;
- a zero-length POSIX object maps no pages but is still a valid, open Mapping of 0 bytes;
- posix_attach opens non-blocking and without following links, and maps only a regular
  file: a FIFO (or device) put in /dev/shm under a segment's name must not block the agent
  in open(), nor map a device's memory;
- a POSIX object can be truncated by its owner while it is mapped, and touching the pages
  beyond its new end raises SIGBUS. A SIGBUS handler (as Wayland compositors do for client
  pools) replaces such a mapping with anonymous zero pages and flags it (Mapping.faulted), so
  the copy in flight completes and the caller reports the segment as invalid, instead of the
  agent dying. SysV segments cannot shrink, so they need no such guard. The guard is C (it
  runs inside the signal handler, where Python cannot): cext/includes/sigbus_guard.h; the
  libc declarations are in cext/includes/system.pxd.
"""
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_WRITABLE
from libc.errno cimport errno
from includes.sigbus_guard cimport (EA_GUARD_SLOTS, ea_guard_add, ea_guard_faulted,
                                     ea_guard_install, ea_guard_remove)
from includes.system cimport (EA_IPC_SEQ, IPC_CREAT, IPC_EXCL, IPC_PRIVATE, IPC_RMID, IPC_STAT,
                              MAP_FAILED, MAP_SHARED, O_CLOEXEC, O_CREAT, O_EXCL, O_NOFOLLOW,
                              O_NONBLOCK, O_RDONLY, O_RDWR, PROT_READ, PROT_WRITE, S_ISREG,
                              SHM_DEST, SHM_RDONLY, close, fchmod, fstat, ftruncate, mmap,
                              munmap, shm_open, shm_unlink, shmat, shmctl, shmdt, shmget,
                              shmid_ds, stat)

import errno as errno_module
import os


cdef inline _os_error(what):
    cdef int code = errno
    return OSError(code, f"{what}: {os.strerror(code)}")


class NotASegment(OSError):
    """The name is taken by something that is not a regular file (a FIFO, a device, a
    directory...): no shared-memory object, and not to be opened or mapped."""


# --- segment descriptions ----------------------------------------------------------------

cdef class SegmentStat:
    """What the kernel says about a segment: size, owner, creator, mode and identity.

    For a POSIX object, cuid/cgid are its uid/gid, `identity` is (st_dev, st_ino) and
    `removing` is never set; for a SysV segment `identity` is (creator pid, creation time,
    sequence number) and `removing` says IPC_RMID was called while it is still attached.
    """
    cdef readonly object size, uid, gid, cuid, cgid, mode, identity, removing, attached

    def __init__(self, size, uid, gid, cuid, cgid, mode, identity, removing, attached):
        self.size, self.uid, self.gid, self.cuid, self.cgid = size, uid, gid, cuid, cgid
        self.mode, self.identity, self.removing, self.attached = mode, identity, removing, attached

    def __repr__(self):
        return (f"SegmentStat(size={self.size}, uid={self.uid}, gid={self.gid}, "
                f"cuid={self.cuid}, cgid={self.cgid}, mode={self.mode:o}, "
                f"identity={self.identity}, removing={self.removing}, attached={self.attached})")


def sysv_stat(int shmid):
    """IPC_STAT of a SysV segment as a SegmentStat; OSError (EINVAL, EIDRM, EACCES) if none."""
    cdef shmid_ds ds
    cdef int rc
    with nogil:
        rc = shmctl(shmid, IPC_STAT, &ds)
    if rc != 0:
        raise _os_error(f"shmctl(IPC_STAT) of SysV segment {shmid}")
    mode = ds.shm_perm.mode
    return SegmentStat(
        ds.shm_segsz, ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.cuid, ds.shm_perm.cgid,
        mode & 0o777, (ds.shm_cpid, ds.shm_ctime, EA_IPC_SEQ(ds.shm_perm)),
        bool(mode & SHM_DEST), ds.shm_nattch)


cdef _fd_stat(int fd, what):
    cdef stat st
    if fstat(fd, &st) != 0:
        raise _os_error(f"fstat of {what}")
    return SegmentStat(st.st_size, st.st_uid, st.st_gid, st.st_uid, st.st_gid,
                       st.st_mode & 0o7777, (st.st_dev, st.st_ino), False, 0)


# --- mappings ------------------------------------------------------------------------------

cdef enum Kind:
    SYSV = 1
    POSIX = 2


# Where a zero-length Mapping's buffer points: a valid address, never read or written.
cdef char _EMPTY[1]


cdef class Mapping:
    """A mapped segment. Its buffer is the whole segment; view() is a bounds-checked slice.

    Read-only unless mapped writable. Stays mapped while any buffer taken from it lives.
    """
    cdef char* _addr
    cdef readonly size_t length
    cdef readonly bint writable
    cdef readonly bint closed
    cdef int _kind
    cdef int _fd          # POSIX: kept open, so fstat() describes exactly what is mapped
    cdef int _slot        # POSIX: SIGBUS guard slot
    cdef Py_ssize_t _exports
    cdef Py_ssize_t _shape[1]
    cdef bint _was_faulted
    cdef readonly object name  # shmid or POSIX name, for messages

    def __cinit__(self):
        self._addr = NULL
        self._fd = -1
        self._slot = -1
        self._exports = 0
        self._was_faulted = False
        self.closed = False

    def __dealloc__(self):
        self._unmap()

    cdef void _unmap(self) noexcept:
        if self._addr == _EMPTY:  # a zero-length object: nothing was mapped
            self._addr = NULL
        elif self._addr != NULL:
            if self._slot >= 0:
                self._was_faulted = ea_guard_faulted(self._slot) != 0
                ea_guard_remove(self._slot)
                self._slot = -1
            if self._kind == SYSV:
                shmdt(self._addr)
            else:
                munmap(self._addr, self.length)
            self._addr = NULL
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1

    def close(self):
        """Detach; deferred until the last view of the bytes is released."""
        self.closed = True
        if self._exports == 0:
            self._unmap()

    @property
    def mapped(self):
        """False once the bytes are really unmapped (close() and no view left)."""
        return self._addr != NULL

    @property
    def faulted(self):
        """True when the POSIX object shrank under the mapping and its pages were replaced."""
        return self._was_faulted or (self._slot >= 0 and ea_guard_faulted(self._slot) != 0)

    def fileno(self):
        """The descriptor of a mapped POSIX object or memfd (to pass to the agent); -1 for
        SysV. It stays open until the mapping is unmapped."""
        return self._fd

    def fstat(self):
        """fstat of the mapped POSIX object (its current size, owner and mode)."""
        if self._fd < 0:
            raise ValueError("fstat() is for POSIX mappings")
        return _fd_stat(self._fd, f"POSIX segment {self.name!r}")

    def view(self, unsigned long long offset, unsigned long long size):
        """memoryview of bytes [offset, offset + size); ValueError when out of bounds."""
        if self.closed:
            raise ValueError("the mapping is closed")
        # size > length - offset, not offset + size > length: the sum can wrap at 2**64.
        if offset > self.length or size > self.length - offset:
            raise ValueError(f"bytes {offset}..{<object>offset + <object>size} lie beyond "
                             f"the {self.length}-byte segment")
        return memoryview(self)[offset:offset + size]

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if self._addr == NULL or self.closed:
            raise BufferError("the mapping is closed")
        if (flags & PyBUF_WRITABLE) and not self.writable:
            raise BufferError("the segment is mapped read-only")
        buffer.buf = self._addr
        buffer.obj = self
        buffer.len = self.length
        buffer.readonly = not self.writable
        buffer.itemsize = 1
        buffer.format = NULL
        if flags & PyBUF_FORMAT:
            buffer.format = "B"
        buffer.ndim = 1
        self._shape[0] = <Py_ssize_t>self.length
        buffer.shape = self._shape if (flags & PyBUF_ND) else NULL
        buffer.strides = NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1
        if self._exports == 0 and self.closed:
            self._unmap()

    def __repr__(self):
        kind = "SysV" if self._kind == SYSV else "POSIX"
        state = "closed" if self.closed else ("rw" if self.writable else "ro")
        return f"<Mapping {kind} {self.name!r} {self.length} bytes {state}>"


def sysv_attach(int shmid, bint writable=False):
    """Attach a SysV segment (read-only unless writable) → (Mapping, SegmentStat).

    The stat is taken after attaching, so it describes the attached segment: while we are
    attached its shmid cannot be given to another segment.
    """
    cdef void* addr
    cdef int flags = 0 if writable else SHM_RDONLY
    with nogil:
        addr = shmat(shmid, NULL, flags)
    if addr == <void*>-1:
        raise _os_error(f"shmat of SysV segment {shmid}")
    cdef Mapping m = Mapping.__new__(Mapping)
    m._addr = <char*>addr
    m._kind = SYSV
    m.writable = writable
    m.name = shmid
    try:
        st = sysv_stat(shmid)
    except OSError:
        m._unmap()
        raise
    m.length = st.size
    return m, st


def posix_attach(str name, bint writable=False):
    """Open and map a POSIX object by shm_open name (read-only unless writable).

    → (Mapping, SegmentStat of the mapped object). A zero-length object maps no bytes.
    """
    cdef bytes encoded = name.encode()
    cdef const char* c_name = encoded
    cdef int fd
    cdef int oflag = O_RDWR if writable else O_RDONLY
    # O_NONBLOCK: open() of a FIFO would wait for a writer for ever (it changes nothing for
    # a regular file); O_NOFOLLOW: a link under /dev/shm is refused, not followed.
    oflag |= O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC
    with nogil:
        fd = shm_open(c_name, oflag, 0)
    if fd < 0:
        raise _os_error(f"shm_open of POSIX segment {name!r}")
    return _map_fd(fd, name, writable)


def fd_attach(int fd, bint writable=False, name=None):
    """Map the regular file (POSIX object, memfd) open as `fd`, read-only unless writable.

    The Mapping keeps a duplicate of `fd` (close-on-exec), so the caller may close its own at
    once. → (Mapping, SegmentStat), as posix_attach; NotASegment for a FIFO, socket, device.
    """
    cdef int copy = os.dup(fd)  # non-inheritable, as every descriptor Python makes
    return _map_fd(copy, f"descriptor {fd}" if name is None else name, writable)


cdef _map_fd(int fd, name, bint writable):
    """Map the open object `fd` (which the returned Mapping then owns and closes)."""
    cdef Mapping m = Mapping.__new__(Mapping)
    m._fd = fd
    m._kind = POSIX
    m.writable = writable
    m.name = name
    cdef stat raw
    if fstat(fd, &raw) != 0:
        raise _os_error(f"fstat of POSIX segment {name!r}")  # closes fd via m
    if not S_ISREG(raw.st_mode):
        raise NotASegment(errno_module.ENODEV,
                          f"{name!r} is not a shared-memory segment (not a regular file)")
    st = _fd_stat(fd, f"POSIX segment {name!r}")
    m.length = st.size
    if m.length == 0:
        m._addr = _EMPTY  # a valid, empty buffer: the mapping is open, just holds no bytes
        return m, st
    cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
    cdef void* addr
    with nogil:
        addr = mmap(NULL, m.length, prot, MAP_SHARED, fd, 0)
    if addr == MAP_FAILED:
        raise _os_error(f"mmap of POSIX segment {name!r}")
    m._addr = <char*>addr
    if ea_guard_install() != 0:
        raise _os_error("installing the SIGBUS guard")
    m._slot = ea_guard_add(addr, m.length)
    if m._slot < 0:
        raise OSError(24, f"too many POSIX segments mapped at once ({EA_GUARD_SLOTS})")
    return m, st


# --- creating and removing (the client side) -----------------------------------------------

def sysv_create(size_t size, int mode=0o600):
    """A new private SysV segment of `size` bytes → its shmid."""
    cdef int shmid
    with nogil:
        shmid = shmget(IPC_PRIVATE, size, IPC_CREAT | IPC_EXCL | (mode & 0o777))
    if shmid < 0:
        raise _os_error(f"shmget of {size} bytes")
    return shmid


def sysv_remove(int shmid):
    """IPC_RMID: the segment goes once its last attachment is detached."""
    if shmctl(shmid, IPC_RMID, NULL) != 0:
        raise _os_error(f"removing SysV segment {shmid}")


def posix_create(str name, size_t size, int mode=0o600):
    """A new POSIX object `name` of `size` bytes with exactly `mode` (no umask)."""
    cdef bytes encoded = name.encode()
    cdef const char* c_name = encoded
    cdef int fd
    with nogil:
        fd = shm_open(c_name, O_RDWR | O_CREAT | O_EXCL, mode & 0o777)
    if fd < 0:
        raise _os_error(f"creating POSIX segment {name!r}")
    try:
        if fchmod(fd, mode & 0o777) != 0:
            raise _os_error(f"chmod of POSIX segment {name!r}")
        if ftruncate(fd, size) != 0:
            raise _os_error(f"sizing POSIX segment {name!r}")
    except OSError:
        close(fd)
        shm_unlink(encoded)
        raise
    close(fd)


def posix_unlink(str name):
    cdef bytes encoded = name.encode()
    if shm_unlink(encoded) != 0:
        raise _os_error(f"unlinking POSIX segment {name!r}")
