# cython: language_level=3, boundscheck=False, wraparound=False
"""The framed front's inline Predicts in one compiled pass: the whole request frames at the
head of a connection's receive buffer that are Predicts of a model measured fast enough to
run on the loop (edge_agent.transport.workers), each answered by the model's compiled plain
call (edge_agent.models.plain_call) and its reply frame written into one buffer, sent after
the pass in one sendmsg. No Python frame per request: the splitter's next_view, two dict
reads, the plain call and the front's call counter are the calls it makes.

The pass stops at the first frame it does not answer (anything but such a Predict, or one
the plain call leaves to the general path) and hands it back, whole, for the connection's
usual path (edge_agent.protocol.ServerConnection.give_back), so every rule of the framed
front is the one it already has: this only answers, sooner, what that path would answer OK.

The twin of edge_agent/transport/_inline_predicts_py.py: a change here is made there too;
tests/integration/test_inline_predicts.py runs both.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from includes.sockets cimport (CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN, CMSG_NXTHDR, CMSG_SPACE,
                               MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, MSG_NOSIGNAL,
                               SCM_RIGHTS, SOL_SOCKET, cmsghdr, iovec, msghdr, recvmsg, send)

from edge_agent.errors import FramingError

cdef enum:
    HEADER_SIZE = 16
    REQUEST = 1
    REPLY = 2
    VERSION = 1
    # edge_agent.protocol.receiving.MAX_FDS descriptors a frame may bring: the ancillary
    # space offered is exactly theirs (CMSG_SPACE, as socket_io's), so the kernel cuts off
    # any more (MSG_CTRUNC) and the frame is refused; a larger space would let more through
    MAX_FDS = 16
    # The pass stops answering once its replies reach this (a socket's worth, as
    # edge_agent.protocol.receiving.RECV_BYTES): the rest is the usual path's, which answers
    # the next request only once the last reply went, so a client that does not read has one
    # large reply waiting for it, not a turn's.
    OUT_BYTES = 256 * 1024
    CONTROL_BYTES = 128  # the array's size: >= CMSG_SPACE(MAX_FDS * sizeof(int)) = 80


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef object _model_name(object body):
    """edge_agent.transport.workers.predict_model_name, in C: the model name of a serialized
    PredictRequest (field 1, first, as every encoder puts it), without decoding the message;
    None when it is not there."""
    cdef Py_buffer view
    cdef const uint8_t* p
    cdef Py_ssize_t length = 0, at = 1, size
    cdef int shift
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>view.buf
        size = view.len
        if size < 2 or p[0] != 0x0A:
            return None
        for shift in range(0, 14, 7):
            if at >= size:
                return None
            length |= <Py_ssize_t>(p[at] & 0x7F) << shift
            at += 1
            if not p[at - 1] & 0x80:
                break
        else:
            return None
        if at + length > size:
            return None
        return PyUnicode_DecodeUTF8(<const char*>(p + at), length, "replace")
    finally:
        PyBuffer_Release(&view)


cdef void _put_u16(uint8_t* p, uint16_t value) noexcept:
    p[0] = value & 0xFF
    p[1] = value >> 8


cdef void _put_u32(uint8_t* p, uint32_t value) noexcept:
    p[0] = value & 0xFF
    p[1] = (value >> 8) & 0xFF
    p[2] = (value >> 16) & 0xFF
    p[3] = value >> 24


cdef class InlinePredicts:
    """One front's pass (edge_agent.transport.framed_front.SocketServer makes it once).

    `models`: the service's models by name (read without a lock: one dict read);
    `decided`: the workers' decisions by model name (False: runs inline); `count(rpc, code)`:
    the front's call counter; `measure(name, seconds)`: the workers' timing of a model, fed
    one call in `measure_every`, so a model whose cost grows leaves the loop; `method`: the
    Predict method number."""

    cdef object _models, _decided, _count, _measure
    cdef int _method
    cdef unsigned long _measure_every, _calls
    # After answer(): the frame not answered here (its next_view parts) or the FramingError
    # the splitter raised, for the usual path; and (parts, model, exception) of a call that
    # raised.
    cdef public object held
    cdef public object failed

    def __cinit__(self, models, decided, count, measure, int method,
                  unsigned long measure_every):
        # Read below with PyDict_GetItem, which a subclass (the workers' OrderedDict) allows
        # and anything else would answer with nothing.
        if not isinstance(models, dict) or not isinstance(decided, dict):
            raise TypeError("models and decided must be dictionaries")
        self._models = models
        self._decided = decided
        self._count = count
        self._measure = measure
        self._method = method
        self._measure_every = measure_every
        self._calls = 0
        self.held = None
        self.failed = None

    def answer(self, splitter, int turn, bytearray out, double now):
        """Answer up to `turn` frames at the head of `splitter`, their reply frames appended
        to `out` until it holds OUT_BYTES: how many. Then `held` and `failed` say where it
        stopped (both None: the splitter has no whole frame the pass may take)."""
        cdef int answered = 0
        cdef tuple parts
        cdef PyObject* found
        cdef Py_ssize_t at, size
        cdef uint8_t* p
        cdef double started
        self.held = None
        self.failed = None
        next_view = splitter.next_view
        while answered < turn and PyByteArray_GET_SIZE(out) < OUT_BYTES:
            try:
                item = next_view()
            except FramingError as e:
                self.held = e
                break
            if item is None:
                break
            parts = <tuple>item
            if parts[0] != REQUEST or parts[2] != 0 or parts[1] != self._method:
                self.held = parts
                break
            body = parts[4]
            name = _model_name(body)
            if name is None:
                self.held = parts
                break
            found = PyDict_GetItem(<dict>self._decided, name)
            if found == NULL or <object>found is not False:
                self.held = parts
                break
            found = PyDict_GetItem(<dict>self._models, name)
            if found == NULL:
                self.held = parts
                break
            model = <object>found
            self._calls += 1
            timed = self._calls % self._measure_every == 0
            if timed:
                started = _now()
            try:
                reply = model.plain_call.answer(body, now)
            except Exception as e:
                self.failed = (parts, model, e)
                break
            if reply is None:
                self.held = parts
                break
            if type(reply) is not bytes:  # (a plain call answers bytes; read below as such)
                reply = bytes(reply)
            if timed:
                self._measure(name, _now() - started)
            size = PyBytes_GET_SIZE(reply)
            at = PyByteArray_GET_SIZE(out)
            PyByteArray_Resize(out, at + HEADER_SIZE + size)
            p = <uint8_t*>PyByteArray_AS_STRING(out) + at
            p[0] = 0x45  # 'E'
            p[1] = 0x41  # 'A'
            p[2] = VERSION
            p[3] = REPLY
            _put_u16(p + 4, <uint16_t>self._method)
            _put_u16(p + 6, 0)
            _put_u32(p + 8, <uint32_t>parts[3])
            _put_u32(p + 12, <uint32_t>size)
            memcpy(p + HEADER_SIZE, PyBytes_AS_STRING(reply), size)
            answered += 1
            self._count("Predict", 0)
        return answered

    def receive(self, sock, splitter, Py_ssize_t offer, int turn, bytearray out,
                double now):
        """One receive of the connection's socket `sock` (non-blocking) into
        splitter.get_buffer(offer), the pass over it, and the replies sent: the framed
        front's steady state (no frame in progress) in one call.

        Returns (nbytes, fds, truncated, answered, sent). nbytes 0: end of stream. With
        descriptors (fds, a tuple, close-on-exec, now the caller's; truncated: MSG_CTRUNC) the
        bytes are left unannounced to the splitter and nothing is answered: the caller's usual
        path takes them with their descriptors. Otherwise the splitter has them and the pass
        ran (answered, held and failed as answer() leaves them), and `sent` bytes of `out`
        went (the caller sends the rest, and answers a failed call). Raises the receive's
        OSError (BlockingIOError when nothing is there), the splitter's view released."""
        cdef Py_buffer view
        cdef msghdr message
        cdef iovec vector
        cdef char control[CONTROL_BYTES]
        cdef cmsghdr* header
        cdef Py_ssize_t received, count, i, sent = 0, wrote, size
        cdef int* descriptors
        cdef list fds = None
        cdef bint truncated
        cdef int error
        cdef int fd = sock.fileno()
        buffer = splitter.get_buffer(offer)
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        memset(&message, 0, sizeof(message))
        vector.iov_base = view.buf
        vector.iov_len = view.len
        message.msg_iov = &vector
        message.msg_iovlen = 1
        message.msg_control = control
        message.msg_controllen = CMSG_SPACE(MAX_FDS * sizeof(int))
        while True:
            received = recvmsg(fd, &message, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)
            error = errno  # now: the buffer's release below may run code that changes it
            if received >= 0 or error != EINTR:
                break
        PyBuffer_Release(&view)
        if received < 0:
            splitter.buffer_updated(0)  # the view released
            if error == EAGAIN:  # (EWOULDBLOCK on Linux)
                raise BlockingIOError(error, "recvmsg: nothing to receive")
            raise OSError(error, strerror(error))
        truncated = (message.msg_flags & MSG_CTRUNC) != 0
        if message.msg_controllen:
            fds = []
            header = CMSG_FIRSTHDR(&message)
            while header != NULL:
                if header.cmsg_level == SOL_SOCKET and header.cmsg_type == SCM_RIGHTS:
                    count = (header.cmsg_len - CMSG_LEN(0)) // sizeof(int)
                    descriptors = <int*>CMSG_DATA(header)
                    for i in range(count):
                        fds.append(descriptors[i])
                header = CMSG_NXTHDR(&message, header)
        if fds or truncated or not received:
            # Not this path's: the caller announces the bytes with their descriptors (or
            # sees the end of the stream).
            return received, tuple(fds or ()), truncated, 0, 0
        splitter.buffer_updated(received)
        answered = self.answer(splitter, turn, out, now)
        size = PyByteArray_GET_SIZE(out)
        if answered and self.failed is None:
            while sent < size:
                wrote = send(fd, PyByteArray_AS_STRING(out) + sent, size - sent,
                             MSG_DONTWAIT | MSG_NOSIGNAL)
                if wrote < 0:
                    if errno == EINTR:
                        continue
                    break  # the caller's send sees the error, or waits to write the rest
                sent += wrote
        return received, (), False, answered, sent
