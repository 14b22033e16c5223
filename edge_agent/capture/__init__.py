"""Capture data: CaptureData/GetCaptureDataStatus, journaled and delivered in the background
to disk or an S3-compatible bucket. docs/CAPTURE.md describes the design and the layout."""
