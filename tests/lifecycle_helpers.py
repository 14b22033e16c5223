"""A model repository for tests: signed packages of versions that answer differently
(model_builder.offset_model: y = x + offset), copied in as the docs say (written elsewhere on
the same file system, then renamed in)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from package_cases import Signer

from edge_agent.packaging import packages
from edge_agent.tools import model_builder

X = np.zeros((1, 4), np.float32)


class Lab:
    """A signer, a repository, and where packages are written before they are moved in."""

    def __init__(self, root: Path):
        self.root = root
        self.signer = Signer(root / "keys")
        self.repository = root / "repository"
        self.repository.mkdir(mode=0o755)
        os.chmod(self.repository, 0o755)
        self.outgoing = root / "outgoing"
        self.outgoing.mkdir()
        self._count = 0

    def settings(self, **overrides) -> dict:
        return {"edge_agent_model_repository": str(self.repository),
                "sagemaker_edge_core_root_certs_path": str(self.signer.trust),
                "edge_agent_model_repository_poll_seconds": 3600.0,  # tests rescan
                **overrides}

    def build(self, name: str, version: str, offset: float | None = None, *,
              archive: bool = False, model: model_builder.BuiltModel | None = None,
              key: str | None = None, target: packages.Target | str | None = None,
              expected: np.ndarray | None = None) -> Path:
        """A signed package in the outgoing folder (not yet in the repository); with
        `expected`, a test vector: input X, that expected output."""
        self._count += 1
        vectors: dict = {}
        if expected is not None:
            np.save(self.outgoing / f"x-{self._count}.npy", X)
            np.save(self.outgoing / f"y-{self._count}.npy", expected)
            vectors = {"test_inputs": [str(self.outgoing / f"x-{self._count}.npy")],
                       "test_outputs": [str(self.outgoing / f"y-{self._count}.npy")]}
        if model is None:
            model = model_builder.offset_model(float(version.split(".")[0]) if offset is None
                                               else offset)
        out = self.outgoing / f"{name}-{version}-{self._count}{'.tar.gz' if archive else ''}"
        packages.build_package(model.content, name, version, target or packages.Target.host(),
                               key or self.signer.key_path, str(out), **vectors)
        return out

    def move_in(self, package: Path, name: str, file_name: str | None = None) -> Path:
        folder = self.repository / name
        folder.mkdir(mode=0o755, exist_ok=True)
        os.chmod(folder, 0o755)
        target = folder / (file_name or package.name)
        os.rename(package, target)
        return target

    def publish(self, name: str, version: str, offset: float | None = None, **kwargs) -> Path:
        return self.move_in(self.build(name, version, offset, **kwargs), name)

    def crashing_package(self, name: str, version: str, content: bytes) -> Path:
        """A signed package whose model file is `content` (bytes the runtime crashes on):
        built around a good model, then the file swapped and the manifest signed again."""
        out = self.build(name, version, model=model_builder.add_model())
        model_file = out / f"{name}.tflite"
        model_file.write_bytes(content)
        manifest = json.loads((out / packages.MANIFEST_NAME).read_text())
        manifest["files"][f"{name}.tflite"] = {"sha256": packages.sha256_hex(content),
                                               "size": len(content)}
        data = (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()
        (out / packages.MANIFEST_NAME).write_bytes(data)
        (out / packages.SIGNATURE_NAME).write_bytes(
            packages.signature_bytes(self.signer.key, data))
        return out

    def clear(self, name: str) -> None:
        shutil.rmtree(self.repository / name)


def offset_of(outputs: dict) -> float:
    """Which version answered: every element of y is x + offset, with x zero; one call
    answered by two versions would mix offsets."""
    y = outputs["y"]
    values = set(np.asarray(y).ravel().tolist())
    assert len(values) == 1, f"a reply mixes versions: {y}"
    return values.pop()


def states(client) -> dict:
    return {m.name: m for m in client.model_states()}
