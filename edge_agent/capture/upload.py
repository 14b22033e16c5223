"""Periodic upload of what the Disk destination wrote (..._capture_data_periodic_upload).

Every period, each batch folder under the disk path that has its manifest and no `.uploaded`
marker is uploaded under the same relative key — payload files first, the manifest last —
and then marked. An upload that fails is tried again at the next period; uploading a batch
twice rewrites the same objects.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from edge_agent.capture.destinations import DeliveryError
from edge_agent.capture.manifest import MANIFEST

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
    def __init__(self, root: str, period: float, client_factory: Callable[[], object]):
        self.root = root
        self.period = period
        self._client_factory = client_factory
        self._client = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-agent-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.upload_pending()
            except DeliveryError as e:
                log.warning("periodic upload paused until the next period: %s", e.reason)
            except Exception:
                log.exception("periodic upload failed unexpectedly")

    def upload_pending(self) -> int:
        """Upload every pending batch folder; the number uploaded."""
        if self._client is None:
            self._client = self._client_factory()
        uploaded = 0
        for folder in pending_batches(self.root):
            if self._stop.is_set():
                break
            self._upload(folder)
            uploaded += 1
        return uploaded

    def _upload(self, folder: str) -> None:
        directory = os.path.join(self.root, folder)
        files = []
        for sub, _, names in os.walk(directory):
            files.extend(os.path.relpath(os.path.join(sub, n), directory) for n in names
                         if not n.endswith(".tmp") and n not in (MANIFEST, UPLOADED))
        for name in sorted(files) + [MANIFEST]:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
            key = "/".join(p for p in (folder.replace(os.sep, "/"), name.replace(os.sep, "/")) if p != ".")
            self._client.put_object(key, data)
        with open(os.path.join(directory, UPLOADED), "wb"):
            pass
        log.debug("uploaded capture batch %s", folder)
