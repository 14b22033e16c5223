# C declarations of the socket calls edge_agent.transport._inline_predicts makes
# (cext/_inline_predicts.pyx): libc's headers, as Cython sees them. Only what it uses.

cdef extern from "<sys/uio.h>":
    cdef struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    cdef struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    ssize_t recvmsg(int fd, msghdr* msg, int flags) nogil
    ssize_t send(int fd, const void* buf, size_t len, int flags) nogil
    cmsghdr* CMSG_FIRSTHDR(msghdr* msg)
    cmsghdr* CMSG_NXTHDR(msghdr* msg, cmsghdr* cmsg)
    unsigned char* CMSG_DATA(cmsghdr* cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)
    int SOL_SOCKET, SCM_RIGHTS
    int MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, MSG_NOSIGNAL
