"""Waking the manager when the repository changes: inotify (through libc, no library) where
the kernel has it, else only the poll period; and a pipe that wakes it at once (a rescan, an
application's unload, stop).

Only whether something changed matters, never what: the manager scans the repository after
any event, so a lost or merged event costs at most one poll period.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import threading

log = logging.getLogger(__name__)

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# What makes a package appear, change or go: IN_CLOSE_WRITE, IN_ATTRIB, IN_MOVED_FROM,
# IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF.
_MASK = 0x008 | 0x004 | 0x040 | 0x080 | 0x100 | 0x200 | 0x400 | 0x800


class Waker:
    """wait(timeout) returns when the watched folders changed, wake() was called, or the
    timeout passed."""

    def __init__(self, use_inotify: bool = True):
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closing = threading.Lock()  # a wake() never writes to a descriptor closed
        self._inotify = -1
        self._libc = None
        if use_inotify:
            try:
                libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc: no ldconfig run
                fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            except (OSError, AttributeError):
                fd = -1
            if fd >= 0:
                self._inotify, self._libc = fd, libc
            else:
                log.info("inotify is not available: the model repository is polled only")

    @property
    def notified(self) -> bool:
        """Whether folder changes wake it (inotify), rather than the poll period only."""
        return self._inotify >= 0

    def watch(self, paths) -> None:
        """Watch these folders (again: a folder watched already keeps its one watch, one
        removed and made again gets a new one)."""
        if self._libc is None:
            return
        for path in paths:
            self._libc.inotify_add_watch(self._inotify, os.fsencode(path), _MASK)

    def wake(self) -> None:
        with self._closing:
            if self._write < 0:
                return  # closed: stopped
            try:
                os.write(self._write, b"!")
            except BlockingIOError:  # full: a wake-up is pending anyway
                pass

    def wait(self, timeout: float) -> None:
        readable = [self._read] + ([self._inotify] if self._inotify >= 0 else [])
        ready, _, _ = select.select(readable, [], [], timeout)
        for fd in ready:
            try:
                while os.read(fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        with self._closing:
            for fd in (self._read, self._write, self._inotify):
                if fd >= 0:
                    os.close(fd)
            self._read = self._write = self._inotify = -1
