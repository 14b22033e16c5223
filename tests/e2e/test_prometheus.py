"""A real Prometheus server (Debian's `prometheus`) scraping the agent's listener on 127.0.0.1:
its HTTP API answers queries on the agent's metrics with the values of the calls made."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import AgentError

from capture_helpers import wait_for

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus server (Debian's "
                                "`prometheus` package; make system-deps installs it)")
ADD_INPUTS = {"a": np.ones((1, 4), np.float32), "b": np.full((1, 4), 2, np.float32)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A server whose only job scrapes `target` every second, storage in `directory`."""

    def __init__(self, directory: Path, target: str):
        self.port = free_port()
        config = directory / "prometheus.yml"
        # The fleet example of docs/METRICS.md, with one device and a short interval.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "edge-agent", "static_configs": [
                {"targets": [target], "labels": {"device": "dev-1"}}]}]}))
        self.log = directory / "prometheus.log"
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, cwd=directory)

    def query(self, expression: str) -> list[dict]:
        assert self.process.poll() is None, self.log.read_text()
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expression}))
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                answer = json.load(reply)
        except OSError:
            return []  # not up yet
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_prometheus_scrapes_the_agent_and_answers_queries(start_agent, model_files, tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    agent = start_agent(edge_agent_metrics_listen=listen, sagemaker_edge_core_device_name="dev-1")
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))
        for _ in range(4):
            client.predict("add", ADD_INPUTS)
        with pytest.raises(AgentError):
            client.predict("add", [np.ones((1, 2), np.float32)] * 2)
    directory = tmp_path / "prometheus"
    directory.mkdir()
    prometheus = Prometheus(directory, listen)
    try:
        ok = 'edge_agent_predictions_total{job="edge-agent",model="add",code="OK"}'
        # Bounded polling until the first scrapes are stored; the values are then exact.
        wait_for(lambda: prometheus.value(ok) == 4, timeout=120, interval=0.5,
                 what=f"Prometheus to answer {ok} = 4")
        assert prometheus.value('edge_agent_predictions_total{code="INVALID_ARGUMENT"}') == 1
        assert prometheus.value('edge_agent_predict_seconds_bucket{model="add",le="+Inf"}') == 4
        assert prometheus.value('edge_agent_calls_total{rpc="LoadModel",code="OK"}') == 1
        [info] = prometheus.query('edge_agent_model_info{model="add"}')
        assert info["metric"]["device"] == "dev-1" and info["metric"]["delegate"]
        assert prometheus.value('up{job="edge-agent"}') == 1
    finally:
        prometheus.stop()
    assert agent.alive()
