"""Capture data: CaptureData and GetCaptureDataStatus (capture_calls.py, what the service
delegates to), checked (validate.py), journaled (journal.py, records.py, entries.py), kept
across restarts (status.py, replay.py) and delivered in the background in batches
(batcher.py, manifest.py) to a folder or an S3-compatible bucket (destinations.py, s3.py,
cloud.py, iot_credentials.py, upload.py); durable.py makes new names survive a power loss.
It may import protocol (tensors), observe and platform, and from api only the shared
api.caller; docs/CAPTURE.md describes the design and the layout.
"""
