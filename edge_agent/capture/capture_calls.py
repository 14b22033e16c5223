"""CaptureData and GetCaptureDataStatus: what AgentService delegates to.

A capture is checked, copied out of shared memory, admitted against the two bounds (captures
not yet delivered: sagemaker_edge_core_capture_data_buffer_size; journal disk use:
edge_agent_capture_max_spool_mb), journaled durably, and only then acknowledged. The
Batcher delivers it in the background. Nothing is opened or started until the first capture,
unless a previous run left a journal behind: then it is replayed at start-up and what it
holds is delivered.

The client hears success only for a capture that will be delivered, and an error only for
one that will not: shared-memory data truncated while it was copied is refused before it is
journaled; a record whose flush failed is marked ABORT in the journal before INTERNAL is
answered (if even that cannot be written, it is logged: the record may come back at the next
start).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from edge_agent import agent_pb2 as pb
from edge_agent.capture import entries, replay
from edge_agent.capture.batcher import BatchSettings, Batcher
from edge_agent.capture.durable import make_directories
from edge_agent.capture.journal import Journal, Location, NotDurable
from edge_agent.capture.manifest import MAX_EMBED_LIMIT
from edge_agent.capture.status import StatusLog
from edge_agent.capture.validate import capture_key, checked_capture
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.errors import (AgentError, StatusCode, invalid_argument, not_found,
                               resource_exhausted)

if TYPE_CHECKING:  # made only where periodic upload is configured (it needs boto3)
    from edge_agent.capture.upload import PeriodicUploader

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class SharedMemoryCall(Protocol):
    """What CaptureData needs of a shared-memory call (edge_agent.shm.segments.ShmCall)."""

    def read(self, handle: pb.SharedMemoryHandle, nbytes: int, tensor_name: str): ...

    def faulted(self) -> list: ...


def check_config(config: AgentConfig) -> None:
    """Stop start-up (ConfigError) on capture settings that would lose captures later."""
    from edge_agent.capture.cloud import check_cloud

    limit = config.sagemaker_edge_core_capture_data_base64_embed_limit
    if limit > MAX_EMBED_LIMIT:
        raise ConfigError(f"sagemaker_edge_core_capture_data_base64_embed_limit: at most "
                          f"{MAX_EMBED_LIMIT} bytes, got {limit}")
    cloud_needed_by = ("sagemaker_edge_core_capture_data_destination Cloud"
                       if config.sagemaker_edge_core_capture_data_destination == "Cloud" else
                       "sagemaker_edge_core_capture_data_periodic_upload"
                       if config.sagemaker_edge_core_capture_data_periodic_upload else None)
    if cloud_needed_by and config.sagemaker_edge_provider_provider == "None":
        raise ConfigError(f"{cloud_needed_by} uploads to the cloud, but "
                          "sagemaker_edge_provider_provider is None (no cloud uploads): capture "
                          "to Disk without periodic upload, or set the provider to Aws")
    if config.sagemaker_edge_core_capture_data_destination == "Cloud":
        check_cloud(config, "sagemaker_edge_core_capture_data_destination Cloud")
    elif config.sagemaker_edge_core_capture_data_periodic_upload:
        check_cloud(config, "sagemaker_edge_core_capture_data_periodic_upload")


@dataclass(frozen=True)
class _Parts:
    """What a started service runs, made together by _start (nothing before it)."""
    journal: Journal
    statuses: StatusLog
    batcher: Batcher


class CaptureService:
    def __init__(self, config: AgentConfig):
        check_config(config)
        self.config = config
        self.directory = os.path.join(config.edge_agent_state_dir, "capture")
        self.max_spool = config.edge_agent_capture_max_spool_mb * MIB
        self.buffer_size = config.sagemaker_edge_core_capture_data_buffer_size
        self._lock = threading.Lock()
        self._pending = 0  # acknowledged, not yet delivered or failed
        self._reserved_bytes = 0  # admitted, being journaled
        # Since start, for the metrics: acknowledged, and finished by outcome.
        self._accepted = 0
        self._finished: dict[int, int] = {pb.SUCCESS: 0, pb.FAILURE: 0}
        self._parts: _Parts | None = None  # once started
        # Periodic upload of what Disk capture wrote, where configured (made by _start).
        self._uploader: PeriodicUploader | None = None
        self._closed = False
        if os.path.isdir(self.directory):
            self._start()  # a previous run's captures: deliver them now, not at the next call

    @property
    def _started(self) -> bool:
        return self._parts is not None

    @property
    def journal(self) -> Journal | None:
        return self._parts.journal if self._parts is not None else None

    @property
    def batcher(self) -> Batcher | None:
        return self._parts.batcher if self._parts is not None else None

    # --- start ------------------------------------------------------------------------------

    def _ensure_started(self) -> _Parts:
        # After close the journal and the status log are closed: say so, not what a closed
        # file raises. (The agent closes this service once its fronts stopped taking calls
        # and the calls in progress were answered, or their grace ran out.)
        if self._closed:
            raise AgentError(StatusCode.UNAVAILABLE, "the agent is shutting down")
        parts = self._parts
        if parts is None:
            with self._lock:
                if self._closed:
                    raise AgentError(StatusCode.UNAVAILABLE, "the agent is shutting down")
                parts = self._parts if self._parts is not None else self._start()
        return parts

    def _start(self) -> _Parts:
        config = self.config
        fsync = config.edge_agent_capture_fsync
        make_directories(self.directory, fsync, mode=0o700)
        # Segments small enough that freed space comes back soon, few enough to stay cheap.
        segment_bytes = max(MIB, min(16 * MIB, self.max_spool // 8))
        journal = Journal(os.path.join(self.directory, "journal"), segment_bytes, fsync)
        statuses = StatusLog(os.path.join(self.directory, "status.log"),
                             config.edge_agent_capture_status_history, fsync)
        statuses.open()
        replayed = journal.open()
        if config.sagemaker_edge_core_capture_data_destination == "Disk" and \
                config.sagemaker_edge_core_capture_data_periodic_upload:
            from edge_agent.capture.cloud import s3_client
            from edge_agent.capture.upload import PeriodicUploader
            # Before the batcher starts: the Disk destination tells it what it writes.
            self._uploader = PeriodicUploader(
                config.sagemaker_edge_core_capture_data_disk_path,
                config.sagemaker_edge_core_capture_data_periodic_upload_period_seconds,
                lambda: s3_client(config))
        batcher = Batcher(journal, statuses, self._make_destination, self._settings(),
                          self._delivered)
        parts = _Parts(journal, statuses, batcher)
        self._resume(parts, replayed)
        batcher.start()
        if self._uploader is not None:
            self._uploader.start()
        self._parts = parts
        return parts

    def _settings(self) -> BatchSettings:
        c = self.config
        return BatchSettings(
            batch_size=c.sagemaker_edge_core_capture_data_batch_size,
            push_period=c.sagemaker_edge_core_capture_data_push_period_seconds,
            prefix=c.sagemaker_edge_core_folder_prefix,
            device_name=c.sagemaker_edge_core_device_name,
            fleet_name=c.sagemaker_edge_core_device_fleet_name,
            embed_limit=c.sagemaker_edge_core_capture_data_base64_embed_limit,
            max_attempts=c.edge_agent_capture_max_attempts,
            retry_max_seconds=c.edge_agent_capture_retry_max_seconds)

    def _make_destination(self):
        from edge_agent.capture.destinations import DiskDestination, S3Destination

        if self.config.sagemaker_edge_core_capture_data_destination == "Cloud":
            from edge_agent.capture.cloud import s3_client
            return S3Destination(s3_client(self.config))
        return DiskDestination(self.config.sagemaker_edge_core_capture_data_disk_path,
                               self.config.edge_agent_capture_fsync,
                               on_written=self._uploader.enqueue if self._uploader else None)

    def _resume(self, parts: _Parts, replayed) -> None:
        """Rebuild what is pending from the journal alone (replay.py): unfinished batches as
        they were sealed, then the captures not yet in a batch, in the order they were
        accepted. (A capture whose outcome is recorded but whose DONE is not — a crash
        between the two — is written again under the same keys; its status stays.)"""
        found = replay.pending(replayed)
        for batch in found.batches:
            parts.journal.pin_replayed(batch.record.segment)
            parts.batcher.resume(batch)
        for key, location in found.accepted.items():
            parts.journal.pin_replayed(location.segment)
            parts.statuses.reserve(key)
        for key in found.unbatched:
            parts.batcher.add(key, found.accepted[key])
        self._pending = len(found.accepted)
        parts.journal.compact_after_replay()
        if found.accepted:
            log.info("capture journal: %d captures to deliver from a previous run",
                     len(found.accepted))

    @property
    def pending(self) -> int:
        """Captures acknowledged and not yet delivered or failed."""
        with self._lock:
            return self._pending

    def _delivered(self, count: int, status: int = pb.SUCCESS) -> None:
        with self._lock:
            self._pending -= count
            self._finished[status] += count

    def fill_metrics(self, message: pb.CaptureMetrics) -> None:
        """The capture counters and state of the GetMetrics answer."""
        with self._lock:
            message.accepted = self._accepted
            message.delivered = self._finished[pb.SUCCESS]
            message.failed = self._finished[pb.FAILURE]
            message.backlog = self._pending
        message.journal_limit_bytes = self.max_spool
        parts = self._parts
        if parts is not None:
            message.journal_bytes = parts.journal.total_bytes
            if parts.batcher.last_error is not None:
                message.last_error_unix_seconds, message.last_error = parts.batcher.last_error

    # --- the RPCs ---------------------------------------------------------------------------

    def capture(self, request: pb.CaptureDataRequest, shm: SharedMemoryCall | None = None) -> None:
        """Journal the capture; `shm`: the call's shared memory, if its tensors use any."""
        key, stored = checked_capture(request, shm.read if shm is not None else None)
        if shm is not None:
            self._check_not_truncated(shm)
        parts = self._ensure_started()
        payload = entries.encode_accept(key, stored)
        known = parts.statuses.reserve(key)
        if known is not None:
            raise AgentError(StatusCode.ALREADY_EXISTS,
                             f"capture_id {request.capture_id} was already used (status "
                             f"{pb.CaptureDataStatus.Name(known.status)}); use a new id per capture")
        accepted = False
        try:
            location = self._journal(parts.journal, key, payload)
            accepted = True
        except OSError as e:
            raise self._not_journaled(e) from None
        finally:
            if not accepted:  # refused (a bound, the disk): the id may be sent again
                parts.statuses.release(key)
        parts.batcher.add(key, location)

    def _not_journaled(self, error: OSError) -> AgentError:
        """The reply for a capture the disk refused: a full disk or quota is a full spool
        (RESOURCE_EXHAUSTED: retry once deliveries or the operator free space), anything
        else a fault of the board (INTERNAL). Either way it was not accepted."""
        reason = f"{error.strerror or error}; it was not accepted"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return resource_exhausted(f"the disk under the capture journal {self.directory} is "
                                      f"full ({reason}): retry once space is freed")
        return AgentError(StatusCode.INTERNAL,
                          f"cannot journal the capture in {self.directory}: {reason}")

    @staticmethod
    def _check_not_truncated(shm: SharedMemoryCall) -> None:
        """A POSIX segment truncated while its bytes were copied reads as zeros: refuse the
        capture now, before it is journaled (ShmCall would say so only after)."""
        truncated = shm.faulted()
        if truncated:
            raise invalid_argument(
                f"{', '.join(map(str, truncated))} was truncated while the agent copied it; "
                "the capture was not accepted (send it again)")

    def _journal(self, journal: Journal, key: bytes, payload: bytes) -> Location:
        """Admit and append the ACCEPT record; AgentError (a bound) or OSError: not accepted,
        and not counted."""
        self._admit(journal, len(payload))
        try:
            return journal.append(entries.ACCEPT, payload)
        except NotDurable as e:
            self._uncount()
            self._abort(journal, key, e.location)
            raise
        except OSError:
            self._uncount()
            raise
        finally:
            with self._lock:
                self._reserved_bytes -= len(payload)

    def _uncount(self) -> None:
        with self._lock:
            self._pending -= 1
            self._accepted -= 1

    def _abort(self, journal: Journal, key: bytes, location: Location) -> None:
        """The ACCEPT at `location` was written but not flushed: the client is told INTERNAL,
        so the record must not be delivered if it survives; say so in the journal."""
        try:
            journal.append(entries.ABORT,
                                entries.encode_reference(location.segment, location.offset),
                                pin=False)
        except OSError as e:
            log.error("capture %s: its journal record could not be flushed nor cancelled (%s); "
                      "if the record survives, it is delivered at the next start",
                      uuid.UUID(bytes=key), e.strerror or e)

    def _admit(self, journal: Journal, size: int) -> None:
        with self._lock:
            if self._pending >= self.buffer_size:
                raise resource_exhausted(
                    f"the capture buffer is full: {self._pending} captures are waiting to be "
                    f"delivered (sagemaker_edge_core_capture_data_buffer_size is "
                    f"{self.buffer_size}); retry later")
            spool = journal.total_bytes + self._reserved_bytes
            if spool + size > self.max_spool:
                raise resource_exhausted(
                    f"the capture journal is full: {spool / MIB:.1f} MiB of "
                    f"{self.max_spool / MIB:.0f} MiB (edge_agent_capture_max_spool_mb) hold "
                    "captures not yet delivered; retry later")
            self._pending += 1
            self._accepted += 1
            self._reserved_bytes += size

    def status(self, capture_id: str) -> pb.GetCaptureDataStatusResponse:
        key = capture_key(capture_id)
        outcome = None
        if self._started or os.path.isdir(self.directory):
            outcome = self._ensure_started().statuses.get(key)
        if outcome is None:
            raise not_found(f"no capture with capture_id {capture_id} is known (never captured, "
                            "or older than edge_agent_capture_status_history)")
        # The status log keeps pb.CaptureDataStatus values as the ints they are on disk.
        return pb.GetCaptureDataStatusResponse(status=cast(pb.CaptureDataStatus, outcome.status),
                                               reason=outcome.reason)

    def close(self) -> None:
        """Deliver what can be delivered within edge_agent_capture_flush_seconds, then stop.
        A write still in flight then is abandoned: it stays in the journal for the next start."""
        with self._lock:
            self._closed = True
            parts = self._parts
        if parts is None:
            return
        deadline = time.monotonic() + self.config.edge_agent_capture_flush_seconds
        if self._uploader is not None:
            self._uploader.stop(0.0)  # signal only: joined below, within the same budget
        if not parts.batcher.stop(self.config.edge_agent_capture_flush_seconds):
            log.warning("capture: a batch was still being written after %.1f s "
                        "(edge_agent_capture_flush_seconds); it is written again at the next "
                        "start", self.config.edge_agent_capture_flush_seconds)
        if self._uploader is not None:
            self._uploader.stop(max(0.0, deadline - time.monotonic()))
        try:
            parts.journal.close()
        finally:
            parts.statuses.close()
