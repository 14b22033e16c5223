"""Signed test packages, the ways to tamper with one, and hostile archives.

Shared by test_packages.py (the library) and test_package_loading.py (a real agent), so both
exercise exactly the same attacks.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
from nacl.signing import SigningKey

from edge_agent.packaging import packages
from edge_agent.packaging.keys import generate_key, read_private_key
from edge_agent.tools import model_builder

MARKER = "ESCAPED"  # the name every hostile archive tries to write outside its directory
LABELS = b"cat\ndog\nbird\n"


class Signer:
    """A key pair on disk, its trust folder, and a second key nobody trusts."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.key_path = str(directory / "signer.key")
        generate_key(self.key_path)
        self.trust = directory / "trust"
        self.trust.mkdir(mode=0o755)
        os.chmod(self.trust, 0o755)
        (self.trust / "signer.pub").write_bytes(Path(self.key_path + ".pub").read_bytes())
        self.key = read_private_key(self.key_path)
        self.stranger = SigningKey.generate()

    def package(self, out: Path, *, target: packages.Target | str | None = None,
                model: model_builder.BuiltModel | None = None, labels: bool = True) -> Path:
        model = model or model_builder.demo_model()
        extra = []
        if labels:
            source = out.parent / f"{out.name}.src"
            source.mkdir(exist_ok=True)
            (source / "labels.txt").write_bytes(LABELS)
            extra = [str(source / "labels.txt")]
        packages.build_package(model.content, "demo", "1.0.0", target or packages.Target.host(),
                               self.key_path, str(out), extra_files=extra,
                               model_file="demo.tflite")
        return out


def vectors_package(signer: Signer, out: Path, model: model_builder.BuiltModel | bytes,
                    inputs: list[np.ndarray], outputs: list[np.ndarray], *,
                    name: str = "demo", version: str = "1.0.0", atol: float | None = None,
                    rtol: float | None = None) -> Path:
    """A package of `model` signed by `signer`, with the test vectors `inputs` and expected
    `outputs` (arrays, in the model's order) written as .npy files and packaged."""
    source = out.parent / f"{out.name}.vectors"
    source.mkdir()
    paths = {}
    for role, arrays in (("input", inputs), ("output", outputs)):
        paths[role] = []
        for i, array in enumerate(arrays):
            path = source / f"{role}{i}.npy"
            np.save(path, array, allow_pickle=False)
            paths[role].append(str(path))
    content = model if isinstance(model, bytes) else model.content
    packages.build_package(content, name, version, packages.Target.host(), signer.key_path,
                           str(out), model_file=f"{name}.tflite", test_inputs=paths["input"],
                           test_outputs=paths["output"], atol=atol, rtol=rtol)
    return out


def resign_manifest(directory: Path, key: SigningKey, change: Callable[[dict], None]) -> None:
    """Edit a directory package's manifest with `change` and sign it again with `key`."""
    manifest = json.loads((directory / packages.MANIFEST_NAME).read_bytes())
    change(manifest)
    _resign(directory, json.dumps(manifest, sort_keys=True, indent=2).encode() + b"\n", key)


# --- tampering with a directory package -----------------------------------------------------
# Each takes (package dir, signer) and returns a phrase the refusal must contain.

def _resign(directory: Path, manifest: bytes, key: SigningKey, key_id: str | None = None) -> None:
    (directory / packages.MANIFEST_NAME).write_bytes(manifest)
    signature = json.loads(packages.signature_bytes(key, manifest))
    if key_id is not None:
        signature["key_id"] = key_id
    (directory / packages.SIGNATURE_NAME).write_text(json.dumps(signature))


def flip_model_byte(d: Path, signer: Signer) -> str:
    model = d / "demo.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    return "sha256 of 'demo.tflite'"


def grow_model(d: Path, signer: Signer) -> str:
    with open(d / "demo.tflite", "ab") as f:
        f.write(b"\0")
    return "the signed manifest says"


def edit_manifest(d: Path, signer: Signer) -> str:
    path = d / packages.MANIFEST_NAME
    path.write_bytes(path.read_bytes().replace(b'"version": "1.0.0"', b'"version": "1.0.1"'))
    return "signature does not match"


def stranger_signature(d: Path, signer: Signer) -> str:
    _resign(d, (d / packages.MANIFEST_NAME).read_bytes(), signer.stranger)
    return "not trusted"


def stranger_signature_claiming_trusted_key(d: Path, signer: Signer) -> str:
    trusted_id = json.loads((d / packages.SIGNATURE_NAME).read_text())["key_id"]
    _resign(d, (d / packages.MANIFEST_NAME).read_bytes(), signer.stranger, key_id=trusted_id)
    return "signature does not match"


def drop_file(d: Path, signer: Signer) -> str:
    (d / "labels.txt").unlink()
    return "missing: labels.txt"


def add_file(d: Path, signer: Signer) -> str:
    (d / "extra.bin").write_bytes(b"not in the manifest")
    return "not listed in the signed manifest"


def drop_signature(d: Path, signer: Signer) -> str:
    (d / packages.SIGNATURE_NAME).unlink()
    return "has no manifest.sig"


def signed_garbage_manifest(d: Path, signer: Signer) -> str:
    _resign(d, b"{this is not json", signer.key)
    return "does not parse"


TAMPERING: dict[str, Callable[[Path, Signer], str]] = {
    f.__name__: f for f in (flip_model_byte, grow_model, edit_manifest, stranger_signature,
                            stranger_signature_claiming_trusted_key, drop_file, add_file,
                            drop_signature, signed_garbage_manifest)}


def pack(directory: Path, out: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    """`tar czf out -C directory .`, then the `extra` members (hostile ones) appended."""
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


# --- hostile archives -----------------------------------------------------------------------
# Each takes (valid package dir, a directory outside the unpack dir) and returns the members
# to append and a phrase the refusal must contain.

def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
            size: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if size is None else size
    return info, (data if info.isreg() else None)


def traversal(outside: Path):
    return [_member(f"../../../../{MARKER}", data=b"x")], "not a plain relative path"


def nested_traversal(outside: Path):
    return [_member(f"sub/../../{MARKER}", data=b"x")], "not a plain relative path"


def absolute_path(outside: Path):
    return [_member(str(outside / MARKER), data=b"x")], "absolute path"


def symlink_out(outside: Path):
    return [_member("out", tarfile.SYMTYPE, linkname=str(outside)),
            _member(f"out/{MARKER}", data=b"x")], "symbolic link"


def hard_link(outside: Path):
    return [_member(MARKER, tarfile.LNKTYPE, linkname="/etc/passwd")], "hard link"


def device(outside: Path):
    info, _ = _member(MARKER, tarfile.CHRTYPE)
    info.devmajor, info.devminor = 1, 3
    return [(info, None)], "a device"


def fifo(outside: Path):
    return [_member(MARKER, tarfile.FIFOTYPE)], "a FIFO"


BOMB_LIMIT = 1024 * 1024  # edge_agent_max_package_bytes the bomb cases run with


def bomb(outside: Path):
    # 64 MiB of zeros: about 64 KiB compressed.
    return [_member(MARKER, data=bytes(64 * BOMB_LIMIT))], "edge_agent_max_package_bytes"


def too_many_files(outside: Path):
    return ([_member(f"f{i}.txt", data=b"x") for i in range(100)],
            "edge_agent_max_package_files")


def huge_extended_header(outside: Path):
    info, data = _member(MARKER, data=b"x")
    info.pax_headers = {"comment": "x" * (1024 * 1024)}
    return [(info, data)], "extended header"


def duplicate_member(outside: Path):
    return [_member("labels.txt", data=b"second copy")], "appears more than once"


HOSTILE: dict[str, Callable[[Path], tuple[list, str]]] = {
    f.__name__: f for f in (traversal, nested_traversal, absolute_path, symlink_out, hard_link,
                            device, fifo, bomb, too_many_files, huge_extended_header,
                            duplicate_member)}


def escaped(root: Path) -> list[Path]:
    """Files a hostile archive managed to create anywhere under `root`."""
    return [p for p in root.rglob(MARKER)]
