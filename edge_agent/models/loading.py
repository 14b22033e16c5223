"""Loading: a LoadModel url becomes verified model bytes, then a LoadedModel.

The url is opened with the caller's rights (or is a descriptor the caller passed); a bare
.tflite file is read once into memory (when unsigned models are allowed), a signed package is
verified and its model bytes taken from what was hashed; the bytes are proven in a child
process (prover.py) before the agent's own runtime sees them, and the memory budget reserves
the file, what the child measured and what the interpreter allocated. The registry of loaded
models (names, owners, unload) is the service's (service.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass

from edge_agent.platform import caller_paths
from edge_agent.platform import delegates
from edge_agent.models import verifier as model_verifier
from edge_agent.platform.accelerators import DelegateSettings
from edge_agent.api.caller import Caller
from edge_agent.config import AgentConfig
from edge_agent.platform.passed_fds import (check_access, copy_to_private_file, fd_url_index,
                                            passed_fd)
from edge_agent.models.engine import LoadedModel, create_interpreter
from edge_agent.errors import AgentError, failed_precondition, invalid_argument, not_found, shown
from edge_agent.platform.memory import MemoryBudget
from edge_agent.observe.metrics import ModelMetrics
from edge_agent.models.model_files import looks_like_tflite, not_regular, read_at_most
from edge_agent.models.model_check import CHECK_SETTINGS, Prover, holds_edgetpu

log = logging.getLogger(__name__)


def model_path(url: str) -> str:
    """The local path a LoadModel url names: a plain path or a file:// url."""
    if not url:
        raise invalid_argument("url is empty: give the model's local path or a file:// url")
    if "\0" in url:
        raise invalid_argument("url contains a NUL byte, which no path can hold")
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise invalid_argument(f"url {shown(url)!r}: a file:// url needs an absolute path (file:///...)")
        return path
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise invalid_argument(f"url {shown(url)!r}: only local paths and file:// urls are supported")
    return url


@dataclass(frozen=True)
class ModelSource:
    """An opened model file or package directory, and the path that names it in replies."""
    fd: int
    path: str  # as the caller gave it
    passed: bool = False  # a descriptor the client passed (url fd:N), not a path opened here

    @property
    def proc_path(self) -> str:
        """The opened object by path, for code that takes paths (packages, archives): the
        kernel resolves it to this descriptor's file, whatever the name means by now."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        os.close(self.fd)


def open_model(url: str, caller: Caller) -> ModelSource:
    """The model a LoadModel url names, opened with the caller's rights: the one place where
    a url becomes a file (a descriptor the client passes instead of a path is the other
    way in, and belongs here). What the caller cannot see or read answers NOT_FOUND worded
    exactly as a missing path; a url that names no local path, INVALID_ARGUMENT."""
    index = fd_url_index(url)
    if index is not None:  # `fd:N`: holding the descriptor is the caller's proof of access
        what = f"url {shown(url)!r}"
        fd = passed_fd(caller, index, what)
        check_access(fd, False, what)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            # Its files would be opened by name, with the agent's rights, not the caller's.
            raise failed_precondition(f"{what}: a package directory cannot be passed as a "
                                      "descriptor; pass its .tar.gz, or give its path")
        return ModelSource(os.dup(fd), url, passed=True)  # read with pread: offset untouched
    path = model_path(url)
    try:
        fd = caller_paths.open_as(caller, path)
    except FileNotFoundError:
        raise not_found(f"no model at '{shown(path)}'") from None
    except OSError as e:
        raise failed_precondition(f"cannot read '{shown(path)}': {e.strerror}") from None
    return ModelSource(fd, path)


class ModelLoader:
    """Loads models for one agent: its configuration, its memory budget and its prover
    (shared with the service, which releases a model's footprint at unload)."""

    def __init__(self, config: AgentConfig, budget: MemoryBudget, prover: Prover):
        self.config = config
        self.budget = budget
        self.prover = prover
        self.verifier = model_verifier.tflite_verifier()
        # Models proven before, by the sha256 of their bytes: the bytes the child measured
        # (the model repository keeps them across restarts, edge_agent.models.lifecycle.store).
        self.proofs: dict[str, int] = {}
        self._check_settings = json.dumps(
            {key: getattr(config, key) for key in CHECK_SETTINGS}, sort_keys=True).encode()

    def load(self, name: str, url: str, source: ModelSource, caller: Caller,
             remember_proof: bool = False) -> LoadedModel:
        """The model `source` holds, read, verified, proven in a child process and opened
        with its delegate, its memory reserved against the budget (released on failure).
        `remember_proof`: a check passed is remembered in `proofs`, and a check passed
        before is not run again (the model repository's loads; an application's LoadModel
        always checks)."""
        what = f"model '{shown(name)}'"
        started = time.monotonic()
        package: dict = {}  # the package's name and version, when it comes from one
        content = self._read_model(source, what, caller, package)
        # No runtime, here or in the child, reads a flatbuffer whose offsets leave it.
        model_verifier.check(self.verifier, content, what)
        self.budget.reserve(len(content), what)
        reserved = len(content)
        try:
            # What the runtime cost a child beyond the file, measured before the agent's own
            # runtime sees a byte: a model that crashes or swamps it is refused here.
            vectors = package.get("vectors")
            measured = self._prove(content, what, vectors, remember_proof)
            self.budget.reserve(measured, what)
            reserved += measured
            interpreter, delegation = delegates.interpreter_with_delegate(
                content, self.config, what, create_interpreter)
            if vectors is not None and not self._proven_apart(content):
                self._validate_here(interpreter, vectors, what)
            # The arena and the runtime's packed copies of weights come on top of the file:
            # an estimate from the tensors, for when the child measured less or nothing.
            tensors = sum(int(d["shape"].prod()) * d["dtype"](0).itemsize
                          for d in interpreter.get_tensor_details())
            self.budget.reserve(max(0, tensors - measured), what)
            reserved += max(0, tensors - measured)
            metrics = ModelMetrics(time.monotonic() - started, package_name=package.get(
                "package_name", ""), package_version=package.get("package_version", "")) \
                if self.config.edge_agent_metrics else None
            return LoadedModel(name, url, interpreter, footprint=reserved,
                               delegate=delegation.name, owner=caller.uid, metrics=metrics,
                               version=package.get("package_version", ""),
                               key_id=package.get("key_id", ""))
        except UnicodeDecodeError:  # the runtime decodes tensor names as UTF-8
            self.budget.release(reserved)
            raise failed_precondition(
                f"{what}: the model's tensor names are not valid UTF-8, which the API cannot "
                "carry: the file is corrupt, or rename its tensors") from None
        except BaseException:
            self.budget.release(reserved)
            raise

    def _proven_apart(self, content: bytes) -> bool:
        """Whether the child process can run the model: not one compiled for an Edge TPU
        this agent holds (one process holds it at a time)."""
        return not (holds_edgetpu(self.config) and delegates.needs_edgetpu(content))

    def _validate_here(self, interpreter, vectors, what: str) -> None:
        """A package's test vectors run in the agent, on the interpreter about to be
        served: for a model the child could not run (the Edge TPU's)."""
        from edge_agent.packaging.vectors import validate

        started = time.monotonic()
        try:
            validate(interpreter, vectors, restore=True)
        except AgentError as e:
            raise AgentError(e.code, f"{what}: {e.message}") from None
        log.info("%s: its test vectors passed, run in the agent (Edge TPU) in %.2f s", what,
                 time.monotonic() - started)

    def _prove(self, content: bytes, what: str, vectors=None, remember: bool = False) -> int:
        """Bytes the model costs the runtime beyond the file, measured in a child process
        (prover) allowed what the memory budget has free, where it also runs on a package's
        test `vectors`; 0 for a model that cannot be proven apart from the agent (one
        compiled for an Edge TPU the agent holds: its vectors run in the agent)."""
        if not self._proven_apart(content):
            log.info("%s: compiled for the Edge TPU, which one process holds at a time: "
                     "loaded without a check in a separate process", what)
            return 0
        # The same model with the same test vectors, run the same way: the same outcome.
        digest = ""
        if remember:
            digest = hashlib.sha256(content + (vectors.to_bytes() if vectors is not None
                                               else b"") + self._check_settings).hexdigest()
        proven = self.proofs.get(digest) if remember else None
        if proven is not None:
            log.info("%s: the same bytes were checked before (sha256 %s...); the runtime "
                     "needed %.1f MiB", what, digest[:16], proven / 2**20)
            return max(0, proven - len(content))
        proof = self.prover.prove(content, self.config, what,
                                  memory_limit=self.budget.free + len(content), vectors=vectors)
        log.info("%s: checked in a separate process in %.2f s%s; the runtime needed %.1f MiB",
                 what, proof.seconds, ", test vectors passed" if vectors is not None else "",
                 proof.peak_bytes / 2**20)
        if remember:
            self.proofs[digest] = proof.peak_bytes
        return max(0, proof.peak_bytes - len(content))

    def _read_model(self, source: ModelSource, what: str, caller: Caller,
                    package: dict) -> bytes:
        path = source.path
        try:
            st = os.fstat(source.fd)
            if stat.S_ISDIR(st.st_mode):
                return self._read_package(source, what, caller, package)
            if not stat.S_ISREG(st.st_mode):
                raise failed_precondition(not_regular(path, st.st_mode))
            if not looks_like_tflite(os.pread(source.fd, 8, 0)):
                return self._read_package(source, what, caller, package)
            if not self.config.edge_agent_allow_unsigned_models:
                raise failed_precondition(
                    f"'{shown(path)}' is an unsigned .tflite file, and unsigned .tflite models are "
                    "not allowed: load a signed package, or set "
                    "edge_agent_allow_unsigned_models to true")
            # Refuse an oversized file before reading it into memory.
            self.budget.check(st.st_size, what)
            # Read once: the child and the agent's runtime both get exactly these bytes.
            content = read_at_most(source.fd, st.st_size)
        except OSError as e:
            raise failed_precondition(f"cannot read '{shown(path)}': {e.strerror}") from None
        if not looks_like_tflite(content):
            raise failed_precondition(f"'{shown(path)}' is not a TensorFlow Lite model")
        return content

    def _read_package(self, source: ModelSource, what: str, caller: Caller,
                      found: dict) -> bytes:
        """The model bytes of a signed package, verified: the same bytes that were hashed;
        every file in it readable by the caller."""
        from edge_agent.packaging.archive import Limits
        from edge_agent.packaging.packages import open_package  # PyNaCl: only once a package comes

        config = self.config
        path, copy = source.proc_path, None
        if source.passed:
            # Reopening /proc/self/fd/N would check the agent's own rights to the client's
            # file: the archive is read through the descriptor into a private copy instead.
            size = os.fstat(source.fd).st_size
            if size > config.edge_agent_max_package_bytes:
                raise failed_precondition(
                    f"{what}: the package passed as {source.path} is {size} bytes, more than "
                    f"edge_agent_max_package_bytes ({config.edge_agent_max_package_bytes})")
            path = copy = copy_to_private_file(
                source.fd, size, os.path.join(config.edge_agent_state_dir, "passed"))
        try:
            package = open_package(
                path, config.sagemaker_edge_core_root_certs_path,
                os.path.join(config.edge_agent_state_dir, "packages"),
                Limits(config.edge_agent_max_package_bytes, config.edge_agent_max_package_files),
                check_size=lambda size: self.budget.check(size, what), label=source.path,
                may_read=None if caller_paths.trusted(caller) or source.passed
                else lambda st: caller_paths.may_read(caller, st),
                # A package built for the Edge TPU is accepted only where this agent runs one.
                delegate=DelegateSettings(config.edge_agent_delegate,
                                          config.edge_agent_delegate_options))
        finally:
            if copy is not None:
                os.unlink(copy)
        manifest = package.manifest
        log.info("%s: package %s %s for %s, signed by key %s", what, manifest.name,
                 manifest.version, manifest.target, package.key_id)
        found.update(package_name=manifest.name, package_version=manifest.version,
                     key_id=package.key_id, vectors=package.vectors)
        return package.model
