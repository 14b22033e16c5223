"""The on-disk record format shared by the capture journal and the status log.

A record is a 9-byte little-endian header and a payload:

    offset size field
    0      4    payload length in bytes
    4      4    CRC-32 of the type byte and the payload
    8      1    record type
    9      n    payload

A file is a sequence of records. A crash can leave the last record short or with a wrong
CRC; readers stop there (`read_records` says where the good part ends, so the writer can
truncate the torn tail before appending again).
"""
from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Iterator, NamedTuple

HEADER = struct.Struct("<IIB")
# A length beyond this is corruption, not a record: refuse before allocating.
MAX_PAYLOAD = 1 << 30


class Record(NamedTuple):
    type: int
    payload: bytes
    offset: int  # where the record's header starts in its file
    size: int  # header + payload


def encode(record_type: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((record_type,))))
    return HEADER.pack(len(payload), crc, record_type) + payload


def read_records(f: BinaryIO) -> tuple[list[Record], int, str | None]:
    """(the good records, the offset where they end, why reading stopped early or None)."""
    records: list[Record] = []
    offset = 0
    while True:
        header = f.read(HEADER.size)
        if not header:
            return records, offset, None
        if len(header) < HEADER.size:
            return records, offset, "short header"
        length, crc, record_type = HEADER.unpack(header)
        if length > MAX_PAYLOAD:
            return records, offset, f"impossible length {length}"
        payload = f.read(length)
        if len(payload) < length:
            return records, offset, "short payload"
        if zlib.crc32(payload, zlib.crc32(bytes((record_type,)))) != crc:
            return records, offset, "CRC mismatch"
        size = HEADER.size + length
        records.append(Record(record_type, payload, offset, size))
        offset += size


def iter_payloads(records: list[Record], record_type: int) -> Iterator[bytes]:
    return (r.payload for r in records if r.type == record_type)
