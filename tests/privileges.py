"""Run code as another user, keeping chosen capabilities: the agent as its own unprivileged
user (as the systemd unit runs it), a client as a user that is not the agent's.

Forked children rather than setpriv + exec: another user cannot execute this machine's Python
when it lives under /root, and a forked child needs nothing it cannot already reach."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

NOBODY = 65534
CAP_IPC_OWNER = 15
_PR_SET_KEEPCAPS = 8
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def reachable_by_others(*paths: str) -> str | None:
    """None if a user in no group of the owners can read every path (its directories searched
    on the way); else the first path that user cannot reach. The tests that run this Python,
    the installed packages or the checkout as another user need it (a checkout under /root
    is not)."""
    for path in paths:
        current = os.path.realpath(path)
        chain = [current]
        while current != os.path.dirname(current):
            current = os.path.dirname(current)
            chain.append(current)
        for i, step in enumerate(chain):
            mode = os.stat(step).st_mode
            need = 0o005 if i or os.path.isdir(step) else 0o004  # x to pass, r to read
            if mode & need != need:
                return step
    return None


def project_unreachable_reason() -> str | None:
    """Why a forked child that became another user cannot go on importing the agent's lazy
    modules (None if it can): the edge_agent package and the installed dependencies must be
    readable by others (a checkout or a venv under /root is not)."""
    import edge_agent
    import google.protobuf
    import numpy

    blocked = reachable_by_others(*(os.path.dirname(m.__file__)
                                    for m in (edge_agent, google.protobuf, numpy)))
    if blocked is None:
        return None
    return f"another user cannot reach {blocked}, so it cannot run the agent from here"


def become(uid: int, gid: int, groups: tuple[int, ...] = (), capabilities: tuple[int, ...] = ()):
    """Switch this (forked) process to uid/gid with exactly `capabilities` effective."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)
    data = (_CapData * 2)()
    for cap in capabilities:
        data[cap // 32].effective |= 1 << (cap % 32)
        data[cap // 32].permitted |= 1 << (cap % 32)
    if libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def fork_as(uid: int, gid: int, run: Callable[[], int], log_path: str,
            capabilities: tuple[int, ...] = (), preload: Callable[[], object] = lambda: None) -> int:
    """Fork a child that becomes uid/gid (with `capabilities`), sends its output to log_path
    and exits with run()'s return value: → its pid. preload() runs before the switch: it
    imports what the child needs from places the other user cannot read."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)  # pytest's handlers are not the child's
        preload()
        become(uid, gid, capabilities=capabilities)
        code = run()
    except BaseException as e:  # reported through the log; the parent fails the test
        print(f"child failed: {e!r}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


class PublicPython:
    """A Python that another user may execute, with the agent and its dependencies importable:
    this interpreter itself when every part of it is reachable by others; else a copy of the
    interpreter, its standard library, the environment's installed packages and the
    checkout's edge_agent package (with its compiled modules) in a public directory, made once
    per test session. So the tests that run the agent or a client as another user run
    wherever the checkout and the interpreter live (a clone or a pyenv under /root too).

    command: what to run instead of sys.executable; env: the environment it needs."""

    # Installed packages no other user's process imports (build and lint tools): not copied.
    SKIPPED = ("pip", "setuptools", "mypy", "ruff", "Cython", "atheris", "hypothesis",
               "_pytest", "pytest", "pygments", "grpc_tools", "mypyc", "__pycache__")

    def __init__(self, root: str | None):
        self.root = root
        if root is None:
            self.command, self.env = [sys.executable], {}
            return
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        self.command = [os.path.join(root, "bin", version)]
        self.env = {"PYTHONHOME": root, "PYTHONNOUSERSITE": "1",
                    "PYTHONPATH": os.pathsep.join([os.path.join(root, "src"),
                                                   os.path.join(root, "site")]),
                    "LD_LIBRARY_PATH": os.path.join(root, "lib")}

    @classmethod
    def make(cls, directory: str) -> "PublicPython":
        import site
        import sysconfig

        import edge_agent

        package = os.path.dirname(os.path.abspath(edge_agent.__file__))
        site_dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
        if reachable_by_others(os.path.realpath(sys.executable), sysconfig.get_paths()["stdlib"],
                               package, *site_dirs) is None:
            return cls(None)
        import shutil

        root = os.path.join(directory, "python")
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        stdlib = sysconfig.get_paths()["stdlib"]
        ignore_stdlib = shutil.ignore_patterns("site-packages", "test", "config-*", "idlelib",
                                               "tkinter", "ensurepip", "lib2to3")
        shutil.copytree(stdlib, os.path.join(root, "lib", version), ignore=ignore_stdlib,
                        symlinks=True)
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy2(os.path.realpath(sys.executable), os.path.join(root, "bin", version))
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        library = sysconfig.get_config_var("INSTSONAME") or ""
        if library and os.path.exists(os.path.join(libdir, library)):
            shutil.copy2(os.path.join(libdir, library), os.path.join(root, "lib", library))
        skipped = shutil.ignore_patterns(*cls.SKIPPED, "__editable__*", "edge_agent*",
                                         "*.dist-info")
        for source in site_dirs:
            shutil.copytree(source, os.path.join(root, "site"), ignore=skipped, symlinks=True,
                            dirs_exist_ok=True)
        shutil.copytree(package, os.path.join(root, "src", "edge_agent"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        boards = os.path.join(os.path.dirname(package), "firmware_configs")
        if os.path.isdir(boards):  # where a checkout's edge_agent.platform.boards finds them
            shutil.copytree(boards, os.path.join(root, "src", "firmware_configs"))
        for current, _dirs, files in os.walk(directory):
            os.chmod(current, 0o755)
            for name in files:
                path = os.path.join(current, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | 0o444)
        return cls(root)
