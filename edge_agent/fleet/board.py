"""The board's side of a fleet rollout: a source for the lifecycle's manager.

Every edge_agent_deployment_poll_seconds (plus jitter), or at once (rate-limited) when an
MQTT message on edge-agent/<fleet>/deployment says so, the board reads its fleet's and its
own deployment documents by conditional GET, applies the one addressed to it with the
highest sequence (edge_agent.fleet.document.judge: replays, other bytes under an applied
sequence, bad signatures, other fleets' and devices' documents are refused and reported),
downloads the packages it names for this device into the model repository (resumable,
checked against the SHA-256 the signed document names, free disk checked first; written
under a hidden partial name and renamed, so the repository never reads half a package),
and tells the manager which version of each name the fleet wants (ModelManager.set_fleet:
served as if pinned once held). The manager verifies each package's own signature and swaps
as for any repository package. The bucket stays the only source of truth: MQTT only wakes.

Status, per document sequence and model (pending, downloading, validating, serving, failed,
stale), goes to PREFIX/status/<fleet>/<device>.json and, with a broker, as a retained
message on edge-agent/<fleet>/<device>/deployment.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
from typing import Callable

from edge_agent.config import AgentConfig
from edge_agent.fleet import document as d
from edge_agent.fleet import transfer

log = logging.getLogger(__name__)

# Tests only: once a package download has written this many bytes, the agent kills itself
# with SIGKILL, to prove what a restart finds after an interruption mid-download.
CRASH_ENV = "EDGE_AGENT_TEST_FLEET_CRASH_AFTER_BYTES"

PENDING, DOWNLOADING, VALIDATING, SERVING, FAILED, STALE = (
    "pending", "downloading", "validating", "serving", "failed", "stale")
STATE_FILE = "deployment.json"


def split_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without a trailing slash) of s3://BUCKET/PREFIX."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def keys_of(prefix: str, fleet: str, device: str) -> dict[str, str]:
    def join(*parts):
        return ("/".join(p for p in (prefix, *parts) if p))
    return {"fleet": join("fleets", fleet, "deployment.json"),
            "device": join("devices", device, "deployment.json"),
            "status": join("status", fleet, f"{device}.json")}


def package_file(package: d.Package) -> str:
    """The repository file name of a package: its version and bytes, so another package
    under the same version is another file (the manager refuses it as a conflict)."""
    return f"{package.version}-{package.sha256[:16]}.tar.gz"


class FleetSource:
    def __init__(self, config: AgentConfig, manager, client, *,
                 publish: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.config = config
        self.manager = manager
        self.client = client
        self.fleet = config.sagemaker_edge_core_device_fleet_name
        self.device = config.sagemaker_edge_core_device_name
        bucket, self.prefix = split_url(config.edge_agent_deployment_url)
        self.keys = keys_of(self.prefix, self.fleet, self.device)
        self.repository = config.edge_agent_model_repository
        self._publish = publish  # MQTT: the retained status message, when a broker is set
        self._clock = clock
        self._rng = rng or random.Random()
        self._state_path = os.path.join(config.edge_agent_state_dir, "fleet", STATE_FILE)
        self._etags: dict[str, str] = {}
        self._documents: dict[str, tuple[d.Signed, bytes]] = {}  # "fleet"/"device" -> last
        self.applied: d.Signed | None = None
        self._applied_envelope = b""
        self._pins: dict[str, str] = {}  # name -> version held in the repository and wanted
        self._named: set[str] = set()  # every name a document applied here named
        self._downloaded: set[str] = set()  # "name/file" this source put in the repository
        self.refusals: list[dict] = []  # the last read's refused documents and why
        # "fleet"/"device" -> why the object there did not verify: reported at every read
        # until the object changes (a conditional GET no longer returns its bytes).
        self._unverified: dict[str, dict] = {}
        self.problems: dict[str, str] = {}  # name -> why its package is not there yet
        # Packages whose bytes were not those the document names, by (key, sha256): not
        # downloaded again (every poll, by every board) until another document is applied.
        self._mismatched: dict[tuple[str, str], str] = {}
        self.stale = ""
        self.last_status: dict | None = None  # the status last written to the bucket
        self._published: dict | None = None  # ... and last published on MQTT
        self._reported_at = float("-inf")  # when the status was last written or published
        self.unreadable: list[dict] = []  # the last read's objects the store did not give
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._last_trigger = 0.0
        self._lock = threading.Lock()  # one read at a time
        self._thread: threading.Thread | None = None
        self._progress = _crash_after(os.environ.get(CRASH_ENV, ""))

    # --- state kept across restarts -----------------------------------------------------------

    def prime(self) -> None:
        """Before the manager starts: the document applied before a restart, and the versions
        it had made the fleet's (so a board restarted mid-download serves what it served)."""
        try:
            with open(self._state_path) as f:
                state = json.load(f)
            keys = self._trust()
            self._applied_envelope = state["applied"].encode()
            self.applied = d.verify(self._applied_envelope, keys)
            self._pins = {str(k): str(v) for k, v in state.get("pins", {}).items()}
            self._named = set(state.get("named", [])) | set(self._pins)
            self._downloaded = {str(p) for p in state.get("downloaded", [])}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, d.DocumentError) as e:
            log.warning("fleet: the deployment state in %s is not used: %s", self._state_path, e)
            return
        self.manager.set_fleet(self._pins, self._named - set(self._pins))

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self._state_path), mode=0o700, exist_ok=True)
        temporary = self._state_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump({"applied": self._applied_envelope.decode(), "pins": self._pins,
                       "named": sorted(self._named),
                       "downloaded": sorted(self._downloaded)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self._state_path)

    def _trust(self):
        from edge_agent.packaging.keys import load_trust
        return load_trust(self.config.edge_agent_deployment_trust, setting=d.TRUST_KEY)

    # --- one read -------------------------------------------------------------------------------

    def step(self) -> dict:
        """Read the documents, apply, download, hand the manager what the fleet wants, and
        report. Returns the status written."""
        with self._lock:
            self._read()
            if self.applied is not None:
                self._reconcile(self.applied.document)
            return self._report()

    def _read(self) -> None:
        from edge_agent.capture.destinations import DeliveryError

        keys = self._trust()
        refusals: list[dict] = []
        unreadable: list[dict] = []
        for which in ("fleet", "device"):
            key = self.keys[which]
            try:
                fetched = transfer.fetch(self.client, key, self._etags.get(which, ""))
            except DeliveryError as e:
                log.warning("fleet: cannot read %s: %s", key, e)
                unreadable.append({"object": key, "reason": str(e)})
                continue  # the last one read stands in
            if fetched.state == "missing":  # not a command: nothing changes
                self._documents.pop(which, None)
                self._etags.pop(which, None)
                self._unverified.pop(which, None)
                continue
            if fetched.state == "unchanged":
                continue
            self._etags[which] = fetched.etag
            self._unverified.pop(which, None)
            try:
                self._documents[which] = (d.verify(fetched.data, keys), fetched.data)
            except d.DocumentError as e:
                self._documents.pop(which, None)
                self._unverified[which] = {"object": key, "reason": str(e)}
        refusals.extend(self._unverified[which] for which in sorted(self._unverified))
        self.unreadable = unreadable
        now = self._clock()
        best: d.Signed | None = None
        best_envelope = b""
        self.stale = ""
        for which, (signed, envelope) in sorted(self._documents.items()):
            verdict = d.judge(signed, self.fleet, self.device, self.applied, now)
            if verdict.action == "refuse":
                refusals.append({"object": self.keys[which], "sequence": signed.document.sequence,
                                 "reason": verdict.reason})
            elif verdict.action == "stale":
                self.stale = verdict.reason
            elif verdict.action == "apply":
                if d.newest([s for s in (best, signed) if s is not None]) is signed:
                    best, best_envelope = signed, envelope
        if self.applied is not None and self.applied.document.expired(now) and best is None:
            self.stale = f"sequence {self.applied.document.sequence} expired at " \
                         f"{d.format_time(self.applied.document.expires)}"
        for refusal in refusals:
            if refusal not in self.refusals:
                log.warning("fleet: refused %s: %s", refusal["object"], refusal["reason"])
        self.refusals = refusals
        if best is not None:
            log.info("fleet: applying deployment sequence %d (%s, signed by key %s)",
                     best.document.sequence, "device" if best.document.device else "fleet",
                     best.key_id)
            self.applied, self._applied_envelope = best, best_envelope
            self._mismatched.clear()
            self._named |= set(best.document.wanted(self.device))
            self._save()

    def _reconcile(self, document: d.Document) -> None:
        from edge_agent.capture.destinations import DeliveryError

        wanted = document.wanted(self.device)
        problems: dict[str, str] = {}
        for name, package in sorted(wanted.items()):
            if self._stopping.is_set():
                return  # the agent stops: what is downloaded resumes at the next start
            folder = os.path.join(self.repository, name)
            final = os.path.join(folder, package_file(package))
            mismatch = self._mismatched.get((package.key, package.sha256))
            if mismatch is not None:
                problems[name] = mismatch
                continue
            if not os.path.exists(final):
                try:
                    os.makedirs(folder, mode=0o755, exist_ok=True)
                    log.info("fleet: downloading %s %s (%s)", name, package.version, package.key)
                    self.problems[name] = DOWNLOADING
                    start = transfer.download(self.client, self._object(package.key), final,
                                              package.sha256, package.size, self._on_bytes)
                    self._downloaded.add(f"{name}/{package_file(package)}")
                    log.info("fleet: %s %s downloaded%s", name, package.version,
                             f" (resumed at byte {start})" if start else "")
                except transfer.BytesMismatch as e:
                    problems[name] = self._mismatched[(package.key, package.sha256)] = str(e)
                    log.warning("fleet: %s %s refused: %s", name, package.version, e)
                    continue
                except (DeliveryError, transfer.TransferError, OSError) as e:
                    problems[name] = str(e)
                    log.warning("fleet: %s %s not downloaded: %s", name, package.version, e)
                    continue
            self._pins[name] = package.version
        for name in list(self._pins):
            if name not in wanted:
                del self._pins[name]
        self.problems = problems
        self.manager.set_fleet(self._pins, self._named - set(wanted))
        self.manager.rescan()
        self._remove_replaced(document, wanted)
        self._save()

    def _remove_replaced(self, document: d.Document, wanted: dict[str, d.Package]) -> None:
        """Remove the packages this source downloaded that the applied document no longer
        names (wanted here, the baseline a failed stage returns to, the previous baseline
        `fleet rollback` returns to), once the wanted version serves: without this every
        rollout left one more package on the board's disk. Packages copied in by hand are
        not touched."""
        for name, package in wanted.items():
            status = self.manager.status(name) or {}
            if not _same(status.get("version", ""), package.version):
                continue
            named = [package, document.baseline.get(name), *document.history.get(name, ())[:1]]
            keep = {f"{name}/{package_file(p)}" for p in named if p is not None}
            for entry in sorted(p for p in self._downloaded
                                if p.startswith(f"{name}/") and p not in keep):
                try:
                    os.unlink(os.path.join(self.repository, entry))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("fleet: cannot remove %s: %s", entry, e)
                    continue
                log.info("fleet: removed %s (%s %s serves)", entry, name, package.version)
                self._downloaded.discard(entry)

    def _on_bytes(self, done: int) -> None:
        """Called as a package downloads: the agent's stop does not wait for the rest of it
        (the partial file is kept, and continued at the next start)."""
        if self._stopping.is_set():
            raise transfer.Stopped("the agent stops")
        if self._progress is not None:
            self._progress(done)

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    # --- status ---------------------------------------------------------------------------------

    def model_states(self) -> dict[str, dict]:
        if self.applied is None:
            return {}
        models = {}
        for name, package in sorted(self.applied.document.wanted(self.device).items()):
            status = self.manager.status(name) or {}
            serving = status.get("version", "")
            state, reason = PENDING, ""
            failure = [v for v in status.get("versions", [])
                       if v.get("state") == "failed" and (
                           _same(v.get("version", ""), package.version)
                           or str(v.get("version", "")).startswith(package_file(package)))]
            if name in self.problems:
                state, reason = (FAILED if "not the one" in self.problems[name]
                                 or "not enough free disk" in self.problems[name]
                                 else DOWNLOADING), self.problems[name]
            elif failure:
                state, reason = FAILED, failure[0].get("reason", "")
            elif serving and _same(serving, package.version):
                state = SERVING
            elif name in self._pins:
                state = VALIDATING
            if self.stale and state != FAILED:
                state, reason = STALE, self.stale
            models[name] = {"version": package.version, "serving": serving, "state": state,
                            "reason": reason, "since": status.get("since", 0)}
        return models

    def status(self) -> dict:
        applied = self.applied.document if self.applied else None
        return {"fleet": self.fleet, "device": self.device,
                "sequence": applied.sequence if applied else 0,
                "document": ("device" if applied and applied.device else "fleet") if applied else "",
                "stale": self.stale, "refused": self.refusals, "unreadable": self.unreadable,
                "models": self.model_states()}

    def _report(self) -> dict:
        from edge_agent.capture.destinations import DeliveryError

        status = self.status()
        now = self._clock()
        if now - self._reported_at >= 2 * self.config.edge_agent_deployment_poll_seconds:
            # Written again though unchanged, so that `fleet status` can tell a board that
            # has nothing new to say from one silent for three poll periods.
            self.last_status = self._published = None
        if status == self.last_status and (self._publish is None or status == self._published):
            return status
        self._reported_at = now
        body = dict(status, time=d.format_time(now))
        data = (json.dumps(body, sort_keys=True, indent=2) + "\n").encode()
        # The broker hears of it even while the store cannot be written (an outage: just
        # when an operator needs to see it).
        if self._publish is not None and status != self._published:
            self._publish(data.decode())
            self._published = status
        if self.config.edge_agent_deployment_status_upload and status != self.last_status:
            try:
                self.client.send("PUT", self.keys["status"], data=data)
            except DeliveryError as e:
                log.warning("fleet: cannot write the status: %s", e)
                return status  # written again at the next read
        self.last_status = status
        return status

    def heartbeat_fields(self) -> dict:
        """What the MQTT heartbeat carries of the deployment."""
        return {"deployment": {"sequence": self.applied.document.sequence if self.applied else 0,
                               "stale": bool(self.stale)}}

    def set_publisher(self, publish: Callable[[str], None]) -> None:
        self._publish = publish
        self._published = None  # published at the next read

    # --- the thread -----------------------------------------------------------------------------

    def trigger(self) -> None:
        """A message said the documents changed: read them soon (at most once per
        edge_agent_deployment_trigger_min_seconds)."""
        self._wake.set()

    def _run(self) -> None:
        config = self.config
        wait = self._rng.uniform(0, config.edge_agent_deployment_poll_jitter_seconds)
        while not self._stopping.is_set():
            triggered = self._wake.wait(wait)
            if self._stopping.is_set():
                return
            if triggered:
                self._wake.clear()
                least = config.edge_agent_deployment_trigger_min_seconds
                # At most one read per `least` seconds, after a random part of it: a fleet's
                # boards, woken by one message, spread their reads instead of all at once.
                pause = max(self._last_trigger + least - time.monotonic(), 0.0) \
                    + self._rng.uniform(0, least)
                if pause > 0 and self._stopping.wait(pause):
                    return
                self._wake.clear()  # the messages of the pause are answered by this read
                self._last_trigger = time.monotonic()
            try:
                self.step()
            except Exception:  # never the end of the source: logged, tried next period
                log.exception("fleet: the deployment could not be read or applied")
            wait = config.edge_agent_deployment_poll_seconds + self._rng.uniform(
                0, config.edge_agent_deployment_poll_jitter_seconds)

    def start(self) -> "FleetSource":
        self._thread = threading.Thread(target=self._run, daemon=True, name="edge-agent-fleet")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def _same(a: str, b: str) -> bool:
    from edge_agent.models.lifecycle.policy import same_version
    return same_version(a, b)


def make_source(config: AgentConfig, manager) -> FleetSource:
    """The fleet source of a configuration, with an S3 client on the deployment bucket: the
    store's endpoint from edge_agent_s3_endpoint_url, the credentials chain of capture
    uploads (edge_agent.capture.cloud)."""
    from edge_agent.capture.cloud import credentials_provider
    from edge_agent.capture.s3 import S3Client
    from edge_agent.config import ConfigError

    if not (config.edge_agent_s3_access_key_id
            or config.sagemaker_edge_provider_aws_iot_cred_endpoint
            or os.environ.get("AWS_ACCESS_KEY_ID")):
        raise ConfigError("edge_agent_deployment_url needs credentials for the bucket: "
                          "edge_agent_s3_access_key_id and edge_agent_s3_secret_access_key, "
                          "the IoT credentials provider (sagemaker_edge_provider_aws_iot_cred_"
                          "endpoint), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the "
                          "environment")
    from edge_agent.packaging.keys import load_trust
    load_trust(config.edge_agent_deployment_trust, setting=d.TRUST_KEY)  # AgentError: refused
    bucket, _ = split_url(config.edge_agent_deployment_url)
    client = S3Client(bucket, config.sagemaker_edge_core_region, credentials_provider(config),
                      endpoint_url=config.edge_agent_s3_endpoint_url,
                      addressing_style=config.edge_agent_s3_addressing_style,
                      timeout=config.edge_agent_s3_timeout_seconds)
    return FleetSource(config, manager, client)


def _crash_after(limit: str):
    if not limit:
        return None

    def progress(done: int) -> None:
        if done >= int(limit):
            log.warning("%s=%s: killing the agent mid-download", CRASH_ENV, limit)
            os.kill(os.getpid(), signal.SIGKILL)
    return progress
