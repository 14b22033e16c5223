"""Signed model packages (SPEC §5): the manifest, building and signing, verifying, target checks.

A package is a directory, or that directory as a `.tar.gz` (unpacked by archive.py):

    manifest.json   what the package holds; these exact bytes are what is signed
    manifest.sig    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}
    <name>.tflite   the model the agent loads (the manifest's "model"), and any other files
                    the manifest lists, each with its sha256 and size

The manifest is written as canonical JSON (sorted keys, fixed indentation, ASCII) so the same
package content always gives the same bytes; a verifier never re-serialises it: it checks the
signature over the bytes it read, then parses those same bytes. docs/PACKAGES.md is the
reference for people.

Verification reads the model file once into memory and hashes those bytes: what the caller
hands to the interpreter is exactly what was checked, whatever happens to the file meanwhile.
"""
from __future__ import annotations

import base64
import binascii
import errno
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from edge_agent.platform.accelerators import (ACCELERATOR_PROBES, DelegateSettings, accelerator_available,
                                     available_accelerators)
from edge_agent.packaging.archive import Limits, Progress, is_gzip, safe_parts, unpacked
from edge_agent.errors import AgentError, failed_precondition, invalid_argument
from edge_agent.models.model_files import is_bare_model, looks_like_tflite, open_regular  # noqa: F401
from edge_agent.packaging.keys import (ROOT_CERTS_KEY, describe_trust, generate_key, key_id, load_trust,
                             public_key_text, read_private_key)
from edge_agent.platform.machine import ARCHITECTURES, machine_architecture, normalise_architecture
from edge_agent.packaging.vectors import (MAX_VECTOR_BYTES, VECTOR_SUFFIX, TestVectors, VectorError,
                                check_fits, read_npy)
from edge_agent.packaging.versions import Version

FORMAT = "edge-agent-package/1"
# A package with test vectors: an agent that cannot validate must refuse it, not skip the check.
FORMAT_VALIDATED = "edge-agent-package/2"
FORMATS = (FORMAT, FORMAT_VALIDATED)
FRAMEWORK = "tflite"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
MODEL_SUFFIX = ".tflite"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
HASH_CHUNK = 8 * 1024 * 1024  # large reads keep hashing near sha256sum speed
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest that does not parse or break the format's rules."""


# --- what a manifest says -------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The machine a package is built for: architecture and accelerator."""
    architecture: str
    accelerator: str = "cpu"

    @classmethod
    def parse(cls, text: str) -> "Target":
        """'aarch64', 'arm64/edgetpu', ...: INVALID_ARGUMENT for unknown names."""
        architecture, _, accelerator = text.partition("/")
        canonical = normalise_architecture(architecture)
        if canonical is None:
            raise invalid_argument(f"unknown architecture {architecture!r}: use one of "
                                   f"{', '.join(ARCHITECTURES)} (or arm64, armhf, amd64)")
        accelerator = accelerator or "cpu"
        if accelerator not in ACCELERATOR_PROBES:
            raise invalid_argument(f"unknown accelerator {accelerator!r}: use one of "
                                   f"{', '.join(ACCELERATOR_PROBES)}")
        return cls(canonical, accelerator)

    @classmethod
    def host(cls) -> "Target":
        """This machine, CPU only: what a package built for here should say."""
        return cls(machine_architecture(), "cpu")

    def __str__(self) -> str:
        return f"{self.architecture}/{self.accelerator}"


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class TensorEntry:
    """An input or output as the model declares it; -1 marks a dynamic dimension."""
    name: str
    type: str
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "shape": list(self.shape)}


@dataclass(frozen=True)
class Validation:
    """The manifest's test vectors: .npy files (keys of `files`) in the model's input and
    output order, and the tolerance of the comparison (None: the default for the type,
    edge_agent/packaging/vectors.py)."""
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    atol: float | None = None
    rtol: float | None = None

    def to_json(self) -> dict:
        obj: dict[str, Any] = {"inputs": list(self.inputs), "outputs": list(self.outputs)}
        if self.atol is not None:
            obj["atol"] = self.atol
        if self.rtol is not None:
            obj["rtol"] = self.rtol
        return obj

    @property
    def files(self) -> set[str]:
        return {*self.inputs, *self.outputs}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    target: Target
    created_at: str  # UTC, ISO 8601, e.g. 2025-01-31T12:00:00Z
    model: str  # the file the agent loads; a key of `files`
    files: Mapping[str, FileEntry]
    inputs: tuple[TensorEntry, ...] = ()
    outputs: tuple[TensorEntry, ...] = ()
    framework: str = FRAMEWORK
    format: str = FORMAT
    validation: Validation | None = None  # test vectors: format FORMAT_VALIDATED only

    def to_json(self) -> dict:
        obj = {
            "format": self.format, "name": self.name, "version": self.version,
            "framework": self.framework,
            "target": {"architecture": self.target.architecture,
                       "accelerator": self.target.accelerator},
            "created_at": self.created_at, "model": self.model,
            "files": {n: {"sha256": e.sha256, "size": e.size} for n, e in self.files.items()},
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }
        if self.validation is not None:
            obj["validation"] = self.validation.to_json()
        return obj

    def to_bytes(self) -> bytes:
        """The canonical bytes that are signed."""
        return (json.dumps(self.to_json(), sort_keys=True, indent=2, ensure_ascii=True)
                + "\n").encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        """Parse and check a manifest; ManifestError saying what is wrong."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{MANIFEST_NAME} does not parse as JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{MANIFEST_NAME} must hold a JSON object")
        fmt = _get(obj, "format", str)
        if fmt not in FORMATS:
            raise ManifestError(f"package format {fmt!r} is not supported by this agent "
                                f"(it reads {' and '.join(map(repr, FORMATS))})")
        framework = _get(obj, "framework", str)
        if framework != FRAMEWORK:
            raise ManifestError(f"framework {framework!r} is not supported (this agent runs "
                                f"{FRAMEWORK!r} models)")
        target = _get(obj, "target", dict)
        files = {name: _file_entry(name, entry) for name, entry in _get(obj, "files", dict).items()}
        model = _get(obj, "model", str)
        if model not in files or not model.endswith(MODEL_SUFFIX):
            raise ManifestError(f"'model' must name a {MODEL_SUFFIX} file listed in 'files', "
                                f"got {model!r}")
        inputs = tuple(_tensor_entry(t) for t in _get(obj, "inputs", list))
        outputs = tuple(_tensor_entry(t) for t in _get(obj, "outputs", list))
        validation = None
        if fmt == FORMAT_VALIDATED:
            validation = _validation(_get(obj, "validation", dict), files, model, inputs,
                                     outputs)
        elif "validation" in obj:
            raise ManifestError(f"{MANIFEST_NAME}: test vectors ('validation') need format "
                                f"{FORMAT_VALIDATED!r}, which agents that cannot validate "
                                f"refuse; this one says {fmt!r}")
        return cls(
            name=_get(obj, "name", str), version=_get(obj, "version", str),
            target=Target(_get(target, "architecture", str), _get(target, "accelerator", str)),
            created_at=_get(obj, "created_at", str), model=model, files=files,
            inputs=inputs, outputs=outputs, framework=framework, format=fmt,
            validation=validation)


_KIND_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "a list"}


def _get(obj: dict, key: str, kind: type):
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{MANIFEST_NAME}: '{key}' must be {_KIND_NAMES[kind]}")
    return value


def check_file_name(name: str) -> None:
    parts = safe_parts(name)
    if not parts or "/".join(parts) != name or name in RESERVED_NAMES:
        raise ManifestError(f"{name!r} is not a valid package file name (relative path of "
                            "letters, digits and ._+-, not manifest.json or manifest.sig)")


def _file_entry(name: str, entry) -> FileEntry:
    check_file_name(name)
    if not isinstance(entry, dict):
        raise ManifestError(f"{MANIFEST_NAME}: files[{name!r}] must be an object")
    sha = _get(entry, "sha256", str)
    size = _get(entry, "size", int)
    if not _SHA256.fullmatch(sha) or size < 0:
        raise ManifestError(f"{MANIFEST_NAME}: files[{name!r}] needs a lowercase hex sha256 "
                            "and a size of 0 or more")
    return FileEntry(sha, size)


def _tolerance(obj: dict, key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ManifestError(f"{MANIFEST_NAME}: validation '{key}' must be a finite number "
                            "of 0 or more")
    return float(value)


def _validation(obj: dict, files: Mapping[str, FileEntry], model: str,
                inputs: tuple[TensorEntry, ...], outputs: tuple[TensorEntry, ...]) -> Validation:
    lists = []
    for key, tensors in (("inputs", inputs), ("outputs", outputs)):
        names = _get(obj, key, list)
        if not all(isinstance(n, str) for n in names):
            raise ManifestError(f"{MANIFEST_NAME}: validation '{key}' must list file names")
        for name in names:
            if name not in files or name == model or not name.endswith(VECTOR_SUFFIX):
                raise ManifestError(f"{MANIFEST_NAME}: validation {key} {name!r} must be a "
                                    f"{VECTOR_SUFFIX} file listed in 'files'")
        if len(names) != len(tensors):
            raise ManifestError(f"{MANIFEST_NAME}: validation lists {len(names)} {key}; the "
                                f"model has {len(tensors)}")
        lists.append(tuple(names))
    validation = Validation(lists[0], lists[1], _tolerance(obj, "atol"), _tolerance(obj, "rtol"))
    total = sum(files[name].size for name in validation.files)
    if total > MAX_VECTOR_BYTES:
        raise ManifestError(f"{MANIFEST_NAME}: the test vectors hold {total} bytes, more than "
                            f"the {MAX_VECTOR_BYTES} a package may carry")
    return validation


def _tensor_entry(obj) -> TensorEntry:
    if not isinstance(obj, dict):
        raise ManifestError(f"{MANIFEST_NAME}: each input and output must be an object")
    shape = _get(obj, "shape", list)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ManifestError(f"{MANIFEST_NAME}: a tensor shape must be a list of integers")
    return TensorEntry(_get(obj, "name", str), _get(obj, "type", str), tuple(shape))


# --- reading a model's inputs and outputs ----------------------------------------------------

def model_metadata(content: bytes) -> tuple[tuple[TensorEntry, ...], tuple[TensorEntry, ...]]:
    """The inputs and outputs of a .tflite model, read from its flatbuffer.

    Read with the schema, not an interpreter, so models that need a delegate or custom op
    absent here (an Edge TPU model on a build host) can still be packaged.
    """
    if not looks_like_tflite(content):
        raise invalid_argument("not a TensorFlow Lite model (no TFL3 identifier)")
    import tflite
    from tflite.TensorType import TensorType

    type_names = {v: k for k, v in vars(TensorType).items() if k.isupper()}
    try:
        graph = tflite.Model.GetRootAs(content, 0).Subgraphs(0)

        def entry(index: int) -> TensorEntry:
            t = graph.Tensors(index)
            shape = ([t.ShapeSignature(i) for i in range(t.ShapeSignatureLength())]
                     or [t.Shape(i) for i in range(t.ShapeLength())])
            return TensorEntry((t.Name() or b"").decode("utf-8", "replace"),
                               type_names.get(t.Type(), f"TYPE_{t.Type()}"),
                               tuple(int(d) for d in shape))

        return (tuple(entry(graph.Inputs(i)) for i in range(graph.InputsLength())),
                tuple(entry(graph.Outputs(i)) for i in range(graph.OutputsLength())))
    except Exception as e:  # a malformed flatbuffer fails in many ways deep in generated code
        raise invalid_argument(f"cannot read the model's inputs and outputs: {e!r}") from None


# --- hashing --------------------------------------------------------------------------------

def sha256_hex(data: bytes, progress: Progress | None = None, what: str = "") -> str:
    if progress is None:
        return hashlib.sha256(data).hexdigest()  # one call: hashlib drops the GIL for it
    digest, view = hashlib.sha256(), memoryview(data)
    for start in range(0, len(view), HASH_CHUNK):
        digest.update(view[start:start + HASH_CHUNK])
        progress(what, min(start + HASH_CHUNK, len(view)), len(view))
    return digest.hexdigest()


def _sha256_stream(f, size: int, progress: Progress | None, what: str) -> tuple[str, int]:
    digest, buffer, done = hashlib.sha256(), bytearray(HASH_CHUNK), 0
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        digest.update(view[:n])
        done += n
        if progress:
            progress(what, done, size)
    return digest.hexdigest(), done


# --- building and signing -------------------------------------------------------------------

def signature_bytes(key: SigningKey, manifest_bytes: bytes) -> bytes:
    signature = key.sign(manifest_bytes).signature
    return (json.dumps({"algorithm": "ed25519", "key_id": key_id(key.verify_key),
                        "signature": base64.b64encode(signature).decode("ascii")},
                       sort_keys=True, indent=2) + "\n").encode("ascii")


def is_archive_path(path: str) -> bool:
    return path.endswith(ARCHIVE_SUFFIXES)


def _utc_now() -> tuple[str, int]:
    now = int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), now


def _read(path: str) -> bytes:
    try:
        with open_regular(path, refuse=invalid_argument) as f:
            return f.read()
    except OSError as e:
        raise invalid_argument(f"cannot read '{path}': {e.strerror}") from None


def build_package(model: bytes | str, name: str, version: str, target: Target | str,
                  key: SigningKey | str, out: str, *, extra_files: Iterable[str] = (),
                  model_file: str | None = None, progress: Progress | None = None,
                  test_inputs: Sequence[str] = (), test_outputs: Sequence[str] = (),
                  atol: float | None = None, rtol: float | None = None) -> Manifest:
    """Write a signed package of `model` (its bytes or a .tflite path) to `out`.

    `out` ending in .tar.gz or .tgz gives an archive, anything else a directory; it must not
    exist. `key` is a SigningKey or a private key file. `extra_files` (labels, ...) are
    added under their base names. `test_inputs` and `test_outputs`: .npy files, one per
    model input and output in the model's order, that the agent runs the model on and
    compares with (within `atol` and `rtol`) before serving it; they make the package format
    FORMAT_VALIDATED and are stored as test/input-N.npy and test/output-N.npy. Returns the
    manifest written.
    """
    if isinstance(model, str):
        model_file = model_file or os.path.basename(model)
        model = _read(model)
    model_file = model_file or f"{name}{MODEL_SUFFIX}"
    target = target if isinstance(target, Target) else Target.parse(target)
    signing_key = key if isinstance(key, SigningKey) else read_private_key(key)
    inputs, outputs = model_metadata(model)
    if not name or not version:
        raise invalid_argument("a package needs a name and a version")
    try:
        Version.parse(version)
    except ValueError as e:
        raise invalid_argument(f"the package version does not parse: {e}") from None
    if os.path.lexists(out):
        raise invalid_argument(f"'{out}' exists; choose a new output path")
    if not model_file.endswith(MODEL_SUFFIX):
        raise invalid_argument(f"the model file's name must end in {MODEL_SUFFIX}")
    contents = {model_file: model}
    for path in extra_files:
        if os.path.basename(path) in contents:
            raise invalid_argument(f"two files would be named '{os.path.basename(path)}'")
        contents[os.path.basename(path)] = _read(path)
    try:
        for file_name in contents:
            check_file_name(file_name)
    except ManifestError as e:
        raise invalid_argument(str(e)) from None
    validation = _test_vectors(contents, inputs, outputs, test_inputs, test_outputs, atol, rtol)
    created_at, mtime = _utc_now()
    manifest = Manifest(
        name=name, version=version, target=target, created_at=created_at, model=model_file,
        files={n: FileEntry(sha256_hex(data, progress, f"hashing {n}"), len(data))
               for n, data in contents.items()},
        inputs=inputs, outputs=outputs, validation=validation,
        format=FORMAT if validation is None else FORMAT_VALIDATED)
    manifest_bytes = manifest.to_bytes()
    members = {MANIFEST_NAME: manifest_bytes,
               SIGNATURE_NAME: signature_bytes(signing_key, manifest_bytes), **contents}
    (_write_archive if is_archive_path(out) else _write_directory)(out, members, mtime, progress)
    return manifest


def _test_vectors(contents: dict[str, bytes], inputs: tuple[TensorEntry, ...],
                  outputs: tuple[TensorEntry, ...], test_inputs: Sequence[str],
                  test_outputs: Sequence[str], atol: float | None,
                  rtol: float | None) -> Validation | None:
    """Add the test vector files to `contents`, checked against the model; their Validation
    (None without vectors)."""
    if not test_inputs and not test_outputs:
        if atol is not None or rtol is not None:
            raise invalid_argument("a tolerance (--atol, --rtol) needs test vectors "
                                   "(--test-input, --test-output)")
        return None
    names: dict[str, list[str]] = {}
    for role, paths, tensors in (("input", test_inputs, inputs), ("output", test_outputs, outputs)):
        if len(paths) != len(tensors):
            raise invalid_argument(
                f"the model has {len(tensors)} {role}(s) "
                f"({', '.join(t.name for t in tensors) or 'none'}): give one --test-{role} "
                f".npy file for each, in that order; {len(paths)} given")
        names[role] = []
        for position, (path, tensor) in enumerate(zip(paths, tensors)):
            data = _read(path)
            try:
                array = read_npy(data, f"'{path}'")
                check_fits(array, role, tensor.name, tensor.type, tensor.shape, f"'{path}'")
            except VectorError as e:
                raise invalid_argument(str(e)) from None
            file_name = f"test/{role}-{position}{VECTOR_SUFFIX}"
            contents[file_name] = data
            names[role].append(file_name)
    for key, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise invalid_argument(f"--{key} must be a finite number of 0 or more")
    validation = Validation(tuple(names["input"]), tuple(names["output"]),
                            None if atol is None else float(atol),
                            None if rtol is None else float(rtol))
    total = sum(len(contents[n]) for n in validation.files)
    if total > MAX_VECTOR_BYTES:
        raise invalid_argument(f"the test vectors hold {total} bytes, more than the "
                               f"{MAX_VECTOR_BYTES} a package may carry")
    return validation


class _ProgressReader(io.BytesIO):
    def __init__(self, data: bytes, progress: Progress | None, what: str):
        super().__init__(data)
        self._progress, self._what, self._size = progress, what, len(data)

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if self._progress:
            self._progress(self._what, self.tell(), self._size)
        return chunk


def _write_archive(out: str, members: Mapping[str, bytes], mtime: int,
                   progress: Progress | None) -> None:
    partial = f"{out}.partial-{os.getpid()}"
    try:
        with open(partial, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as gz, \
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                tar.addfile(info, _ProgressReader(data, progress, f"archiving {name}"))
        os.replace(partial, out)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def _write_directory(out: str, members: Mapping[str, bytes], mtime: int,
                     progress: Progress | None) -> None:
    partial = f"{out}.partial-{os.getpid()}"
    os.mkdir(partial, 0o755)
    try:
        for name, data in members.items():
            path = os.path.join(partial, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


# --- verifying ------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifiedPackage:
    manifest: Manifest
    key_id: str
    model: bytes = field(repr=False)  # the model file's bytes: exactly the bytes hashed
    # The test vectors' bytes, exactly those hashed, checked against the model's inputs and
    # outputs; None for a package without (format 1).
    vectors: TestVectors | None = field(default=None, repr=False)


def check_target(manifest: Manifest, label: str, delegate: DelegateSettings | None = None) -> None:
    """FAILED_PRECONDITION unless this machine is what the package is built for, for an agent
    with the `delegate` settings (None: whatever the hardware offers)."""
    wanted, here = manifest.target, machine_architecture()
    architecture = normalise_architecture(wanted.architecture)
    if architecture != here:
        problem = f"this machine is {here}"
    elif not accelerator_available(wanted.accelerator, delegate):
        problem = (f"this machine ({here}) has no usable {wanted.accelerator!r} accelerator "
                   f"(available: {', '.join(available_accelerators(delegate))})")
    else:
        return
    raise failed_precondition(
        f"package '{label}' ({manifest.name} {manifest.version}) is built for {wanted}, "
        f"but {problem}")


MayRead = Callable[[os.stat_result], bool]  # whether the caller may read a file or directory


def _open_in_package(directory: str, name: str, refuse, may_read: MayRead | None = None):
    # Not following links: a file swapped for a link after the walk is refused, not followed;
    # a FIFO or device (put there before or after the walk) is refused before any read.
    f = open_regular(os.path.join(directory, *name.split("/")), name=name,
                     follow_symlinks=False, refuse=refuse)
    if may_read is not None and not may_read(os.fstat(f.fileno())):
        f.close()  # checked on the opened file: the one that would be read
        raise refuse(f"cannot read '{name}': {os.strerror(errno.EACCES)}")
    return f


def _read_small(directory: str, name: str, limit: int, refuse,
                may_read: MayRead | None = None) -> bytes:
    try:
        with _open_in_package(directory, name, refuse, may_read) as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise refuse(f"it has no {name} (a package holds {MANIFEST_NAME}, {SIGNATURE_NAME} "
                     "and the files the manifest lists)") from None
    except OSError as e:
        raise refuse(f"cannot read {name}: {e.strerror}") from None
    if len(data) > limit:
        raise refuse(f"{name} is larger than {limit} bytes")
    return data


def _read_signature(directory: str, refuse, may_read: MayRead | None) -> tuple[str, bytes]:
    data = _read_small(directory, SIGNATURE_NAME, MAX_SIGNATURE_BYTES, refuse, may_read)
    try:
        obj = json.loads(data.decode("utf-8"))
        if obj.get("algorithm") != "ed25519":
            raise ValueError(f"algorithm {obj.get('algorithm')!r} is not ed25519")
        signature = base64.b64decode(obj["signature"], validate=True)
        ident = obj["key_id"]
        if len(signature) != 64 or not isinstance(ident, str):
            raise ValueError("it needs a 64-byte signature and a key_id")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise refuse(f"{SIGNATURE_NAME} is not valid: {e}") from None
    return ident, signature


def _files_on_disk(directory: str, refuse, may_read: MayRead | None = None) -> set[str]:
    """Every regular file under `directory`, relative; links and special files refused, and
    directories the caller may not list (`may_read`)."""
    found: set[str] = set()
    pending = [("", directory)]
    while pending:
        prefix, path = pending.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                relative = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if may_read is not None and not may_read(entry.stat(follow_symlinks=False)):
                        raise refuse(f"cannot read '{relative}': {os.strerror(errno.EACCES)}")
                    pending.append((relative + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found.add(relative)
                else:
                    raise refuse(f"'{relative}' is a link or special file; a package holds "
                                 "only regular files")
    return found


def _check_file_set(directory: str, manifest: Manifest, refuse,
                    may_read: MayRead | None = None) -> None:
    on_disk = _files_on_disk(directory, refuse, may_read) - RESERVED_NAMES
    missing, extra = sorted(set(manifest.files) - on_disk), sorted(on_disk - set(manifest.files))
    if missing:
        raise refuse(f"file(s) listed in the manifest are missing: {', '.join(missing)}")
    if extra:
        raise refuse(f"file(s) not listed in the signed manifest are present: {', '.join(extra)}")


def _check_file(directory: str, name: str, entry: FileEntry, refuse, *, keep: bool,
                check_size: Callable[[int], None] | None, progress: Progress | None,
                may_read: MayRead | None = None) -> bytes | None:
    """Check one file's size and hash; return its bytes when `keep` (read once, hashed)."""
    try:
        with _open_in_package(directory, name, refuse, may_read) as f:
            size = os.fstat(f.fileno()).st_size
            if size != entry.size:
                raise refuse(f"'{name}' has {size} bytes, the signed manifest says {entry.size}")
            if keep:
                if check_size is not None:
                    check_size(size)
                data = f.read(size + 1)  # one more: a file that grew is caught below
                digest, read = sha256_hex(data, progress, f"verifying {name}"), len(data)
            else:
                data = None
                digest, read = _sha256_stream(f, size, progress, f"verifying {name}")
    except OSError as e:
        raise refuse(f"cannot read '{name}': {e.strerror}") from None
    if read != entry.size:
        raise refuse(f"'{name}' changed size while it was being read")
    if digest != entry.sha256:
        raise refuse(f"the sha256 of '{name}' ({digest}) differs from the signed manifest's "
                     f"({entry.sha256}): the file was changed after signing")
    return data


def verify_signed_manifest(directory: str, keys: Mapping[str, VerifyKey], *,
                           label: str | None = None, target_check: bool = True,
                           may_read: MayRead | None = None,
                           delegate: DelegateSettings | None = None) -> tuple[Manifest, str]:
    """The first half of verify_directory: the signature over the manifest bytes, the
    manifest, the target and the file set (names only, no file read); (manifest, key id).
    What a package is, cheaply; its files are trusted only after verify_directory."""
    label = label or directory

    def refuse(reason: str) -> AgentError:
        return failed_precondition(f"package '{label}': {reason}")

    ident, signature = _read_signature(directory, refuse, may_read)
    key = keys.get(ident)
    if key is None:
        raise refuse(f"it is signed with key {ident}, which is not trusted (trusted keys: "
                     f"{describe_trust(keys)}); add its .pub file to {ROOT_CERTS_KEY}")
    manifest_bytes = _read_small(directory, MANIFEST_NAME, MAX_MANIFEST_BYTES, refuse, may_read)
    try:
        key.verify(manifest_bytes, signature)
    except BadSignatureError:
        raise refuse(f"the signature does not match {MANIFEST_NAME} for key {ident}: the "
                     "manifest was changed after signing, or the signature is another's") from None
    try:
        manifest = Manifest.from_bytes(manifest_bytes)
    except ManifestError as e:
        raise refuse(str(e)) from None
    if target_check:
        check_target(manifest, label, delegate)
    _check_file_set(directory, manifest, refuse, may_read)
    return manifest, ident


def verify_directory(directory: str, keys: Mapping[str, VerifyKey], *, label: str | None = None,
                     target_check: bool = True, check_size: Callable[[int], None] | None = None,
                     progress: Progress | None = None, may_read: MayRead | None = None,
                     delegate: DelegateSettings | None = None) -> VerifiedPackage:
    """Verify an unpacked package against trusted `keys` (key id -> key).

    Order: signature over the manifest bytes, then the manifest, the target, the file set
    (verify_signed_manifest), and each file's size and hash. Any failure:
    FAILED_PRECONDITION naming the package (`label`, default the directory) and the reason.
    `check_size(n)` is called with the model's size before it is read into memory (the agent
    checks its memory budget there). `may_read(stat)`, when given, must allow every file and
    directory read: the agent reads a package for a caller only as far as that caller could
    read it. `delegate`: the agent's delegate settings, for the target check.
    """
    label = label or directory

    def refuse(reason: str) -> AgentError:
        return failed_precondition(f"package '{label}': {reason}")

    manifest, ident = verify_signed_manifest(directory, keys, label=label,
                                             target_check=target_check, may_read=may_read,
                                             delegate=delegate)
    model = None
    kept: dict[str, bytes] = {}  # the test vectors (their total is bounded by the manifest)
    vector_files = manifest.validation.files if manifest.validation else set()
    for name in sorted(manifest.files):
        is_model = name == manifest.model
        data = _check_file(directory, name, manifest.files[name], refuse,
                           keep=is_model or name in vector_files,
                           check_size=check_size if is_model else None, progress=progress,
                           may_read=may_read)
        if is_model:
            model = data
        elif data is not None:
            kept[name] = data
    if model is None or not looks_like_tflite(model):
        raise refuse(f"'{manifest.model}' is not a TensorFlow Lite model")
    vectors = None
    if manifest.validation is not None:
        vectors = _checked_vectors(manifest.validation, kept, model, refuse)
    return VerifiedPackage(manifest, ident, model, vectors)


def _checked_vectors(validation: Validation, files: Mapping[str, bytes], model: bytes,
                     refuse) -> TestVectors:
    """The test vectors, each read as an array and checked against the model's own inputs
    and outputs (read from its flatbuffer, not the manifest: what will run is the model)."""
    try:
        inputs, outputs = model_metadata(model)
    except AgentError as e:
        raise refuse(e.message) from None
    for role, names, tensors in (("input", validation.inputs, inputs),
                                 ("output", validation.outputs, outputs)):
        if len(names) != len(tensors):
            raise refuse(f"it has {len(names)} test {role}(s); the model has {len(tensors)}")
        for name, tensor in zip(names, tensors):
            try:
                check_fits(read_npy(files[name], f"test {role} '{name}'"), role, tensor.name,
                           tensor.type, tensor.shape, f"test {role} '{name}'")
            except VectorError as e:
                raise refuse(str(e)) from None
    return TestVectors(tuple(files[n] for n in validation.inputs),
                       tuple(files[n] for n in validation.outputs), validation.atol,
                       validation.rtol, validation.inputs, validation.outputs)


def open_package(path: str, trust_path: str, work_dir: str, limits: Limits, *,
                 target_check: bool = True, check_size: Callable[[int], None] | None = None,
                 progress: Progress | None = None, label: str | None = None,
                 may_read: MayRead | None = None,
                 delegate: DelegateSettings | None = None) -> VerifiedPackage:
    """Verify the package at `path` (a directory or a .tar.gz) against the keys in
    `trust_path`; archives are unpacked under `work_dir` and removed afterwards. `label`
    names it in messages (default: `path`); `may_read` as verify_directory has it (the
    archive itself the caller has opened: what it unpacks to, it may read); `delegate` as
    check_target has it."""
    label = label or path
    directory = os.path.isdir(path)
    try:
        if not directory and not is_gzip(path):
            raise failed_precondition(f"'{label}' is not a TensorFlow Lite model, nor a model "
                                      "package (a directory or a .tar.gz)")
    except OSError as e:
        raise failed_precondition(f"cannot read '{label}': {e.strerror}") from None
    if not trust_path:
        kind = "a directory" if directory else "a .tar.gz"
        raise failed_precondition(
            f"'{label}' is {kind}, so it must be a signed model package, but no trusted keys "
            f"are configured: set {ROOT_CERTS_KEY} to the folder of public keys (*.pub) that "
            "packages are signed with")
    keys = load_trust(trust_path)
    options: dict[str, Any] = dict(label=label, target_check=target_check, check_size=check_size,
                   progress=progress, delegate=delegate)
    if directory:
        return verify_directory(path, keys, may_read=may_read, **options)
    with unpacked(path, work_dir, limits, label=label, progress=progress) as root:
        return verify_directory(root, keys, **options)


# --- the demo's keys -------------------------------------------------------------------------

def ensure_demo_keys(directory: str) -> tuple[str, str]:
    """A signing key and a trust folder for the demo under `directory`, made on first use.

    Returns (private key path, trust folder): `directory`/demo.key and `directory`/trust
    holding demo.pub, with the permissions the agent requires.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    private_path = os.path.join(directory, "demo.key")
    trust_dir = os.path.join(directory, "trust")
    if not os.path.exists(private_path):
        generate_key(private_path, force=True)
    public_text = public_key_text(read_private_key(private_path).verify_key)
    os.makedirs(trust_dir, mode=0o755, exist_ok=True)
    os.chmod(trust_dir, 0o755)  # the agent refuses a trust folder others may write
    public_path = os.path.join(trust_dir, "demo.pub")
    if not os.path.exists(public_path) or open(public_path).read() != public_text:
        with open(public_path, "w") as f:
            f.write(public_text)
    os.chmod(public_path, 0o644)
    return private_path, trust_dir
