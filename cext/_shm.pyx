# cython: language_level=3, boundscheck=False, wraparound=False
"""Shared-memory segments as bounds-checked buffers: the byte-level core of edge_agent.shm.

One job: attach SysV segments (shmat/shmctl) and map POSIX ones (shm_open/mmap), describe
them (IPC_STAT, fstat) and expose the mapped bytes through the buffer protocol, so a
memoryview of a Mapping reads the segment in place. It needs only libc and the Python
headers. Policy (caching, permissions, messages) lives in edge_agent.shm.

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
  agent dying. SysV segments cannot shrink, so they need no such guard.
"""
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_WRITABLE
from libc.errno cimport errno
from libc.stdint cimport uint64_t, uintptr_t
from posix.types cimport off_t, mode_t, uid_t, gid_t, pid_t, time_t

import errno as errno_module
import os

cdef extern from "<sys/types.h>":
    ctypedef int key_t

cdef extern from "<sys/stat.h>":
    cdef struct stat:
        unsigned long st_dev
        unsigned long st_ino
        mode_t st_mode
        uid_t st_uid
        gid_t st_gid
        off_t st_size
    int fstat(int fd, stat* buf) nogil
    bint S_ISREG(mode_t mode)

cdef extern from "<sys/mman.h>":
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) nogil
    int munmap(void* addr, size_t length) nogil
    int shm_open(const char* name, int oflag, mode_t mode) nogil
    int shm_unlink(const char* name) nogil
    void* MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_SHARED

cdef extern from "<fcntl.h>":
    int O_RDONLY, O_RDWR, O_CREAT, O_EXCL, O_NONBLOCK, O_NOFOLLOW, O_CLOEXEC

cdef extern from "<unistd.h>":
    int close(int fd) nogil
    int ftruncate(int fd, off_t length) nogil
    int fchmod(int fd, mode_t mode) nogil

cdef extern from "<sys/shm.h>":
    cdef struct ipc_perm:
        key_t __key
        uid_t uid
        gid_t gid
        uid_t cuid
        gid_t cgid
        unsigned short mode
    cdef struct shmid_ds:
        ipc_perm shm_perm
        size_t shm_segsz
        time_t shm_atime
        time_t shm_dtime
        time_t shm_ctime
        pid_t shm_cpid
        pid_t shm_lpid
        unsigned long shm_nattch
    void* shmat(int shmid, const void* shmaddr, int shmflg) nogil
    int shmdt(const void* shmaddr) nogil
    int shmctl(int shmid, int cmd, shmid_ds* buf) nogil
    int shmget(key_t key, size_t size, int shmflg) nogil
    int IPC_STAT, IPC_RMID, IPC_PRIVATE, IPC_CREAT, IPC_EXCL, SHM_RDONLY

# The SIGBUS guard, in C: it must run inside a signal handler, where Python cannot.
cdef extern from *:
    """
    #include <signal.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <sys/shm.h>
    #ifndef SHM_DEST
    #define SHM_DEST 01000  /* Linux: the segment is marked for removal */
    #endif
    #define EA_GUARD_SLOTS 1024

    /* Registered POSIX mappings. Slots are written with the GIL held; the handler only
       reads them, and a mapping in use by a copy is never unregistered during it. */
    typedef struct { volatile uintptr_t start; volatile size_t length; volatile int faulted; } ea_guard_slot;
    static ea_guard_slot ea_guard[EA_GUARD_SLOTS];
    static struct sigaction ea_previous_sigbus;
    static int ea_guard_installed = 0;

    static void ea_sigbus(int signum, siginfo_t *info, void *context) {
        uintptr_t addr = (uintptr_t)info->si_addr;
        for (int i = 0; i < EA_GUARD_SLOTS; i++) {
            uintptr_t start = ea_guard[i].start;
            size_t length = ea_guard[i].length;
            if (start && addr >= start && addr - start < length) {
                /* Zero pages in place of the truncated object: the faulting access is
                   retried and succeeds; the owner of the mapping sees `faulted`. */
                mmap((void *)start, length, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                ea_guard[i].faulted = 1;
                return;
            }
        }
        /* Not ours: hand over to whoever had SIGBUS before (faulthandler, the default). */
        if (ea_previous_sigbus.sa_flags & SA_SIGINFO) {
            if (ea_previous_sigbus.sa_sigaction) { ea_previous_sigbus.sa_sigaction(signum, info, context); return; }
        } else if (ea_previous_sigbus.sa_handler != SIG_DFL && ea_previous_sigbus.sa_handler != SIG_IGN) {
            ea_previous_sigbus.sa_handler(signum); return;
        }
        sigaction(SIGBUS, &ea_previous_sigbus, NULL);  /* the retried access dies as it should */
    }

    static int ea_guard_install(void) {
        if (ea_guard_installed) return 0;
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = ea_sigbus;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &ea_previous_sigbus) != 0) return -1;
        ea_guard_installed = 1;
        return 0;
    }

    static int ea_guard_add(void *start, size_t length) {
        for (int i = 0; i < EA_GUARD_SLOTS; i++) {
            if (!ea_guard[i].start) {
                ea_guard[i].faulted = 0;
                ea_guard[i].length = length;
                __atomic_store_n(&ea_guard[i].start, (uintptr_t)start, __ATOMIC_RELEASE);
                return i;
            }
        }
        return -1;
    }

    static void ea_guard_remove(int slot) {
        __atomic_store_n(&ea_guard[slot].start, (uintptr_t)0, __ATOMIC_RELEASE);
        ea_guard[slot].length = 0;
    }

    static int ea_guard_faulted(int slot) { return ea_guard[slot].faulted; }

    /* ipc_perm's sequence number is a glibc field name; other libcs call it otherwise. */
    #ifdef __GLIBC__
    #define EA_IPC_SEQ(perm) ((perm).__seq)
    #else
    #define EA_IPC_SEQ(perm) 0
    #endif
    """
    int SHM_DEST
    int EA_GUARD_SLOTS
    int ea_guard_install()
    int ea_guard_add(void* start, size_t length)
    void ea_guard_remove(int slot)
    int ea_guard_faulted(int slot)
    unsigned int EA_IPC_SEQ(ipc_perm perm)


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
