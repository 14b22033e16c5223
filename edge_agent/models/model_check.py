"""Proving model bytes in a process of their own before the agent's runtime sees them.

The runtime trusts the bytes it is given: a corrupt .tflite file can crash it (SIGSEGV), make
it allocate without bound, or loop. So every load first hands exactly the bytes the agent will
load (in a sealed memfd, never a path: a file rewritten meanwhile cannot matter) to a process
made for one check (edge_agent/models/model_check_child.py), with a memory and a time limit; only a model
that process survived is loaded in the agent, and the memory budget reserves what it measured.
A package's test vectors go to the same process in a second sealed memfd: the model runs on
them there, so validation can crash nothing but that process.

How the process is made, the decision (docs/MODEL_LOADING.md):

- **A pre-forked helper.** When the agent starts, before it starts any thread, it forks a
  small helper process (the only other thread then is NumPy's OpenBLAS pool, which stops
  itself around a fork: pthread_atfork), which imports the runtime once and then, for each
  check, forks a child that runs it and is killed at the time limit. The helper is
  single-threaded, so its forks are safe, and a check costs a fork plus the model's own
  work, not a Python start-up. fork() of the
  running agent itself would not be safe: it is multithreaded, and a child may inherit a lock
  another thread held (the runtime's, the allocator's) and hang.
- **A fresh interpreter process** (`python -m edge_agent.models.model_check_child`) where there is no
  helper: the service was made after threads started (in-process use), or the helper died.
  Always safe; it costs a Python start-up per check.

Delegates: the check opens the delegate the agent would (edge_agent_delegate and its keys),
except an Edge TPU, which one process holds at a time (the agent, once a model runs on it):
there CPU models are proven with the runtime's CPU kernels (what runs them under the Edge TPU
delegate too), and a model compiled for the Edge TPU is loaded without a proof.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.models import model_check_child as model_probe# light: its heavy imports happen in the helper
from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError, StatusCode, failed_precondition, resource_exhausted

if TYPE_CHECKING:  # NumPy: loaded only where vectors come
    from edge_agent.packaging.vectors import TestVectors

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Beyond the budget: the runtime's bookkeeping and each thread's stack (counted in
# RLIMIT_DATA) need room even for the smallest model.
_SLACK_BYTES = 32 * MIB
_STACK_BYTES = 8 * MIB
_REPORT_LIMIT = 64 * 1024  # a child's report is one short JSON line
_MESSAGE_LIMIT = 128 * 1024  # a request or a reply between the agent and its helper
_DELEGATE_KEYS = ("edge_agent_delegate", "edge_agent_delegate_options",
                  "edge_agent_delegate_library", "edge_agent_delegate_fallback",
                  "edge_agent_num_threads")
# What a check's outcome depends on beyond the model's bytes (a remembered proof is keyed by
# them too, edge_agent.models.loading).
CHECK_SETTINGS = _DELEGATE_KEYS + ("edge_agent_model_probe_timeout_seconds",)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Proof:
    """What loading the model cost the child: its peak RSS above its baseline."""
    peak_bytes: int
    seconds: float = 0.0


@dataclass(frozen=True)
class _Ending:
    """How a check's process ended: its exit code (negative: the signal), whether it was
    killed at the time limit, and what it reported."""
    status: int
    timed_out: bool
    report: bytes


def holds_edgetpu(config: AgentConfig) -> bool:
    """Whether the configured delegate is an Edge TPU, which the child cannot share."""
    return config.edge_agent_delegate == "edgetpu" or (
        config.edge_agent_delegate == "external"
        and os.path.basename(config.edge_agent_delegate_library).startswith("libedgetpu"))


def _child_settings(config: AgentConfig) -> dict:
    settings = {key: getattr(config, key) for key in _DELEGATE_KEYS}
    if holds_edgetpu(config):
        settings.update(edge_agent_delegate="xnnpack", edge_agent_delegate_library="")
    return settings


def _sealed_memfd(content: bytes, name: str = "edge-agent-model") -> int:
    """A memfd holding `content` that nobody can change any more (F_SEAL_*)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view, written = memoryview(content), 0
        while written < len(view):
            written += os.write(fd, view[written:])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _die_with_parent() -> None:
    """SIGKILL this process when the one that forked it ends (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _outcome(ending: _Ending, what: str, timeout: float, memory_limit: int,
             seconds: float, validating: bool = False) -> Proof:
    """The Proof of a check that ended well; AgentError saying what happened otherwise.
    `validating`: the check ran the model on a package's test vectors too."""
    doing = "reading this model or running it on the package's test inputs" if validating \
        else "reading this model"
    if ending.timed_out:
        raise failed_precondition(
            f"{what}: the runtime did not finish loading and running this model"
            f"{' on its test inputs' if validating else ''} within "
            f"{timeout:g} s (edge_agent_model_probe_timeout_seconds): the file is corrupt, or "
            "the model is too slow for this board")
    if ending.status < 0:
        if -ending.status == signal.SIGKILL:
            raise failed_precondition(
                f"{what}: the runtime was killed (SIGKILL) {doing}, most likely by "
                "the kernel for want of memory: the file is corrupt or the model too large")
        raise failed_precondition(
            f"{what}: the runtime crashed {doing} ({_signal_name(-ending.status)}): "
            "the file is corrupt or was written for another runtime")
    # The report comes from a process that ran untrusted bytes: read it as hostile input.
    try:
        report = json.loads(ending.report[:_REPORT_LIMIT].decode())
        outcome, message = report["outcome"], str(report.get("message", ""))
        if outcome == "ok":
            return Proof(max(0, int(report["peak_bytes"])), seconds)
        code = StatusCode[report.get("code", "FAILED_PRECONDITION")]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise failed_precondition(f"{what}: the model check ended with exit status "
                                  f"{ending.status} and no readable result") from None
    if outcome == "memory":
        raise resource_exhausted(
            f"{what}: loading this model needs more than the {memory_limit / MIB:.1f} MiB "
            "the model memory budget has free (edge_agent_memory_budget_mb): unload a model "
            f"or raise the budget ({message})")
    if code in (StatusCode.OK, StatusCode.INTERNAL):
        code = StatusCode.FAILED_PRECONDITION  # a refusal of the model, whatever it says
    raise AgentError(code, f"{what}: {message or 'the runtime refused the model'}")


# --- a fresh interpreter process per check --------------------------------------------------

def _spawn(fd: int, request: dict, timeout: float, vectors_fd: int | None = None) -> _Ending:
    """`python -m edge_agent.models.model_check_child` on the model in `fd` (and the test vectors in
    `vectors_fd`)."""
    extra = {} if vectors_fd is None else {"vectors_fd": vectors_fd}
    child = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.models.model_check_child",
         json.dumps({**request, "fd": fd, **extra})],
        pass_fds=(fd,) if vectors_fd is None else (fd, vectors_fd), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    try:
        output, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return _Ending(child.returncode, True, b"")
    return _Ending(child.returncode, False, output)


# --- the pre-forked helper ------------------------------------------------------------------

def _run_forked(fd: int, request: dict, channel: socket.socket,
                vectors_fd: int | None = None) -> _Ending:
    """In the helper: fork a child for one check, wait for it at most the time limit."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the check, then out, whatever happens
        code = 1
        try:
            _die_with_parent()
            channel.close()  # the agent must see the helper's end when the helper ends
            os.close(read_end)
            model_probe.check(fd, request, write_end, vectors_fd)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + request["timeout"]
    report, timed_out = b"", False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                break  # the child is ending
            report = (report + chunk)[:_REPORT_LIMIT]
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    return _Ending(os.waitstatus_to_exitcode(status), timed_out, report)


def _helper_main(channel: socket.socket) -> None:
    """The helper's life: one check per request on `channel`, until the agent closes it."""
    _die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # the agent's handlers are not the helper's
    keep = channel.fileno()
    os.closerange(3, keep)  # nothing of the agent's (its sockets, its files) stays open here
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    model_probe.preload()  # once: every child starts with the runtime imported
    while True:
        message, fds, _, _ = socket.recv_fds(channel, _MESSAGE_LIMIT, 2)
        if not message:
            return  # the agent is closing
        try:
            request = json.loads(message)
            ending = _run_forked(fds[0], request, channel, fds[1] if len(fds) > 1 else None)
        finally:
            for fd in fds:
                os.close(fd)
        channel.sendall(json.dumps({"status": ending.status, "timed_out": ending.timed_out,
                                    "report": ending.report.decode("utf-8", "replace")}).encode())


class _Helper:
    """The agent's end of a helper process."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                _helper_main(theirs)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self._channel = ours

    def run(self, fd: int, request: dict, timeout: float,
            vectors_fd: int | None = None) -> _Ending:
        """One check; OSError if the helper is gone or does not answer."""
        # The helper kills the check at `timeout`; more than that is a helper in trouble.
        self._channel.settimeout(timeout + 30)
        socket.send_fds(self._channel, [json.dumps({**request, "timeout": timeout}).encode()],
                        [fd] if vectors_fd is None else [fd, vectors_fd])
        reply = self._channel.recv(_MESSAGE_LIMIT)
        if not reply:
            raise ConnectionError("the model check helper has exited")
        answer = json.loads(reply)
        return _Ending(answer["status"], answer["timed_out"], answer["report"].encode())

    def close(self) -> None:
        self._channel.close()  # the helper's recv sees the end and it exits
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.close()


class Prover:
    """Runs the checks of one AgentService: through its helper while it has one, else in a
    fresh process each. Checks run one at a time (loads are rare; a board has few cores)."""

    def __init__(self, use_helper: bool | None = None):
        """`use_helper`: fork a helper now (True), never (False), or only if this process has
        no other thread yet, which is when a fork is safe (None)."""
        self._lock = threading.Lock()
        self._helper: _Helper | None = None
        if use_helper is None:
            use_helper = threading.active_count() == 1
        if use_helper:
            try:
                self._helper = _Helper()
                log.info("model checks run in a helper process (pid %d)", self._helper.pid)
            except OSError as e:
                log.warning("cannot start the model check helper (%s); each check starts a "
                            "new process instead", e.strerror or e)

    @property
    def has_helper(self) -> bool:
        return self._helper is not None

    def prove(self, content: bytes, config: AgentConfig, what: str, memory_limit: int,
              vectors: TestVectors | None = None) -> Proof:
        """Load, allocate and invoke `content` in a process of its own, allowed `memory_limit`
        bytes beyond its baseline; with `vectors`, run it there on the test inputs too and
        compare its outputs with the expected ones (edge_agent/packaging/vectors.py). The Proof, or
        AgentError: FAILED_PRECONDITION for a model the runtime refused, crashed on or could
        not finish in time, or whose outputs differ from the expected ones by more than the
        tolerance (naming the output and the largest difference), RESOURCE_EXHAUSTED for one
        that needs more memory than it was allowed."""
        timeout = config.edge_agent_model_probe_timeout_seconds
        request = {"limit": max(0, memory_limit) + _SLACK_BYTES
                   + _STACK_BYTES * config.edge_agent_num_threads,
                   "settings": _child_settings(config)}
        fd = _sealed_memfd(content)
        vectors_fd = None
        started = time.monotonic()
        try:
            if vectors is not None:
                vectors_fd = _sealed_memfd(vectors.to_bytes(), "edge-agent-test-vectors")
            with self._lock:
                ending = self._run(fd, request, timeout, vectors_fd)
        finally:
            os.close(fd)
            if vectors_fd is not None:
                os.close(vectors_fd)
        return _outcome(ending, what, timeout, memory_limit, time.monotonic() - started,
                        validating=vectors is not None)

    def _run(self, fd: int, request: dict, timeout: float,
             vectors_fd: int | None = None) -> _Ending:
        helper = self._helper
        if helper is not None:
            try:
                return helper.run(fd, request, timeout, vectors_fd)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                # Gone, hung or garbled: never trusted again.
                log.warning("the model check helper failed (%s); each check starts a new "
                            "process from now on", e)
                self._helper = None
                helper.kill()
        return _spawn(fd, request, timeout, vectors_fd)

    def close(self) -> None:
        with self._lock:
            helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()
