"""CaptureData and GetCaptureDataStatus: what AgentService delegates to.

A capture is checked, copied out of shared memory, admitted against the two bounds (captures
not yet delivered: sagemaker_edge_core_capture_data_buffer_size; journal disk use:
edge_agent_capture_max_spool_mb), journaled durably, and only then acknowledged. The
Batcher delivers it in the background. Nothing is opened or started until the first capture,
unless a previous run left a journal behind: then it is replayed at start-up and what it
holds is delivered.
"""
from __future__ import annotations

import logging
import os
import threading

from edge_agent import agent_pb2 as pb
from edge_agent.capture import entries
from edge_agent.capture.batcher import Batch, BatchSettings, Batcher
from edge_agent.capture.journal import Journal, Location
from edge_agent.capture.manifest import MAX_EMBED_LIMIT
from edge_agent.capture.status import StatusLog
from edge_agent.capture.validate import Reader, capture_key, checked_capture
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.errors import AgentError, StatusCode, not_found, resource_exhausted

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def check_config(config: AgentConfig) -> None:
    """Stop start-up (ConfigError) on capture settings that would lose captures later."""
    from edge_agent.capture.cloud import check_cloud

    limit = config.sagemaker_edge_core_capture_data_base64_embed_limit
    if limit > MAX_EMBED_LIMIT:
        raise ConfigError(f"sagemaker_edge_core_capture_data_base64_embed_limit: at most "
                          f"{MAX_EMBED_LIMIT} bytes, got {limit}")
    if config.sagemaker_edge_core_capture_data_destination == "Cloud":
        check_cloud(config, "sagemaker_edge_core_capture_data_destination Cloud")
    elif config.sagemaker_edge_core_capture_data_periodic_upload:
        check_cloud(config, "sagemaker_edge_core_capture_data_periodic_upload")


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
        self._started = False
        self._closed = False
        self.journal: Journal | None = None
        self.statuses: StatusLog | None = None
        self.batcher: Batcher | None = None
        self.uploader = None
        if os.path.isdir(self.directory):
            self._start()  # a previous run's captures: deliver them now, not at the next call

    # --- start ------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self._started:
            with self._lock:
                if self._closed:
                    raise AgentError(StatusCode.UNAVAILABLE, "the agent is shutting down")
                if not self._started:
                    self._start()

    def _start(self) -> None:
        config = self.config
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fsync = config.edge_agent_capture_fsync
        # Segments small enough that freed space comes back soon, few enough to stay cheap.
        segment_bytes = max(MIB, min(16 * MIB, self.max_spool // 8))
        self.journal = Journal(os.path.join(self.directory, "journal"), segment_bytes, fsync)
        self.statuses = StatusLog(os.path.join(self.directory, "status.log"),
                                  config.edge_agent_capture_status_history, fsync)
        self.statuses.open()
        replayed = self.journal.open()
        self.batcher = Batcher(self.journal, self.statuses, self._make_destination,
                               self._settings(), self._delivered)
        self._resume(replayed)
        self.batcher.start()
        if config.sagemaker_edge_core_capture_data_destination == "Disk" and \
                config.sagemaker_edge_core_capture_data_periodic_upload:
            from edge_agent.capture.cloud import s3_client
            from edge_agent.capture.upload import PeriodicUploader
            self.uploader = PeriodicUploader(
                config.sagemaker_edge_core_capture_data_disk_path,
                config.sagemaker_edge_core_capture_data_periodic_upload_period_seconds,
                lambda: s3_client(config))
            self.uploader.start()
        self._started = True

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
                               self.config.edge_agent_capture_fsync)

    def _resume(self, replayed) -> None:
        """Rebuild what is pending from the journal: unfinished batches as they were sealed,
        then the captures not yet in a batch, in the order they were accepted."""
        locations = {}
        batched = set()
        for segment, record in replayed:
            if record.type == entries.ACCEPT:
                key = entries.accept_key(record.payload)
                if self.statuses.get(key) is None:  # no outcome yet
                    locations[key] = (segment, record)
            elif record.type == entries.BATCH:
                sealed = entries.decode_batch(record.payload)
                if all(k in locations for k in sealed.keys):
                    self.journal.pin_replayed(segment)
                    batched.update(sealed.keys)
                    self.batcher.resume(Batch(sealed, [self._location(*locations[k]) for k in sealed.keys],
                                              self._location(segment, record)))
        for key, (segment, record) in locations.items():
            self.journal.pin_replayed(segment)
            self.statuses.reserve(key)
            if key not in batched:
                self.batcher.add(key, self._location(segment, record))
        self._pending = len(locations)
        self.journal.compact_after_replay()
        if locations:
            log.info("capture journal: %d captures to deliver from a previous run", len(locations))

    @staticmethod
    def _location(segment, record) -> Location:
        return Location(segment, record.offset, record.size)

    def _delivered(self, count: int) -> None:
        with self._lock:
            self._pending -= count

    # --- the RPCs ---------------------------------------------------------------------------

    def capture(self, request: pb.CaptureDataRequest, reader: Reader = None) -> None:
        key, stored = checked_capture(request, reader)
        self._ensure_started()
        payload = entries.encode_accept(key, stored)
        known = self.statuses.reserve(key)
        if known is not None:
            raise AgentError(StatusCode.ALREADY_EXISTS,
                             f"capture_id {request.capture_id} was already used (status "
                             f"{pb.CaptureDataStatus.Name(known.status)}); use a new UUID per capture")
        try:
            self._admit(len(payload))
            try:
                location = self.journal.append(entries.ACCEPT, payload)
            finally:
                with self._lock:
                    self._reserved_bytes -= len(payload)
        except BaseException as e:
            self.statuses.release(key)
            if isinstance(e, OSError):
                with self._lock:
                    self._pending -= 1
                raise AgentError(StatusCode.INTERNAL, f"cannot journal the capture in "
                                 f"{self.directory}: {e.strerror or e}") from None
            raise
        self.batcher.add(key, location)

    def _admit(self, size: int) -> None:
        with self._lock:
            if self._pending >= self.buffer_size:
                raise resource_exhausted(
                    f"the capture buffer is full: {self._pending} captures are waiting to be "
                    f"delivered (sagemaker_edge_core_capture_data_buffer_size is "
                    f"{self.buffer_size}); retry later")
            spool = self.journal.total_bytes + self._reserved_bytes
            if spool + size > self.max_spool:
                raise resource_exhausted(
                    f"the capture journal is full: {spool / MIB:.1f} MiB of "
                    f"{self.max_spool / MIB:.0f} MiB (edge_agent_capture_max_spool_mb) hold "
                    "captures not yet delivered; retry later")
            self._pending += 1
            self._reserved_bytes += size

    def status(self, capture_id: str) -> pb.GetCaptureDataStatusResponse:
        key = capture_key(capture_id)
        outcome = None
        if self._started or os.path.isdir(self.directory):
            self._ensure_started()
            outcome = self.statuses.get(key)
        if outcome is None:
            raise not_found(f"no capture with capture_id {capture_id} is known (never captured, "
                            "or older than edge_agent_capture_status_history)")
        return pb.GetCaptureDataStatusResponse(status=outcome.status, reason=outcome.reason)

    def close(self) -> None:
        """Deliver what can be delivered within edge_agent_capture_flush_seconds, then stop."""
        with self._lock:
            self._closed = True
            started = self._started
        if not started:
            return
        if self.uploader is not None:
            self.uploader.stop()
        self.batcher.stop(self.config.edge_agent_capture_flush_seconds)
        self.journal.close()
        self.statuses.close()
