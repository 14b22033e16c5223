"""The deployment document: its format, canonical bytes, signature and selection rules.

Stored as one JSON object, `{"document": {...}, "signature": {...}}`. The signature (Ed25519,
the key named by its id, as a package's manifest.sig) is over the document's canonical bytes:
sorted keys, two-space indentation, ASCII, a final newline, as packages' manifests are
written (edge_agent.packaging.packages.Manifest.to_bytes). Only strings, integers, lists and objects
occur, so the canonical bytes of a parsed document are the bytes that were signed.
"""
from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from edge_agent.config import DEPLOYMENT_NAME
from edge_agent.packaging.keys import key_id
from edge_agent.packaging.versions import Version

FORMAT = "edge-agent-deployment/1"
POLICIES = ("rollback_on_failure", "do_nothing")
TRUST_KEY = "edge_agent_deployment_trust"
MAX_DOCUMENT_BYTES = 1024 * 1024
_NAME = DEPLOYMENT_NAME
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIME = "%Y-%m-%dT%H:%M:%SZ"


class DocumentError(ValueError):
    """A document that does not parse, is not signed by a trusted key, or is not for us."""


def in_percentage(fleet: str, device: str, percent: float) -> bool:
    """Whether `device` is among the `percent`% of `fleet` a stage selects: the same boards
    everywhere, and those of a smaller percentage are in every larger one."""
    point = int.from_bytes(hashlib.sha256(f"{fleet}/{device}".encode()).digest()[:8], "big")
    # A document holds hundredths of a percent, an integer: compare with that integer, as
    # 0.07 * 100 is 7.000000000000001 in floating point and would take the board at point 7.
    return point % 10000 < round(percent * 100)


def format_time(seconds: float) -> str:
    return time.strftime(_TIME, time.gmtime(seconds))


def parse_time(text: str) -> int:
    try:
        return calendar.timegm(time.strptime(text, _TIME))
    except ValueError:
        raise DocumentError(f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ") from None


@dataclass(frozen=True)
class Package:
    """A package object in the bucket (key under the document's prefix), its bytes' SHA-256
    and the version its signed manifest carries."""
    key: str
    sha256: str
    version: str
    size: int = 0

    def to_json(self) -> dict:
        return {"package": self.key, "sha256": self.sha256, "version": self.version,
                "size": self.size}


@dataclass(frozen=True)
class Stage:
    """Boards chosen by exactly one of: names, a name fragment, a percentage; and the
    versions they serve instead of the baseline's."""
    models: Mapping[str, Package]
    devices: tuple[str, ...] = ()
    name_contains: str = ""
    percent: float | None = None

    def selects(self, fleet: str, device: str) -> bool:
        if self.devices:
            return device in self.devices
        if self.name_contains:
            return self.name_contains in device
        return self.percent is not None and in_percentage(fleet, device, self.percent)

    def describe(self) -> str:
        if self.devices:
            return "devices " + ",".join(self.devices)
        if self.name_contains:
            return f"names containing {self.name_contains!r}"
        return f"{self.percent:g}%"

    def to_json(self) -> dict:
        obj: dict = {"models": {n: p.to_json() for n, p in sorted(self.models.items())}}
        if self.devices:
            obj["devices"] = list(self.devices)
        elif self.name_contains:
            obj["name_contains"] = self.name_contains
        else:
            # Hundredths of a percent, an integer: the canonical bytes hold no floats.
            obj["percent_hundredths"] = round((self.percent or 0) * 100)
        return obj


@dataclass(frozen=True)
class Document:
    fleet: str
    sequence: int
    expires: int  # seconds since the epoch
    baseline: Mapping[str, Package]
    stages: tuple[Stage, ...] = ()
    policy: str = "rollback_on_failure"
    device: str = ""  # a device's own document; empty: the fleet's
    created_at: str = ""
    history: Mapping[str, tuple[Package, ...]] = field(default_factory=dict)
    # history: earlier baselines per name, newest first (for `fleet rollback`)

    def to_json(self) -> dict:
        obj = {"format": FORMAT, "fleet": self.fleet, "sequence": self.sequence,
               "expires": format_time(self.expires), "created_at": self.created_at,
               "baseline": {n: p.to_json() for n, p in sorted(self.baseline.items())},
               "stages": [s.to_json() for s in self.stages],
               "failure_policy": self.policy,
               "history": {n: [p.to_json() for p in ps] for n, ps in sorted(self.history.items())
                           if ps}}
        if self.device:
            obj["device"] = self.device
        return obj

    def to_bytes(self) -> bytes:
        """The canonical bytes that are signed."""
        return (json.dumps(self.to_json(), sort_keys=True, indent=2, ensure_ascii=True)
                + "\n").encode("ascii")

    def wanted(self, device: str) -> dict[str, Package]:
        """Name -> the package `device` serves: the baseline, each model replaced by the
        first stage that selects the device and names it."""
        wanted = dict(self.baseline)
        for name in list(wanted) + [n for s in self.stages for n in s.models]:
            for stage in self.stages:
                if name in stage.models and stage.selects(self.fleet, device):
                    wanted[name] = stage.models[name]
                    break
        return wanted

    def stage_of(self, name: str) -> Stage | None:
        for stage in self.stages:
            if name in stage.models:
                return stage
        return None

    def expired(self, now: float) -> bool:
        return now >= self.expires


# --- parsing ----------------------------------------------------------------------------------

def _get(obj: dict, key: str, kind: type, where: str):
    if key not in obj:
        raise DocumentError(f"{where}: '{key}' is missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DocumentError(f"{where}: '{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def check_name(text: str, what: str) -> str:
    if not _NAME.fullmatch(text):
        raise DocumentError(f"{what} {text!r} is not a name (letters, digits, '.', '_', '-')")
    return text


def _package(obj, where: str) -> Package:
    if not isinstance(obj, dict):
        raise DocumentError(f"{where} must be an object")
    key = _get(obj, "package", str, where)
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise DocumentError(f"{where}: 'package' {key!r} is not an object key under the prefix")
    digest = _get(obj, "sha256", str, where)
    if not _SHA256.fullmatch(digest):
        raise DocumentError(f"{where}: 'sha256' must be 64 lowercase hex digits")
    size = obj.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        # The download stops past it: without one, whoever serves the object could fill
        # the board's disk before the SHA-256 is checked.
        raise DocumentError(f"{where}: 'size' must be the package's size in bytes")
    version = _get(obj, "version", str, where)
    try:  # it names the file the board writes in its repository: no '/', no '..'
        Version.parse(version)
    except ValueError as e:
        raise DocumentError(f"{where}: {e}") from None
    return Package(key, digest, version, size)


def _models(obj, where: str) -> dict[str, Package]:
    if not isinstance(obj, dict):
        raise DocumentError(f"{where} must be an object")
    return {check_name(n, "model name"): _package(p, f"{where} '{n}'") for n, p in obj.items()}


def _stage(obj, index: int) -> Stage:
    where = f"stage {index + 1}"
    if not isinstance(obj, dict):
        raise DocumentError(f"{where} must be an object")
    chosen = [k for k in ("devices", "name_contains", "percent_hundredths") if k in obj]
    if len(chosen) != 1:
        raise DocumentError(f"{where} must select by exactly one of devices, name_contains, "
                            "percent_hundredths")
    models = _models(_get(obj, "models", dict, where), f"{where} model")
    if chosen[0] == "devices":
        devices = _get(obj, "devices", list, where)
        if not devices or not all(isinstance(d, str) for d in devices):
            raise DocumentError(f"{where}: 'devices' must be a non-empty list of names")
        return Stage(models, devices=tuple(check_name(d, "device") for d in devices))
    if chosen[0] == "name_contains":
        fragment = _get(obj, "name_contains", str, where)
        if not fragment:
            raise DocumentError(f"{where}: 'name_contains' is empty")
        return Stage(models, name_contains=fragment)
    hundredths = _get(obj, "percent_hundredths", int, where)
    if not 0 <= hundredths <= 10000:
        raise DocumentError(f"{where}: 'percent_hundredths' must be 0 to 10000")
    return Stage(models, percent=hundredths / 100)


def parse_document(obj) -> Document:
    """A Document from its JSON object; DocumentError saying what is wrong."""
    if not isinstance(obj, dict):
        raise DocumentError("the document must be a JSON object")
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise DocumentError(f"format {fmt!r} is not {FORMAT!r}")
    policy = _get(obj, "failure_policy", str, "document")
    if policy not in POLICIES:
        raise DocumentError(f"failure_policy {policy!r} is not one of {', '.join(POLICIES)}")
    sequence = _get(obj, "sequence", int, "document")
    if sequence < 1:
        raise DocumentError("sequence must be 1 or more")
    stages = tuple(_stage(s, i) for i, s in enumerate(_get(obj, "stages", list, "document")))
    seen: set[str] = set()
    for stage in stages:
        if seen & set(stage.models):
            raise DocumentError(f"model {sorted(seen & set(stage.models))[0]!r} is in two stages")
        seen |= set(stage.models)
    history = {}
    if not isinstance(obj.get("history", {}), dict):
        raise DocumentError("'history' must be an object")
    for name, packages in obj.get("history", {}).items():
        if not isinstance(packages, list):
            raise DocumentError(f"history of {name!r} must be a list")
        history[check_name(name, "model name")] = tuple(
            _package(p, f"history of '{name}'") for p in packages)
    device = obj.get("device", "")
    if not isinstance(device, str) or (device and not _NAME.fullmatch(device)):
        raise DocumentError(f"device {device!r} is not a name")
    document = Document(
        fleet=check_name(_get(obj, "fleet", str, "document"), "fleet"), sequence=sequence,
        expires=parse_time(_get(obj, "expires", str, "document")),
        baseline=_models(_get(obj, "baseline", dict, "document"), "baseline model"),
        stages=stages, policy=policy, device=device,
        created_at=_get(obj, "created_at", str, "document"), history=history)
    if document.to_json() != obj:
        raise DocumentError("the document holds fields or values this agent does not know")
    return document


# --- signing and verifying ------------------------------------------------------------------

def sign(document: Document, key: SigningKey) -> bytes:
    """The object stored in the bucket: the document and its signature."""
    data = document.to_bytes()
    envelope = {"document": document.to_json(),
                "signature": {"algorithm": "ed25519", "key_id": key_id(key.verify_key),
                              "signature": base64.b64encode(key.sign(data).signature).decode()}}
    return (json.dumps(envelope, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()


@dataclass(frozen=True)
class Signed:
    document: Document
    key_id: str
    canonical: bytes  # the bytes signed: equal bytes, equal document

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical).hexdigest()


def verify(data: bytes, keys: Mapping[str, VerifyKey]) -> Signed:
    """The document in a stored object, its signature checked against `keys`."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # also: nesting too deep, an integer too long
        raise DocumentError(f"does not parse as JSON: {e}") from None
    if not isinstance(envelope, dict) or set(envelope) != {"document", "signature"}:
        raise DocumentError("must be an object with exactly 'document' and 'signature'")
    signature = envelope["signature"]
    if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
        raise DocumentError("the signature must be an ed25519 object")
    ident = str(signature.get("key_id"))
    key = keys.get(ident)
    if key is None:
        raise DocumentError(f"signed by key {ident!r}, which is not in {TRUST_KEY} "
                            f"(trusted: {', '.join(sorted(keys)) or 'none'})")
    document = parse_document(envelope["document"])
    canonical = document.to_bytes()
    try:
        raw = base64.b64decode(str(signature.get("signature", "")), validate=True)
        key.verify(canonical, raw)
    except (binascii.Error, BadSignatureError, ValueError):
        raise DocumentError(f"bad signature (key {ident})") from None
    return Signed(document, ident, canonical)


# --- which document a board applies ---------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What a board does with a document: apply it, nothing (the one applied), or refuse."""
    action: str  # "apply", "same", "refuse", "stale"
    reason: str = ""


def judge(signed: Signed, fleet: str, device: str, applied: Signed | None,
          now: float) -> Verdict:
    """The rules of docs/FLEET.md: another fleet's or device's document, a lower sequence
    than the one applied, or the same sequence with other bytes are refused (a bucket
    writer cannot take a board back to an old version); an expired one is not applied."""
    doc = signed.document
    if doc.fleet != fleet:
        return Verdict("refuse", f"document of fleet {doc.fleet!r}, this board is in {fleet!r}")
    if doc.device and doc.device != device:
        return Verdict("refuse", f"document of device {doc.device!r}, this board is {device!r}")
    if applied is not None:
        if doc.sequence < applied.document.sequence:
            return Verdict("refuse", f"sequence {doc.sequence} is lower than the applied "
                                     f"{applied.document.sequence} (a replay?)")
        if doc.sequence == applied.document.sequence:
            if signed.canonical != applied.canonical:
                return Verdict("refuse", f"sequence {doc.sequence} again with other contents")
            if doc.expired(now):
                return Verdict("stale", f"expired at {format_time(doc.expires)}")
            return Verdict("same")
    if doc.expired(now):
        return Verdict("stale", f"sequence {doc.sequence} expired at {format_time(doc.expires)}")
    return Verdict("apply")


def newest(candidates: list[Signed]) -> Signed | None:
    """Of the documents addressed to a board (its fleet's and its own), the one with the
    highest sequence (a device's own on a tie: it is the more specific)."""
    if not candidates:
        return None
    return max(candidates, key=lambda s: (s.document.sequence, bool(s.document.device)))
