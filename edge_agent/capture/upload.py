"""Periodic upload of what the Disk destination wrote (..._capture_data_periodic_upload).

Every period, each batch folder waiting to be uploaded is uploaded under the same relative
key — payload files first, the manifest last — and then marked with an empty `.uploaded`
file. An upload that fails stays at the head of the queue and is tried again at the next
period; uploading a batch twice rewrites the same objects.

What waits: the tree under the disk path is walked ONCE, at the first period after start,
for batch folders with a manifest and no marker (left by an earlier run, or written while
the store was unreachable before a restart); after that the uploader only takes the folders
the delivery thread reports as written (`enqueue`). A walk every period would cost as much
as everything ever captured on the board, for nothing new.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from typing import TYPE_CHECKING, Callable

from edge_agent.capture.destinations import DeliveryError
from edge_agent.capture.manifest import MANIFEST

if TYPE_CHECKING:  # the S3 client is imported only when an upload is configured
    from edge_agent.capture.s3 import S3Client

log = logging.getLogger(__name__)

UPLOADED = ".uploaded"


def pending_batches(root: str) -> list[str]:
    """Batch folders under root (relative, sorted) whose manifest is written and not uploaded."""
    found = []
    for directory, _, names in os.walk(root):
        if MANIFEST in names and UPLOADED not in names:
            found.append(os.path.relpath(directory, root))
    return sorted(found)


class PeriodicUploader:
    def __init__(self, root: str, period: float, client_factory: Callable[[], S3Client]):
        self.root = root
        self.period = period
        self._client_factory = client_factory
        self._client: S3Client | None = None
        self._lock = threading.Lock()
        self._queue: collections.deque[str] = collections.deque()  # folders, oldest first
        self._queued: set[str] = set()
        self._scanned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-agent-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the upload in flight, waiting at most `timeout` seconds for it (what is
        left is found again by the walk at the next start). True once the thread ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def enqueue(self, folder: str) -> None:
        """A batch folder (relative to root) was written: upload it at the next period."""
        with self._lock:
            if folder not in self._queued:
                self._queued.add(folder)
                self._queue.append(folder)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.upload_pending()
            except DeliveryError as e:
                log.warning("periodic upload paused until the next period: %s", e.reason)
            except Exception:
                log.exception("periodic upload failed unexpectedly")

    def upload_pending(self) -> int:
        """Upload every waiting batch folder; the number uploaded. DeliveryError leaves the
        failed folder and those after it queued."""
        if self._client is None:
            self._client = self._client_factory()
        client = self._client
        if not self._scanned:
            for folder in pending_batches(self.root):
                self.enqueue(folder)
            self._scanned = True
        uploaded = 0
        while not self._stop.is_set():
            with self._lock:
                if not self._queue:
                    break
                folder = self._queue[0]
            self._upload(client, folder)
            with self._lock:
                self._queue.popleft()
                self._queued.discard(folder)
            uploaded += 1
        return uploaded

    def _upload(self, client: S3Client, folder: str) -> None:
        directory = os.path.join(self.root, folder)
        names = sorted(n for n in os.listdir(directory)  # a batch folder is flat
                       if not n.endswith(".tmp") and n not in (MANIFEST, UPLOADED))
        for name in names + [MANIFEST]:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
            key = "/".join(p for p in (folder.replace(os.sep, "/"), name) if p != ".")
            client.put_object(key, data)
        with open(os.path.join(directory, UPLOADED), "wb"):
            pass
        log.debug("uploaded capture batch %s", folder)
