"""Telling systemd how the agent is doing (sd_notify), without libsystemd.

Under a `Type=notify` unit systemd passes NOTIFY_SOCKET, a datagram socket (a path, or an
abstract name written with a leading '@'), and with `WatchdogSec=` also WATCHDOG_USEC. The
agent sends READY=1 once it serves, WATCHDOG=1 every WATCHDOG_USEC/2 while its serve loop
answers a real request on its own socket, and STOPPING=1 when it shuts down. Nothing is
sent when NOTIFY_SOCKET is not set, so the same agent runs anywhere.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping

from edge_agent.errors import AgentError, StatusCode

log = logging.getLogger(__name__)


def _address(notify_socket: str) -> str | None:
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]  # Linux's abstract namespace
    if notify_socket.startswith("/"):
        return notify_socket
    return None  # systemd's vsock: form; not used on the boards this agent runs on


def notify(message: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send one notification ("READY=1", ...); False when there is nowhere to send it."""
    notify_socket = env.get("NOTIFY_SOCKET", "")
    if not notify_socket:
        return False
    address = _address(notify_socket)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s is not a UNIX socket address; systemd is not notified",
                    notify_socket)
        return False
    try:  # the socket too: out of descriptors (EMFILE) for a moment, the next ping succeeds
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", notify_socket, e)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between two WATCHDOG=1: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises; None when systemd expects none from this process (WATCHDOG_PID names another)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0"))
    except ValueError:
        return None
    if usec <= 0 or (pid and pid != os.getpid()):
        return None
    return usec / 2e6


def agent_answers(socket_path: str, timeout: float) -> bool:
    """Whether the agent on `socket_path` answers a ListModels within `timeout` seconds: the
    accept loop, a connection thread and the service all work. Any reply counts, a refusal
    for too many clients too: it comes from the serve loop."""
    from edge_agent.client import AgentClient  # the agent has it loaded by now

    try:
        with AgentClient(socket_path, timeout=timeout) as client:
            client.list_models()
    except AgentError as e:  # unreachable or silent: unhealthy; any answer: the loop works
        # INTERNAL is also what the client says of a reply it cannot read (a garbled stream).
        return e.code not in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED,
                              StatusCode.INTERNAL)
    except Exception:  # timed out, or a garbled reply: not healthy, and the watchdog lives on
        return False
    return True


class Watchdog:
    """A thread sending WATCHDOG=1 every `interval` seconds while `healthy()` says so. A hung
    agent stops them, and systemd restarts it after WatchdogSec."""

    def __init__(self, interval: float, healthy: Callable[[], bool],
                 send: Callable[[str], bool] = notify):
        self.interval = interval
        self._healthy = healthy
        self._send = send
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-agent-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # Pings keep to a fixed schedule, however long each health check took.
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += self.interval
            if self._healthy():
                self._send("WATCHDOG=1")
            elif not self._stop.is_set():
                log.warning("the agent did not answer its own health check; systemd's "
                            "watchdog is not fed")


class Notifier:
    """The agent's notifications over its life: ready(), then stopping()."""

    def __init__(self, env: Mapping[str, str] = os.environ):
        self._env = env
        self._watchdog: Watchdog | None = None
        self._stopping = False

    def ready(self, socket_path: str,
              every: Callable[[float, Callable[[], None]], None] | None = None) -> None:
        """READY=1, and WATCHDOG=1 every half WatchdogSec when systemd asks for it: from
        `every(interval, ping)` (the agent's event loop: a stuck loop stops the pings), else
        from a thread of its own that checks the agent answers on socket_path."""
        if not notify(f"READY=1\nSTATUS=serving on {socket_path}", self._env):
            return
        interval = watchdog_interval(self._env)
        if interval is not None and every is not None:
            every(interval, self._ping)
            log.info("systemd watchdog: notifying every %.1f s", interval)
        elif interval is not None:
            self._watchdog = Watchdog(
                # Half the interval: a slow answer still leaves time to ping before WatchdogSec.
                interval, lambda: agent_answers(socket_path, timeout=interval / 2),
                lambda message: notify(message, self._env)).start()
            log.info("systemd watchdog: notifying every %.1f s", interval)

    def _ping(self) -> None:
        if not self._stopping:
            notify("WATCHDOG=1", self._env)

    def stopping(self) -> None:
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.stop()
        notify("STOPPING=1", self._env)
