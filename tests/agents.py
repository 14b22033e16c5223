"""The agents the tests start, and helpers several test levels share (imported by name:
`from agents import AgentProcess`; conftest.py modules are not importable by name, each
level has its own).

- AgentProcess: `edge-agent serve` in a process of its own (tests/e2e, where the process is
  the point: signals, exit codes, privileges, crash isolation, the agent's own resources);
- AgentInThread: the composed agent (edge_agent.app.root.App) in threads of the test process
  (tests/integration), the same configuration file through the same loader.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge_agent.client import AgentClient

ROOT = Path(__file__).resolve().parent.parent


def agent_settings(workdir: Path, overrides: dict | None = None) -> dict:
    """The configuration every test agent starts from (in a process, in a thread, in process):
    its socket, state and captures in its own work directory, unsigned models allowed, one
    thread per interpreter; `overrides` on top."""
    settings = {
        "edge_agent_socket_path": str(workdir / "agent.sock"),
        "edge_agent_state_dir": str(workdir / "state"),
        # Captures of this agent only (the default, /tmp/edge-agent-captures, is shared).
        "sagemaker_edge_core_capture_data_disk_path": str(workdir / "captures"),
        "edge_agent_allow_unsigned_models": True,
        "edge_agent_num_threads": 1,
    }
    settings.update(overrides or {})
    return settings


class AgentProcess:
    """`edge-agent serve` in its own process, as a board runs it."""

    def __init__(self, workdir: Path, overrides: dict | None = None, config_file: Path | None = None,
                 args: tuple[str, ...] = ()):
        self.workdir = workdir
        self.args = args  # more `serve` arguments (--board NAME...)
        self.socket_path = str(workdir / "agent.sock")
        self.log_path = workdir / "agent.log"
        settings = agent_settings(workdir, overrides)
        self.socket_path = settings["edge_agent_socket_path"]
        self.config_path = config_file or workdir / "agent.json"
        if config_file is None:
            self.config_path.write_text(json.dumps(settings))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "AgentProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            try:
                with AgentClient(self.socket_path) as client:
                    client.list_models()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.process.kill()  # not left running: no fixture will stop it
                    self.process.wait()
                    raise RuntimeError(f"agent did not start:\n{self.log()}")
                time.sleep(0.05)

    def command(self) -> list[str]:
        """What starts the agent (a subclass may start it another way: as another user...)."""
        return [sys.executable, "-m", "edge_agent", "serve", "--config", str(self.config_path),
                *self.args]

    def client(self, **kwargs) -> AgentClient:
        return AgentClient(self.socket_path, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# How long a stopped agent's connection threads may take to see their sockets shut down.
SETTLE_SECONDS = 10.0


def open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir itself used, closed meanwhile
            pass
    return fds


def agent_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("edge-agent")}


class AgentInThread:
    """App on workdir/agent.sock, configured as AgentProcess configures `edge-agent serve`
    (the same JSON file through the same loader), with the same methods the tests use."""

    def __init__(self, workdir: Path, overrides: dict | None = None):
        self.workdir = workdir
        self.log_path = workdir / "agent.log"
        settings = agent_settings(workdir, overrides)
        self.socket_path = settings["edge_agent_socket_path"]
        self.config_path = workdir / "agent.json"
        self.config_path.write_text(json.dumps(settings))
        self.app = None  # an edge_agent.app.root.App while it runs
        self._handler: logging.Handler | None = None
        self._level = logging.NOTSET

    def start(self) -> "AgentInThread":
        from edge_agent.platform import boards
        from edge_agent.app.root import App

        config = boards.load(str(self.config_path), {}, device_tree_model=boards.DEVICE_TREE_MODEL)
        # What the agent logs goes to its own file, as the process's stderr does (cli).
        logger = logging.getLogger("edge_agent")
        self._handler = logging.FileHandler(self.log_path)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._level = logger.level
        logger.setLevel(logging.DEBUG if config.sagemaker_edge_log_verbose else logging.INFO)
        logger.addHandler(self._handler)
        try:
            self.app = App(config, config_source=f"configuration {self.config_path}").start()
        except BaseException:
            self._detach_log()
            raise
        with self.client() as client:  # it answers, as AgentProcess.start waits for
            client.list_models()
        return self

    def client(self, **kwargs) -> AgentClient:
        return AgentClient(self.socket_path, **kwargs)

    def log(self) -> str:
        if self._handler is not None:
            self._handler.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        """Still serving: the framed front's accept loop runs (an agent in a thread cannot
        die as a process can; what would kill a process fails the test through the log)."""
        return self.app is not None and self.app.serving

    def rss_kb(self) -> int:
        """The resident memory of the process the agent runs in (this one)."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        """Stop gracefully, as SIGTERM does; 0, as the process's exit status would be."""
        if self.app is not None:
            self.app.stop()
            self.app = None
            self._detach_log()
        return 0

    def _detach_log(self) -> None:
        logger = logging.getLogger("edge_agent")
        logger.removeHandler(self._handler)
        logger.setLevel(self._level)
        self._handler.close()


def assert_nothing_left(fds_before: dict[int, str], threads_before: set) -> None:
    """After every agent of a test stopped: no thread of an agent runs, no descriptor it
    opened is open (connection threads end once they see their sockets shut down)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        gc.collect()  # sockets of clients the test dropped, held only by a cycle
        threads = agent_threads() - threads_before
        # Pipes are left out: the agent opens none that outlive a call (the model check's
        # are closed when it returns), while tests hold their own subprocesses' pipes in
        # fixtures that end after the agent's.
        fds = {fd: target for fd, target in open_fds().items()
               if fds_before.get(fd) != target and not target.startswith("pipe:")}
        if not threads and not fds:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not threads, f"threads left running by the agent: {sorted(t.name for t in threads)}"
    assert not fds, f"descriptors left open after the agent stopped: {fds}"


@contextlib.contextmanager
def public_directory(prefix: str = "edge-agent-test-"):
    """A directory every user may search and read (tmp_path lies in a 0700 tree), removed
    afterwards: for what another user must reach."""
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        os.chmod(directory, 0o755)
        yield Path(directory)
