"""Evidence for cross/qemu_plugin.py's _FD_TRUNCATION: run natively and under qemu-user
(`chroot ROOTFS /usr/bin/python3 fd-truncation-probe.py`). 20 descriptors are sent with one
message and received with room for 16: natively MSG_CTRUNC is set and 16 descriptors are
new; under qemu-user 7.2, MSG_CTRUNC is clear and all 20 are open (4 of them unknown to the
program)."""
import array
import os
import socket


def open_fds() -> set[int]:
    found = set()
    for fd in range(256):  # no /proc/self/fd needed in a bare chroot
        try:
            os.fstat(fd)
            found.add(fd)
        except OSError:
            pass
    return found


a, b = socket.socketpair()
sent = [os.open("/dev/null", os.O_RDONLY) for _ in range(20)]
a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", sent))])
for fd in sent:
    os.close(fd)
before = open_fds()
_, ancillary, flags, _ = b.recvmsg(1, socket.CMSG_SPACE(16 * 4))
received = sum(len(data) // 4 for _, _, data in ancillary)
print("MSG_CTRUNC", bool(flags & socket.MSG_CTRUNC), "received", received,
      "new descriptors", len(open_fds() - before))
