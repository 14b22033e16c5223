"""What the capture journal's records hold.

ACCEPT: a capture as acknowledged: its 16-byte id, then the CaptureDataRequest with every
        tensor as byte_data (shared-memory tensors copied out) and the timestamp filled in.
BATCH:  a batch sealed before its first write: creation time (int64 ns since the epoch),
        then the 16-byte ids of its captures. Writing the composition down first is what
        makes a rewrite after a crash produce the same objects under the same keys. If a
        capture is named by several unfinished BATCH records (a seal whose flush failed, then
        sealed anew), the newest one is its batch: the older one was never written.
DONE:   the batch whose BATCH record is at (segment, offset) is finished and its outcome is
        in status.log: replay skips it and its captures. This, not the status log (which
        forgets old outcomes), is what says a capture is delivered.
ABORT:  the ACCEPT record at (segment, offset) was refused after all (its flush failed and
        the client was told INTERNAL): replay skips it.
"""
from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

from edge_agent import agent_pb2 as pb

ACCEPT = 1
BATCH = 2
DONE = 3
ABORT = 4

_CREATED = struct.Struct("<q")
_REFERENCE = struct.Struct("<QQ")  # the (segment, offset) of the record a DONE/ABORT is about
# Batch ids are derived from their captures' ids, so they are stable across restarts.
_BATCH_NAMESPACE = uuid.UUID("6f1d3c1e-4b8e-4c55-9a6d-0f2f1c9f8a11")


class SealedBatch(NamedTuple):
    created_ns: int
    keys: list[bytes]

    @property
    def batch_id(self) -> str:
        return str(uuid.uuid5(_BATCH_NAMESPACE, b"".join(self.keys).hex()))


def encode_accept(key: bytes, request: pb.CaptureDataRequest) -> bytes:
    return key + request.SerializeToString()


def decode_accept(payload: bytes) -> pb.CaptureDataRequest:
    return pb.CaptureDataRequest.FromString(payload[16:])


def accept_key(payload: bytes) -> bytes:
    return payload[:16]


def encode_batch(batch: SealedBatch) -> bytes:
    return _CREATED.pack(batch.created_ns) + b"".join(batch.keys)


def decode_batch(payload: bytes) -> SealedBatch:
    (created_ns,) = _CREATED.unpack_from(payload)
    ids = payload[_CREATED.size:]
    return SealedBatch(created_ns, [ids[i:i + 16] for i in range(0, len(ids), 16)])


def encode_reference(segment: int, offset: int) -> bytes:
    return _REFERENCE.pack(segment, offset)


def decode_reference(payload: bytes) -> tuple[int, int]:
    return _REFERENCE.unpack(payload)
