"""Checks a CaptureDataRequest and turns it into what the journal stores.

The stored request has every tensor and auxiliary item as byte_data — shared-memory data is
copied out here, at call time, so the client may reuse its segment as soon as the call
returns — and always an inference timestamp (the time of the call when the client gave none).
"""
from __future__ import annotations

import re
import time
import uuid
from typing import Callable, Optional

from edge_agent import agent_pb2 as pb
from edge_agent.api.caller import check_model_name
from edge_agent.errors import AgentError, StatusCode, invalid_argument, shown
from edge_agent.protocol.tensors import (byte_length, check_length, data_type_name, dtype_of,
                               format_shape, tensor_data, wire_tensor)

# Clocks of the application and the agent read the same system clock on a board, but a
# timestamp taken just before a clock step (NTP) must not be refused: 1 s of slack.
CLOCK_SKEW_SECONDS = 1.0

# reader(handle, nbytes, what) → bytes-like, as for Predict; None: no shared-memory support.
Reader = Optional[Callable[[pb.SharedMemoryHandle, int, str], "bytes | memoryview"]]


# The ids the original agent's clients send (`capture1700000000`, UUIDs, ...): safe as object
# keys and file names, and short enough for a log line.
CAPTURE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Ids that are not UUIDs get a 16-byte key of their own (the journal's fixed-size key), a
# name-based UUID; UUID ids keep their own 16 bytes, so journals written before stay valid.
_ID_NAMESPACE = uuid.UUID("2b0f5a52-6c0b-4e0e-9d1c-3f7d1e5a9c40")


def capture_key(capture_id: str) -> bytes:
    """The 16-byte key of a capture_id; INVALID_ARGUMENT unless it is 1 to 128 characters of
    [A-Za-z0-9._:-]. Ids that parse as a UUID name one capture whatever their spelling
    (upper case, no dashes, urn:uuid:); any other id is compared exactly."""
    parsed = stored_capture_id(capture_id)
    try:
        return uuid.UUID(parsed).bytes
    except ValueError:
        return uuid.uuid5(_ID_NAMESPACE, parsed).bytes


def stored_capture_id(capture_id: str) -> str:
    """The capture_id as manifests and logs show it: a UUID in its canonical form, any other
    id as given."""
    if not CAPTURE_ID.fullmatch(capture_id):
        raise invalid_argument(
            f"capture_id {shown(capture_id)!r} is not valid: use 1 to 128 letters, digits or . _ : - "
            "(a UUID, or an id like capture1700000000)")
    try:
        return str(uuid.UUID(capture_id))
    except ValueError:
        return capture_id


def _check_timestamp(request: pb.CaptureDataRequest, stored: pb.CaptureDataRequest, now: float) -> None:
    if not request.HasField("inference_timestamp"):
        whole = int(now)
        stored.inference_timestamp.seconds = whole
        stored.inference_timestamp.nanos = int((now - whole) * 1e9)
        return
    ts = request.inference_timestamp
    if ts.seconds < 0 or not 0 <= ts.nanos < 1_000_000_000:
        raise invalid_argument(f"inference_timestamp ({ts.seconds} s, {ts.nanos} ns) is not a "
                               "valid time: seconds must be >= 0 and nanos in [0, 1e9)")
    if ts.seconds + ts.nanos / 1e9 > now + CLOCK_SKEW_SECONDS:
        raise AgentError(StatusCode.OUT_OF_RANGE,
                         f"inference_timestamp is {ts.seconds + ts.nanos / 1e9 - now:.3f} s in "
                         "the future; give the time the inference ran")
    stored.inference_timestamp.CopyFrom(ts)


def uses_shared_memory(request: pb.CaptureDataRequest) -> bool:
    return any(item.WhichOneof("data") == "shared_memory_handle"
               for items in (request.input_tensors, request.output_tensors, request.inputs,
                             request.outputs) for item in items)


def _shared(handle, nbytes: int, what: str, reader: Reader):
    if reader is None:
        raise invalid_argument(f"{what}: shared-memory tensors in CaptureData need the "
                               "shared-memory reader; send byte_data")
    return reader(handle, nbytes, what)


def _copy_tensor(tensor: pb.Tensor, out: pb.Tensor, what: str, reader: Reader) -> None:
    if not tensor.HasField("tensor_metadata"):
        raise invalid_argument(f"{what}: tensor_metadata is missing (name, data type and shape)")
    wire = wire_tensor(tensor)
    name = wire.name.decode("utf-8", "replace")
    what = f"{what} '{name}'"
    dtype = dtype_of(wire.data_type)
    if dtype is None:
        raise invalid_argument(f"{what}: unknown data type {data_type_name(wire.data_type)}")
    if any(d < 0 for d in wire.shape):
        raise invalid_argument(f"{what}: shape {format_shape(wire.shape)} has a negative "
                               "dimension; captured tensors need their real shape")
    nbytes = byte_length(dtype, wire.shape)
    data = tensor_data(wire, nbytes, what, lambda handle, n, what: _shared(handle, n, what, reader))
    check_length(data, what, wire.data_type, wire.shape, nbytes)  # stored as bytes: no array
    out.tensor_metadata.CopyFrom(tensor.tensor_metadata)
    out.byte_data = bytes(data)  # of shared memory, a copy: the client may reuse the segment


def _copy_auxiliary(item: pb.AuxilaryData, out: pb.AuxilaryData, what: str, reader: Reader) -> None:
    if not item.name:
        raise invalid_argument(f"{what}: auxiliary data needs a name")
    what = f"{what} '{item.name}'"
    if item.encoding not in pb.Encoding.values():
        raise invalid_argument(f"{what}: unknown encoding {item.encoding} "
                               "(CSV, JSON, NONE or BASE64)")
    kind = item.WhichOneof("data")
    if kind == "shared_memory_handle":
        if item.shared_memory_handle.size == 0:
            raise invalid_argument(f"{what}: a shared-memory handle for auxiliary data needs "
                                   "its size")
        data = bytes(_shared(item.shared_memory_handle, item.shared_memory_handle.size,
                             what, reader))  # a copy: the segment is the client's
    else:
        data = item.byte_data
    if not data:
        raise invalid_argument(f"{what}: no data")
    out.name = item.name
    out.encoding = item.encoding
    out.byte_data = data


def checked_capture(request: pb.CaptureDataRequest, reader: Reader = None,
                    now: float | None = None) -> tuple[bytes, pb.CaptureDataRequest]:
    """(the capture id's 16 bytes, the request as the journal stores it), or INVALID_ARGUMENT
    / OUT_OF_RANGE saying what is wrong."""
    key = capture_key(request.capture_id)
    check_model_name(request.model_name)
    if not (request.input_tensors or request.output_tensors or request.inputs or request.outputs):
        raise invalid_argument("nothing to capture: give input or output tensors or "
                               "auxiliary data")
    stored = pb.CaptureDataRequest(model_name=request.model_name,
                                   capture_id=stored_capture_id(request.capture_id))
    _check_timestamp(request, stored, time.time() if now is None else now)
    for i, tensor in enumerate(request.input_tensors):
        _copy_tensor(tensor, stored.input_tensors.add(), f"input tensor {i}", reader)
    for i, tensor in enumerate(request.output_tensors):
        _copy_tensor(tensor, stored.output_tensors.add(), f"output tensor {i}", reader)
    for i, item in enumerate(request.inputs):
        _copy_auxiliary(item, stored.inputs.add(), f"auxiliary input {i}", reader)
    for i, item in enumerate(request.outputs):
        _copy_auxiliary(item, stored.outputs.add(), f"auxiliary output {i}", reader)
    return key, stored
