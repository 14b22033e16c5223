"""A fleet for tests: signed packages uploaded to the real SeaweedFS of tests/s3server.py,
deployment documents signed with a deployment key (apart from the packaging key), and the
settings of one board of the fleet."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from lifecycle_helpers import Lab
from s3server import ACCESS_KEY, BUCKET, REGION, SECRET_KEY

from edge_agent.fleet import document as d
from edge_agent.packaging.keys import generate_key, read_private_key

FLEET = "plant"


class Fleet:
    def __init__(self, root: Path, s3, prefix: str):
        self.root = root
        self.s3 = s3
        self.prefix = prefix
        self.client = s3.client()
        self.lab = Lab(root / "lab")
        keys = root / "deploy-keys"
        keys.mkdir(mode=0o755)
        self.key_path = str(keys / "deploy.key")
        generate_key(self.key_path)
        self.key = read_private_key(self.key_path)
        self.trust = keys / "trust"
        self.trust.mkdir(mode=0o755)
        os.chmod(self.trust, 0o755)
        (self.trust / "deploy.pub").write_bytes(Path(self.key_path + ".pub").read_bytes())
        self.sequence = 0
        self.packages: dict[tuple[str, str], d.Package] = {}

    @property
    def url(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    def settings(self, device: str, **overrides) -> dict:
        repository = self.root / f"repository-{device}"
        repository.mkdir(mode=0o755, exist_ok=True)
        os.chmod(repository, 0o755)
        return {**self.lab.settings(edge_agent_model_repository=str(repository)),
                "edge_agent_deployment_url": self.url,
                "edge_agent_deployment_trust": str(self.trust),
                "edge_agent_deployment_poll_seconds": 0.3,
                "edge_agent_deployment_poll_jitter_seconds": 0.0,
                "sagemaker_edge_core_device_name": device,
                "sagemaker_edge_core_device_fleet_name": FLEET,
                "sagemaker_edge_core_region": REGION,
                "edge_agent_s3_endpoint_url": self.s3.endpoint,
                "edge_agent_s3_addressing_style": "path",
                "edge_agent_s3_access_key_id": ACCESS_KEY,
                "edge_agent_s3_secret_access_key": SECRET_KEY,
                **overrides}

    def upload(self, name: str, version: str, **build) -> d.Package:
        """A signed package (y = x + major version, unless `offset`) in the bucket."""
        path = self.lab.build(name, version, archive=True, **build)
        data = path.read_bytes()
        key = f"packages/{name}/{version}.tar.gz"
        self.client.put_object(f"{self.prefix}/{key}", data)
        package = d.Package(key, hashlib.sha256(data).hexdigest(), version, len(data))
        self.packages[(name, version)] = package
        return package

    def document(self, baseline: dict, stages=(), **changes) -> d.Document:
        self.sequence += 1
        values = dict(fleet=FLEET, sequence=self.sequence, expires=int(time.time()) + 3600,
                      baseline=baseline, stages=tuple(stages), created_at=d.format_time(time.time()))
        values.update(changes)
        return d.Document(**values)

    def put(self, document: d.Document, key=None, data: bytes | None = None) -> bytes:
        data = data if data is not None else d.sign(document, key or self.key)
        where = f"devices/{document.device}" if document.device else f"fleets/{document.fleet}"
        self.client.put_object(f"{self.prefix}/{where}/deployment.json", data)
        return data

    def status(self, device: str) -> dict | None:
        try:
            return json.loads(self.client.get_object(f"{self.prefix}/status/{FLEET}/{device}.json"))
        except Exception:
            return None
