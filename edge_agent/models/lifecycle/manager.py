"""The one manager of repository models: takes in what the sources offer, asks the policy
which version of each name should serve, loads it while the one serving keeps serving,
switches, records, and retires the old one.

A swap, in phases (each has a crash point for the tests, see CRASH_ENV):
  copying / unpacking  the package is copied (a directory) or unpacked (a .tar.gz) into the
                       store's staging area, synced, verified (signature, target, files),
                       then renamed to its final name: a whole copy or none
  checking             the copy is verified again as it is read, proven in a child process
                       (unless the same model bytes were proven before), opened with its
                       delegate and its memory reserved; its signature compared
  switching            new calls go to the new version (one dictionary assignment), and
                       the switch is recorded in state.json
  cleaning             calls in flight on the old version finish, its memory is released,
                       copies beyond edge_agent_model_versions_kept are deleted
An interruption anywhere leaves the recorded version whole in the store, so a restart serves
the old or the new version, never neither.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from edge_agent.api.caller import IN_PROCESS
from edge_agent.packaging.archive import Limits
from edge_agent.config import AgentConfig
from edge_agent.errors import (AgentError, StatusCode, failed_precondition, invalid_argument,
                               not_found, shown)
from edge_agent.models.lifecycle import policy
from edge_agent.models.lifecycle.repository import Entry, Repository
from edge_agent.models.lifecycle.store import STATE_FORMAT, CrashPoint, Store, StoredVersion
from edge_agent.models.lifecycle.watch import Waker
from edge_agent.packaging.versions import Version

log = logging.getLogger(__name__)

# Tests only: the phase (copying, unpacking, checking, switching, cleaning) of a swap after
# start-up at which the agent kills itself with SIGKILL, to prove what a restart finds after
# an interruption there.
CRASH_ENV = "EDGE_AGENT_TEST_CRASH_AT"
PHASES = ("copying", "unpacking", "checking", "switching", "cleaning")

SERVING, LOADING, VALIDATING, FAILED, BLOCKED, WAITING = (
    "serving", "loading", "validating", "failed", "blocked", "waiting")
STATES = (SERVING, LOADING, VALIDATING, FAILED, BLOCKED, WAITING)
SWAP_RESULTS = ("ok", "failed", "waiting")
ROOM_TO_RETRY = 1 << 20  # more free on the state directory's disk before a copy is retried
HISTORY_KEPT = 32  # versions served remembered per name (rollbacks go to those still held)


def crash_point(armed: threading.Event, env: Mapping[str, str] = os.environ) -> CrashPoint:
    """The crash point CRASH_ENV asks for, active once `armed` is set."""
    wanted = env.get(CRASH_ENV, "")
    if not wanted:
        return lambda phase: None

    def crash(phase: str) -> None:
        if phase == wanted and armed.is_set():
            log.warning("%s=%s: killing the agent here", CRASH_ENV, phase)
            os.kill(os.getpid(), signal.SIGKILL)
    return crash


@dataclass
class Failure:
    """A version that failed, by its bytes. `memory`: for want of memory, retried once more
    is free than when it failed (`free_at`)."""
    name: str
    version: str
    reason: str
    memory: bool = False
    free_at: int = 0

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "reason": self.reason}


@dataclass
class NameState:
    """What one name's manager knows: what serves, its state, since when."""
    state: str = LOADING
    reason: str = ""
    since: float = field(default_factory=time.time)
    serving: StoredVersion | None = None
    model: Any = None  # the LoadedModel serving

    def set(self, state: str, reason: str = "") -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.reason = state, reason


def _signature(model) -> list[tuple]:
    return [(s.role, s.name, s.data_type, s.signature) for s in (*model.inputs, *model.outputs)]


def _describe_signature(model) -> str:
    from edge_agent.protocol.tensors import data_type_name
    return ", ".join(f"{s.role} '{s.name}' {data_type_name(s.data_type)}{list(s.signature)}"
                     for s in (*model.inputs, *model.outputs))


class ModelManager:
    """The repository's models for one AgentService (`service`: claim, install, withdraw,
    and its loader and budget)."""

    def __init__(self, service, config: AgentConfig,
                 notify: Callable[[str], Any] | None = None,
                 crash: CrashPoint | None = None):
        self.service = service
        self.config = config
        self._notify = notify or (lambda message: None)
        self._started = threading.Event()  # start-up done (the crash points are armed)
        self._crash = crash or crash_point(self._started)
        limits = Limits(config.edge_agent_max_package_bytes, config.edge_agent_max_package_files)
        self.store = Store(os.path.join(config.edge_agent_state_dir, "models"), limits,
                           self._crash)
        self.repository = Repository(config.edge_agent_model_repository)
        self._lock = threading.RLock()  # one reconciliation (or rollback) at a time
        self._names: dict[str, NameState] = {}
        self._failed: dict[str, Failure] = {}  # manifest digest -> why
        self._entries: dict[str, str] = {}  # repository entry identity -> manifest digest
        self._entry_failed: dict[str, tuple[str, str, str]] = {}  # identity -> name, label, why
        # The trusted keys' ids when those refusals were made: a key added or removed (the
        # usual fix for "signed by an untrusted key") retries them, though their bytes are the same.
        self._entry_failed_trust = ""
        # Entries the state directory had no room for: identity -> (name, label, why, the
        # bytes free then); tried again once more is free (not recorded: a restart retries).
        self._entry_waiting: dict[str, tuple[str, str, str, int]] = {}
        self._pins: dict[str, str] = {}  # runtime pins (rollback), above the configuration's
        # A fleet deployment (edge_agent.fleet.board) as a source: the version of each name
        # its applied document wants (below the runtime pins, above the configuration's), and
        # the names it named before and no longer does (unloaded once the others serve).
        self._fleet: dict[str, str] = {}
        self._fleet_dropped: set[str] = set()
        self._history: dict[str, list[str]] = {}  # name -> digests served, latest first
        self._recorded: dict[str, str] = {}  # name -> digest recorded as serving
        self.swaps: dict[tuple[str, str], int] = {}  # (name, result) -> count
        self._problems: dict[str, str] = {}  # repository folders not read, and why (logged)
        self._held: dict[str, list[StoredVersion]] = {}  # the store's copies, as last read
        self._proofs_saved: dict[str, int] = {}
        self._state_saved: dict | None = None  # state.json as last read or written
        self._waker: Waker | None = None
        self._watched: set[str] = set()  # the repository's folders watched
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- start and stop -------------------------------------------------------------------

    def start_up(self) -> None:
        """Before the agent says it is ready: the records read, every name's version loaded
        (what served before, or what the repository now offers)."""
        self.store.prepare()
        state = self.store.read_state()
        self._state_saved = state
        try:
            self._restore(state)
        except (AttributeError, TypeError, ValueError) as e:  # not what this agent writes
            log.error("the model repository's state.json is not understood (%s): starting "
                      "from the copies held, pins and failures forgotten", e)
            self._pins, self._history, self._recorded = {}, {}, {}
            self._entries, self._failed, self._entry_failed = {}, {}, {}
        proofs = self.store.read_proofs()
        self.service.loader.proofs.update(proofs)
        self._proofs_saved = dict(proofs)
        self.reconcile(starting=True)
        self._started.set()

    def _restore(self, state: dict) -> None:
        # A pin that names no version would let the name serve none: forgotten.
        self._pins = {k: v for k, v in state.get("pins", {}).items()
                      if isinstance(v, str) and policy.parse(v) is not None}
        self._history = {k: list(v) for k, v in state.get("history", {}).items()}
        self._recorded = {k: v.get("digest", "") for k, v in state.get("serving", {}).items()
                          if isinstance(v, dict)}
        self._entries = dict(state.get("entries", {}))
        for digest, failure in state.get("failed", {}).items():
            if isinstance(failure, dict):
                self._failed[digest] = Failure(failure.get("name", ""), failure.get("version", ""),
                                               failure.get("reason", ""))
        self._entry_failed_trust = str(state.get("entries_failed_trust", ""))
        for identity, failure in state.get("entries_failed", {}).items():
            if isinstance(failure, list) and len(failure) == 3:
                self._entry_failed[identity] = (str(failure[0]), str(failure[1]), str(failure[2]))

    def start(self) -> "ModelManager":
        """Watch the repository in a thread of its own."""
        self._waker = Waker()
        self._watch()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edge-agent-models")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._waker is not None:
            self._waker.wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def wake(self) -> None:
        """Look again soon (an application unloaded a model: a blocked name may be free)."""
        if self._waker is not None:
            self._waker.wake()

    def _watch(self) -> None:
        """inotify watches on the repository and its folders (new folders included). A
        folder watched for the first time is scanned once more: what was moved into it
        before its watch existed made no event."""
        root = self.config.edge_agent_model_repository
        try:
            folders = [e.path for e in os.scandir(root)
                       if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
        except OSError:
            folders = []
        if self._waker is not None:
            self._waker.watch([root, *folders])
            if set(folders) - self._watched:
                self._waker.wake()
        self._watched = set(folders)

    def _run(self) -> None:
        period = self.config.edge_agent_model_repository_poll_seconds
        waker = self._waker
        assert waker is not None
        while not self._stopping.is_set():
            waker.wait(period)
            if self._stopping.is_set():
                return
            try:
                self.reconcile()
                self._watch()
            except Exception:  # never the end of the watch: logged, tried again next period
                log.exception("the model repository could not be reconciled")

    # --- reconciling ------------------------------------------------------------------------

    def reconcile(self, starting: bool = False) -> None:
        """Take in new packages, then bring every name to the version it should serve."""
        with self._lock:
            entries = self.repository.scan()
            for folder, why in self.repository.problems.items():
                if self._problems.get(folder) != why:
                    log.warning("model repository: folder '%s' is not read: %s", folder, why)
            self._problems = dict(self.repository.problems)
            trust = self._trust_fingerprint()
            if trust != self._entry_failed_trust:
                if self._entry_failed:
                    log.info("model repository: the trusted keys changed: the packages refused "
                             "before are read again")
                self._entry_failed, self._entry_failed_trust = {}, trust
            free = None
            for entry in entries:
                if entry.identity in self._entries or entry.identity in self._entry_failed:
                    continue
                waiting = self._entry_waiting.get(entry.identity)
                if waiting is not None:
                    free = self.store.free_bytes() if free is None else free
                    # Not each time a few bytes free: every try fills the disk again, for
                    # the capture journal too.
                    if free < waiting[3] + max(ROOM_TO_RETRY, waiting[3] // 10):
                        continue
                self._admit(entry)
            # Entries gone from the repository are forgotten (their copies are not).
            present = {e.identity for e in entries}
            self._entries = {i: d for i, d in self._entries.items() if i in present}
            self._entry_failed = {i: f for i, f in self._entry_failed.items() if i in present}
            self._entry_waiting = {i: w for i, w in self._entry_waiting.items() if i in present}
            held = self.store.versions()
            names = (set(held) | set(self._recorded) | set(self._names)
                     | {e.name for e in entries}) - self._fleet_dropped
            for name in sorted(names):
                if starting:
                    self._notify("EXTEND_TIMEOUT_USEC=%d" % int(
                        (self.config.edge_agent_model_probe_timeout_seconds + 30) * 1e6))
                self._settle(name, held.get(name, []))
            self._drop_unwanted()
            self._save_then_prune(held)

    def _trust_fingerprint(self) -> str:
        """The ids of the keys packages are verified with now ("" when none can be read)."""
        from edge_agent.packaging.keys import load_trust

        try:
            return ",".join(sorted(load_trust(self.config.sagemaker_edge_core_root_certs_path)))
        except AgentError:
            return ""

    def _admit(self, entry: Entry) -> None:
        """Copy a new repository entry into the store and verify it there."""
        from edge_agent.platform.accelerators import DelegateSettings
        from edge_agent.packaging.keys import load_trust
        from edge_agent.packaging.packages import verify_signed_manifest

        config = self.config
        staged = None
        try:
            staged = self.store.stage(entry.path, entry.label)
            keys = load_trust(config.sagemaker_edge_core_root_certs_path)
            # What it is (signature, manifest, target, file names); its files' hashes are
            # checked as the copy is loaded, which reads them anyway.
            manifest, key_id = verify_signed_manifest(
                staged, keys, label=entry.label,
                delegate=DelegateSettings(config.edge_agent_delegate,
                                          config.edge_agent_delegate_options))
            if manifest.name != entry.name:
                raise failed_precondition(
                    f"package '{shown(entry.label)}': its signed manifest names model "
                    f"'{shown(manifest.name)}', but it is in the folder of '{entry.name}'")
            if policy.parse(manifest.version) is None:
                raise failed_precondition(
                    f"package '{shown(entry.label)}': version {manifest.version!r} is not a "
                    "version (MAJOR[.MINOR[.PATCH]][-PRERELEASE])")
            digest = _manifest_digest(staged)
            for other in self.store.versions().get(entry.name, []):
                if policy.same_version(other.version, manifest.version) and other.digest != digest:
                    raise failed_precondition(
                        f"package '{shown(entry.label)}': conflict: version {manifest.version} of "
                        f"'{entry.name}' is already held with other bytes (manifest sha256 "
                        f"{other.short}..., this one {digest[:16]}...); give it a new version")
            stored = self.store.keep(staged, entry.name, manifest.version, key_id)
            staged = None
            self._entry_waiting.pop(entry.identity, None)
            self._entries[entry.identity] = stored.digest
            log.info("model repository: %s is %s %s (signed by key %s), held as %s",
                     entry.label, entry.name, manifest.version, key_id, stored.path)
        except AgentError as e:
            if e.code == StatusCode.RESOURCE_EXHAUSTED:  # the state directory's disk is full
                log.warning("model repository: %s waits for room in the state directory: %s",
                            entry.label, e.message)
                self._entry_waiting[entry.identity] = (entry.name, entry.label, e.message,
                                                       self.store.free_bytes())
                self._count(entry.name, "waiting")
                return
            log.warning("model repository: %s refused: %s", entry.label, e.message)
            self._entry_waiting.pop(entry.identity, None)
            self._entry_failed[entry.identity] = (entry.name, entry.label, e.message)
            self._count(entry.name, "failed")
        finally:
            if staged is not None:
                self.store.discard_staged(staged)

    def _state(self, name: str) -> NameState:
        return self._names.setdefault(name, NameState())

    def _pin(self, name: str) -> str | None:
        return (self._pins.get(name) or self._fleet.get(name)
                or self.config.edge_agent_model_pins.get(name))

    # --- the fleet as a source --------------------------------------------------------------

    def set_fleet(self, wanted: Mapping[str, str], dropped: Collection[str] = ()) -> None:
        """What a fleet deployment wants: name -> version (served as if pinned, once held),
        and names it no longer wants, unloaded once every wanted name serves its version.
        Takes effect at the next reconciliation (call rescan() to make it now)."""
        with self._lock:
            self._fleet = dict(wanted)
            self._fleet_dropped = set(dropped) - set(wanted)

    def _drop_unwanted(self) -> None:
        if not self._fleet_dropped:
            return
        for name, version in self._fleet.items():
            current = self._names.get(name)
            if current is None or current.serving is None \
                    or not policy.same_version(current.serving.version, version):
                return  # not before the others serve what the fleet wants
        for name in sorted(self._fleet_dropped & set(self._names)):
            current = self._names.pop(name)
            if current.model is not None:
                self._retire(self.service.withdraw(name, current.model))
            self.service.release(name)
            self._recorded.pop(name, None)
            log.info("model '%s' unloaded: the fleet's deployment no longer names it", name)

    def _excluded(self) -> set[str]:
        """Digests not to try now: failures for good, and for want of memory while no more
        memory is free than when they failed."""
        free = self._budget_free()
        return {digest for digest, f in self._failed.items()
                if not f.memory or free <= f.free_at}

    def _budget_free(self) -> int:
        """The memory budget's free part, without the system's MemAvailable: a version that
        did not fit is tried again once a model's reservation was released, not whenever
        the system's figure moves."""
        budget = self.service.budget
        return budget.total - budget.used

    def _settle(self, name: str, held: list[StoredVersion]) -> None:
        current = self._state(name)
        if not self.service.claim(name):
            current.set(BLOCKED, f"an application loaded a model named '{name}' itself; the "
                                 "repository serves it once the application unloads it")
            return
        for _attempt in range(len(held) + 1):
            choice = policy.choose(held, self._pin(name), self._excluded())
            target = choice.version
            if target is None:
                if current.model is None:
                    failures = [f.reason for d, f in self._failed.items() if f.name == name]
                    failures += [why for n, _label, why in self._entry_failed.values() if n == name]
                    failures += [w[2] for w in self._entry_waiting.values() if w[0] == name]
                    waiting = (any(f.memory for f in self._failed.values() if f.name == name)
                               or any(w[0] == name for w in self._entry_waiting.values()))
                    current.set(WAITING if waiting else FAILED,
                                (failures[-1] if failures else choice.note))
                return
            if (current.model is not None and current.serving is not None
                    and current.serving.digest == target.digest):
                if current.state != SERVING:
                    current.set(SERVING, current.reason)
                return
            if self._swap(name, current, target):
                return
            # It failed (and is excluded now): the next best, which may be the one serving.

    def _swap(self, name: str, current: NameState, target: StoredVersion) -> bool:
        old = current.model
        what = f"model '{name}' {target.version}"
        preserving_resources = old is not None and \
            self.config.edge_agent_swap_policy == "resource_preserving"
        if preserving_resources:
            self._retire(self.service.withdraw(name, old))
            current.model = None
        current.set(LOADING, f"loading {target.version}")
        try:
            self._crash("checking")
            model = self._load(name, target)
        except AgentError as e:
            memory = e.code == StatusCode.RESOURCE_EXHAUSTED
            self._failed[target.digest] = Failure(name, target.version, e.message, memory,
                                                  self._budget_free())
            self._count(name, "waiting" if memory else "failed")
            log.warning("%s not served: %s", what, e.message)
            if preserving_resources:
                self._reload(name, current)
            if current.model is not None:
                current.set(SERVING, f"{target.version} "
                                     f"{'waits for memory' if memory else 'failed'}: {e.message}")
            else:
                current.set(WAITING if memory else FAILED, e.message)
            return False
        current.set(VALIDATING, f"validating {target.version}")
        if old is not None and not self.config.edge_agent_allow_signature_change \
                and _signature(old) != _signature(model):
            self.service.budget.release(model.footprint)
            serving = current.serving.version if current.serving else "the version serving"
            reason = (f"{what}: its inputs and outputs ({_describe_signature(model)}) differ "
                      f"from those of {serving} ({_describe_signature(old)}); set "
                      "edge_agent_allow_signature_change to serve it anyway")
            self._failed[target.digest] = Failure(name, target.version, reason)
            self._count(name, "failed")
            log.warning("%s", reason)
            if preserving_resources:
                self._reload(name, current)
            current.set(SERVING if current.model is not None else FAILED, reason)
            return False
        self._crash("switching")
        model.version = target.version
        model.source = "repository"
        previous = self.service.install(name, model)
        current.model, current.serving = model, target
        history = [target.digest] + [d for d in self._history.get(name, []) if d != target.digest]
        self._history[name] = history[:HISTORY_KEPT]
        self._recorded[name] = target.digest
        current.set(SERVING, "")
        try:
            self._save()
        except OSError as e:  # a full disk: it serves; a restart would serve the old version
            log.error("model '%s' %s serves, but the record of it could not be written (%s): "
                      "after a restart the version recorded before serves", name,
                      target.version, e)
        self._count(name, "ok")
        log.info("%s serves (signed by key %s)", what, target.key_id or "?")
        self._crash("cleaning")
        if previous is not None and previous is not model:
            self._retire(previous)
        return True

    def _reload(self, name: str, current: NameState) -> None:
        """resource_preserving: the old version back after the new one failed."""
        if current.serving is None:
            return
        try:
            model = self._load(name, current.serving)
        except AgentError as e:
            log.error("model '%s' %s could not be loaded again: %s", name,
                      current.serving.version, e.message)
            return
        model.version, model.source = current.serving.version, "repository"
        self.service.install(name, model)
        current.model = model

    def _load(self, name: str, version: StoredVersion):
        from edge_agent.models.loading import ModelSource
        fd = os.open(version.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        source = ModelSource(fd, version.path)
        try:
            return self.service.loader.load(name, version.path, source, IN_PROCESS,
                                            remember_proof=True)
        finally:
            source.close()

    def _retire(self, model) -> None:
        """After the switch: calls in flight on `model` finish, then its memory is freed."""
        if model is None:
            return
        model.wait_idle()
        self.service.budget.release(model.footprint)

    def _count(self, name: str, result: str) -> None:
        self.swaps[(name, result)] = self.swaps.get((name, result), 0) + 1

    # --- records and copies -----------------------------------------------------------------

    def _save(self) -> None:
        serving = {}
        for name, digest in self._recorded.items():
            state = self._names.get(name)
            version = state.serving.version if state and state.serving else ""
            serving[name] = {"digest": digest, "version": version}
        document = {
            "serving": serving, "pins": self._pins, "history": self._history,
            "entries": self._entries,
            "failed": {d: f.to_json() for d, f in self._failed.items() if not f.memory},
            "entries_failed": {i: list(f) for i, f in self._entry_failed.items()},
            "entries_failed_trust": self._entry_failed_trust,
        }
        # Written only when it changed: the poll runs every few seconds for the agent's
        # whole life, and each write costs two fsyncs of the board's flash.
        written = json.loads(json.dumps(dict(document, format=STATE_FORMAT)))
        if written != self._state_saved:
            self.store.write_state(document)
            self._state_saved = written
        proofs = self.service.loader.proofs
        if proofs != self._proofs_saved:
            self.store.write_proofs(proofs)
            self._proofs_saved = dict(proofs)

    def _save_then_prune(self, held: Mapping[str, list[StoredVersion]] | None = None) -> None:
        """Record what serves, then delete the copies no longer kept; a record that cannot be
        written (a full disk) is logged, what serves serves on, and no copy goes."""
        try:
            self._save()
        except OSError as e:
            log.error("the model repository's record could not be written (%s): no copy is "
                      "deleted until it is; after a restart the versions recorded before are "
                      "chosen from again", e)
        else:
            self._prune(self.store.versions() if held is None else held)
        self._held = self.store.versions()

    def _prune(self, held: Mapping[str, list[StoredVersion]]) -> None:
        """Keep the version serving, a pinned one, the last edge_agent_model_versions_kept
        served, and higher versions still to be tried; delete the rest (after _save)."""
        kept = self.config.edge_agent_model_versions_kept
        for name, versions in held.items():
            state = self._names.get(name)
            serving = state.serving if state else None
            keep = set(self._history.get(name, [])[:kept])
            if serving is not None:
                keep.add(serving.digest)
            pin = self._pin(name)
            serving_parsed = policy.parse(serving.version) if serving else None
            for version in versions:
                parsed = policy.parse(version.version)
                if pin is not None and policy.same_version(version.version, pin):
                    keep.add(version.digest)
                elif ((version.digest not in self._failed or self._failed[version.digest].memory)
                      and parsed is not None
                      and (serving_parsed is None or parsed > serving_parsed)):
                    keep.add(version.digest)  # not yet served: a candidate still
            for version in versions:
                if version.digest not in keep:
                    log.info("model '%s': deleting the copy of %s (%s)", name, version.version,
                             version.path)
                    self.store.remove(version)

    # --- requests ---------------------------------------------------------------------------

    def manages(self, name: str) -> bool:
        return name in self._names

    def rescan(self) -> None:
        self.reconcile()

    def rollback(self, name: str, to: str = "") -> None:
        with self._lock:
            current = self._names.get(name)
            if current is None:
                raise not_found(f"the model repository manages no model named '{shown(name)}'")
            held = self.store.versions().get(name, [])
            if to:
                try:
                    Version.parse(to)
                except ValueError as e:
                    raise invalid_argument(f"rollback of model '{name}': {e}") from None
                matches = [v for v in held if policy.same_version(v.version, to)]
                if not matches:
                    have = ", ".join(v.version for v in policy.newest_first(held)) or "none"
                    raise failed_precondition(
                        f"model '{name}': version {shown(to)} is not held (held: {have})")
                target = matches[0]
            else:
                serving = current.serving.digest if current.serving else ""
                by_digest = {v.digest: v for v in held}
                earlier = [by_digest[d] for d in self._history.get(name, [])
                           if d != serving and d in by_digest]
                if not earlier:
                    raise failed_precondition(
                        f"model '{name}': no earlier version is held to roll back to "
                        f"(edge_agent_model_versions_kept is {self.config.edge_agent_model_versions_kept})")
                target = earlier[0]
            failure = self._failed.get(target.digest)
            if failure is not None and not failure.memory:
                raise failed_precondition(
                    f"model '{name}' {target.version} failed before: {failure.reason}")
            self._failed.pop(target.digest, None)
            previous_pin = self._pins.get(name)
            self._pins[name] = target.version
            self._settle(name, held)
            if current.serving is None or current.serving.digest != target.digest:
                if previous_pin is None:
                    self._pins.pop(name, None)
                else:
                    self._pins[name] = previous_pin
                self._settle(name, held)
                self._save()
                raise failed_precondition(f"model '{name}': rollback to {target.version} "
                                          f"failed: {current.reason}")
            self._save_then_prune()

    def unpin(self, name: str) -> None:
        with self._lock:
            if name not in self._names:
                raise not_found(f"the model repository manages no model named '{shown(name)}'")
            self._pins.pop(name, None)
            self._settle(name, self.store.versions().get(name, []))
            self._save_then_prune()

    # --- what is reported -------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._names)

    def summary(self) -> str:
        """'name version, ...' of what serves (or each name's state), for the log."""
        return ", ".join(f"{name} {s.serving.version if s.serving else s.state}"
                         for name, s in sorted(self._names.items())) or "empty"

    def fill_metrics(self, states) -> set[str]:
        """Add a ModelState per managed name to `states`; the names added. (Read without
        the manager's lock: a scrape never waits for a swap.)"""
        names = dict(self._names)
        swaps = dict(self.swaps)
        for name, current in sorted(names.items()):
            serving = current.serving
            message = states.add(name=name, source="repository", state=current.state,
                                 reason=current.reason, since_unix_seconds=current.since,
                                 version=serving.version if serving else "")
            for result in SWAP_RESULTS:
                message.swaps.add(result=result, count=swaps.get((name, result), 0))
        return set(names)

    def status(self, name: str) -> dict | None:
        """What ListModels and the metrics say of a repository name."""
        current = self._names.get(name)
        if current is None:
            return None
        # Copies: the manager's thread may change these while an RPC's thread reads them.
        held = list(self._held.get(name, []))
        failed, entry_failed = dict(self._failed), dict(self._entry_failed)
        entry_waiting = dict(self._entry_waiting)
        serving = current.serving.digest if current.serving else ""
        pin = self._pin(name)
        versions = []
        for v in policy.newest_first(held):
            failure = failed.get(v.digest)
            versions.append({
                "version": v.version, "sha256": v.digest,
                "state": SERVING if v.digest == serving else
                (WAITING if failure and failure.memory else FAILED if failure else "held"),
                "reason": failure.reason if failure else "",
                "pinned": pin is not None and policy.same_version(v.version, pin)})
        held_digests = {v.digest for v in held}
        for digest, failure in failed.items():
            if failure.name == name and digest not in held_digests:  # its copy is gone
                versions.append({"version": failure.version, "sha256": digest,
                                 "state": WAITING if failure.memory else FAILED,
                                 "reason": failure.reason, "pinned": False})
        for identity, (owner, label, why) in entry_failed.items():
            if owner == name:
                versions.append({"version": os.path.basename(label), "sha256": identity,
                                 "state": FAILED, "reason": why, "pinned": False})
        for identity, (owner, label, why, _free) in entry_waiting.items():
            if owner == name:
                versions.append({"version": os.path.basename(label), "sha256": identity,
                                 "state": WAITING, "reason": why, "pinned": False})
        return {"state": current.state, "reason": current.reason, "since": current.since,
                "version": current.serving.version if current.serving else "",
                "pinned": pin or "", "versions": versions}


def _manifest_digest(directory: str) -> str:
    from edge_agent.models.lifecycle.store import manifest_digest
    return manifest_digest(directory)
