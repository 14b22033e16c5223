"""What a previous run left to deliver, from the journal's records alone.

The journal says everything: ACCEPT records are the captures, BATCH records their batches,
DONE records the batches finished, ABORT records the captures refused after all
(entries.py). The status log is not asked: it keeps only the newest outcomes, and a capture
it has forgotten must not be delivered again.
"""
from __future__ import annotations

from typing import NamedTuple

from edge_agent.capture import entries
from edge_agent.capture.batcher import Batch
from edge_agent.capture.journal import Location
from edge_agent.capture.records import Record


class Pending(NamedTuple):
    accepted: dict[bytes, Location]  # capture id → its ACCEPT record, in acceptance order
    batches: list[Batch]  # unfinished batches to write again as sealed, oldest first
    unbatched: list[bytes]  # captures in no such batch, in acceptance order


def pending(replayed: list[tuple[int, Record]]) -> Pending:
    """`replayed` is Journal.open()'s answer: every record, oldest first."""
    accepted: dict[bytes, Location] = {}
    batches: dict[tuple[int, int], Batch] = {}  # by where the BATCH record is
    for segment, record in replayed:
        where = (segment, record.offset)
        if record.type == entries.ACCEPT:
            key = entries.accept_key(record.payload)
            accepted.pop(key, None)  # an id used again (forgotten by the status log): the new one
            accepted[key] = Location(segment, record.offset, record.size)
        elif record.type == entries.BATCH:
            sealed = entries.decode_batch(record.payload)
            batches[where] = Batch(sealed, [], Location(segment, record.offset, record.size))
        elif record.type == entries.DONE:
            done = batches.pop(entries.decode_reference(record.payload), None)
            for key in done.sealed.keys if done else ():
                accepted.pop(key, None)
        elif record.type == entries.ABORT:
            _forget_accept(accepted, entries.decode_reference(record.payload))
    live = _live_batches(list(batches.values()), accepted)
    batched = {key for batch in live for key in batch.sealed.keys}
    return Pending(accepted, live, [key for key in accepted if key not in batched])


def _forget_accept(accepted: dict[bytes, Location], where: tuple[int, int]) -> None:
    for key, location in accepted.items():
        if (location.segment, location.offset) == where:
            del accepted[key]
            return


def _live_batches(batches: list[Batch], accepted: dict[bytes, Location]) -> list[Batch]:
    """The batches to rewrite: each capture belongs to the newest unfinished BATCH naming it
    (an older one was a seal whose flush failed, never written); a batch with a capture that
    is gone (damage) is dropped and its other captures are batched anew."""
    claimed: set[bytes] = set()
    live = []
    for batch in reversed(batches):
        keys = batch.sealed.keys
        if all(key in accepted for key in keys) and claimed.isdisjoint(keys):
            live.append(batch._replace(locations=[accepted[key] for key in keys]))
        claimed.update(keys)
    live.reverse()
    return live
