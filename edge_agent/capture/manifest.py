"""A batch of captures as the files a destination stores: a payload file, then the manifest.

Everything here is a pure function of the batch (its id, creation time and captures, as the
journal holds them), so a batch written again after a crash produces the same keys and the
same bytes: a rewrite overwrites, it never duplicates. docs/CAPTURE.md describes the layout.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Iterable, NamedTuple

from edge_agent import agent_pb2 as pb
from edge_agent.protocol.tensors import data_type_name

MANIFEST = "manifest.jsonl"
PAYLOADS = "payloads.bin"
# The manifest is meant to be read line by line; bigger payloads go to the payload file.
MAX_EMBED_LIMIT = 3072


class BatchFile(NamedTuple):
    name: str  # relative to the batch's folder
    data: bytes


def batch_folder(prefix: str, created_ns: int, batch_id: str) -> str:
    """`<prefix>/YYYY/MM/DD/HH/<batch_id>`: the batch's creation hour, UTC."""
    hour = time.strftime("%Y/%m/%d/%H", time.gmtime(created_ns // 1_000_000_000))
    return "/".join(p for p in (prefix.strip("/"), hour, batch_id) if p)


def rfc3339(seconds: int, nanos: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class _Payloads:
    """The batch's payloads too big to embed, back to back in one file (PAYLOADS): one write
    (one fsync, one PUT) per batch instead of one per tensor."""

    def __init__(self, embed_limit: int):
        self.embed_limit = embed_limit
        self.chunks: list[bytes] = []
        self.size = 0

    def describe(self, entry: dict, data: bytes) -> dict:
        entry["byte_length"] = len(data)
        if len(data) <= self.embed_limit:
            entry["data"] = base64.b64encode(data).decode("ascii")
        else:
            entry["file"] = PAYLOADS
            entry["offset"] = self.size
            self.chunks.append(data)
            self.size += len(data)
        return entry


def _tensors(tensors: Iterable[pb.Tensor], payloads: _Payloads) -> list[dict]:
    return [payloads.describe({"name": t.tensor_metadata.name.decode("utf-8", "replace"),
                               "data_type": data_type_name(t.tensor_metadata.data_type),
                               "shape": list(t.tensor_metadata.shape)}, t.byte_data)
            for t in tensors]


def _auxiliary(items: Iterable[pb.AuxilaryData], payloads: _Payloads) -> list[dict]:
    return [payloads.describe({"name": item.name, "encoding": pb.Encoding.Name(item.encoding)},
                              item.byte_data) for item in items]


def manifest_line(capture: pb.CaptureDataRequest, batch_id: str, device_name: str,
                  fleet_name: str, payloads: _Payloads) -> str:
    ts = capture.inference_timestamp
    line = {
        "capture_id": capture.capture_id,
        "batch_id": batch_id,
        "model_name": capture.model_name,
        "inference_timestamp": rfc3339(ts.seconds, ts.nanos),
        "device_name": device_name,
        "device_fleet_name": fleet_name,
        "input_tensors": _tensors(capture.input_tensors, payloads),
        "output_tensors": _tensors(capture.output_tensors, payloads),
        "aux_inputs": _auxiliary(capture.inputs, payloads),
        "aux_outputs": _auxiliary(capture.outputs, payloads),
    }
    return json.dumps(line, separators=(",", ":"))


def build_batch(batch_id: str, captures: list[pb.CaptureDataRequest], device_name: str,
                fleet_name: str, embed_limit: int) -> list[BatchFile]:
    """The batch's payload file (if any payload is too big to embed), then its manifest: a
    reader that finds the manifest finds everything it names (destinations write in order)."""
    payloads = _Payloads(embed_limit)
    lines = [manifest_line(c, batch_id, device_name, fleet_name, payloads) for c in captures]
    files = [BatchFile(PAYLOADS, b"".join(payloads.chunks))] if payloads.chunks else []
    files.append(BatchFile(MANIFEST, ("\n".join(lines) + "\n").encode()))
    return files
