"""edge_agent.platform.systemd in process: the watchdog interval and its feeding, sd_notify
without systemd. (sd_notify to real sockets and the health check against servers that lie or
stay silent: tests/integration/test_systemd_health.py; an agent process telling systemd:
tests/e2e.)"""
from __future__ import annotations

import os
import threading

import pytest

from edge_agent.platform import systemd


def test_without_systemd_nothing_is_sent():
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})


@pytest.mark.parametrize("env, interval", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "soon"}, None), ({}, None),
])
def test_watchdog_interval(env, interval):
    assert systemd.watchdog_interval(env) == interval


def test_the_watchdog_is_fed_only_while_the_agent_is_healthy():
    sent: list[str] = []
    checks = threading.Semaphore(0)
    healthy = [False]

    fed = threading.Event()

    def check() -> bool:
        checks.release()
        return healthy[0]

    def send(message: str) -> bool:
        sent.append(message)
        fed.set()
        return True

    watchdog = systemd.Watchdog(0.001, check, send).start()
    try:
        for _ in range(3):
            checks.acquire()
        assert sent == []  # three failed checks, no notification
        healthy[0] = True
        # Waited for by state, not by counting checks: failed checks may already have released
        # more permits than were taken (a slow machine), and counting them would stop early.
        assert fed.wait(timeout=120)
    finally:
        watchdog.stop()
    assert set(sent) == {"WATCHDOG=1"}


def test_notify_out_of_descriptors_says_false_and_raises_nothing(monkeypatch):
    """(The watchdog's ping runs on the event loop: an exception out of it ended the loop.)"""
    def no_descriptor(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(systemd.socket, "socket", no_descriptor)
    assert not systemd.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "/run/systemd/notify"})
