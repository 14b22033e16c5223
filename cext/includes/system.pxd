# C declarations of the system calls edge_agent.shm._shm makes (cext/_shm.pyx): libc's headers,
# as Cython sees them. Only the fields and constants _shm reads are declared.
from posix.types cimport gid_t, mode_t, off_t, pid_t, time_t, uid_t

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

# What C libraries spell differently (shm_compat.h).
cdef extern from "shm_compat.h":
    int SHM_DEST
    unsigned int EA_IPC_SEQ(ipc_perm perm)
