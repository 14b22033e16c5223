"""How each RPC's messages become bytes and back: the codec column of the RPC table
(edge_agent.api.rpcs.RPCS), one object per row, used by the service's side (Api) and the
client's (edge_agent.client) alike.

    agent:  decode_request(body) -> what the handler takes;  encode_response(result) -> bytes
    client: encode_request(request) -> bytes;  decode_response(body) -> what the caller gets

Every RPC but Predict is protobuf both ways (ProtobufCodec). Predict, the call that matters,
has PredictCodec: the wire codec (edge_agent.protocol.predict_codec, compiled or its twin)
reads and writes its messages straight from and into the frame, without protobuf objects, and
leaves what it does not read the way upb would (unknown fields, merged messages, malformed
bytes) to upb. That fallback lives here and only here: PredictCodec.decode_request is one
decode step, the wire codec's reading or else upb's, turned into the same
(model name, [WireTensor], [Handle]) the service's Predict takes; a body upb refuses raises
DecodeError, as any row's does. A leaf module: protobuf types and the protocol's codec, no
service, no transport.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import Message

from edge_agent import agent_pb2 as pb
from edge_agent.protocol import predict_codec
from edge_agent.protocol.tensors import (WireTensor, add_tensor, handle_of, pb_handle,
                                         reply_array, wire_tensor)

# A decoded PredictRequest, as the service's Predict takes it: (model name, [WireTensor],
# [Handle] of output_handles). On the client's side the tensors are (name bytes, wire
# DataType, shape, data) tuples, data a C-contiguous buffer or a Handle (encode_request).
PredictCall = tuple[str, list, list]


class ProtobufCodec:
    """Protobuf messages both ways (upb): a body that is not the row's message raises
    google.protobuf.message.DecodeError."""

    __slots__ = ("decode_request", "decode_response")

    def __init__(self, request_type: type[Message], response_type: type[Message]):
        self.decode_request = request_type.FromString
        self.decode_response = response_type.FromString

    @staticmethod
    def encode_request(request: Message) -> bytes:
        return request.SerializeToString()

    @staticmethod
    def encode_response(response: Message) -> bytes:
        return response.SerializeToString()


def written(reply: bytes) -> bytes:
    """A codec's encode_response for a reply its handler wrote itself: the bytes as they are
    (Api.serve, seeing it, calls no encoder at all)."""
    return reply


def predict_call_of(request: pb.PredictRequest) -> PredictCall:
    """A PredictRequest upb decoded, in the form the wire codec decodes one to."""
    return (request.name, [wire_tensor(t) for t in request.tensors],
            [handle_of(h) for h in request.output_handles])


class PredictCodec:
    """Predict through the wire codec, with upb as its one fallback (the module docstring).

    `wire`: the codec module (edge_agent.protocol.predict_codec, or in tests one of its two
    implementations, or UPB_ONLY: every body left to upb, the reference the tests hold the
    wire codec to).

    The reply is written by the service, not here: the model's outputs are views of the
    runtime's buffers, valid only while the engine holds the model, so the service encodes
    them then (predict_codec.encode_response, one copy from the runtime into the reply) and
    its handler returns the bytes; encode_response passes them on."""

    __slots__ = ("wire",)

    def __init__(self, wire: Any = predict_codec):
        self.wire = wire

    def decode_request(self, body: bytes | memoryview) -> PredictCall:
        decoded = self.wire.decode_request(body)
        if decoded is None:  # left to upb: its reading, or its DecodeError, is the reference
            return predict_call_of(pb.PredictRequest.FromString(body))
        return decoded

    # The reply is the service's, written while the engine held the outputs.
    encode_response = staticmethod(written)

    def encode_request(self, request: PredictCall) -> bytes:
        name, tensors, output_handles = request
        return self.wire.encode_request(name, tensors, output_handles)

    def encode_arrays(self, name: str, inputs: Any) -> bytes | None:
        """The request of a client's inputs when all are NumPy arrays, by position or by name
        (one compiled call: predict_codec.encode_arrays_request); None: anything else, for
        encode_request."""
        return self.wire.encode_arrays_request(name, inputs)

    def decode_arrays(self, body: bytes | memoryview) -> list[tuple[str, np.ndarray]]:
        """[(output name, array)] of a PredictResponse carrying its outputs in the reply: one
        compiled call (predict_codec.decode_arrays_response), else decode_response's reading
        turned into arrays. The arrays are read-only views of the reply's own bytes, as
        decode_response's byte_data are."""
        if type(body) is not bytes:
            body = bytes(body)
        arrays = self.wire.decode_arrays_response(body)
        if arrays is None:
            arrays = [reply_array(t) for t in self.decode_response(body)]
        return arrays

    def decode_response(self, body: bytes | memoryview) -> list[WireTensor]:
        """[WireTensor] of a PredictResponse. Their byte_data are views of the reply's bytes,
        not copies: a body that is not an immutable bytes object of its own (a view of a buffer
        the transport reuses) is copied first, so what the caller keeps stays valid."""
        if type(body) is not bytes:
            body = bytes(body)
        tensors = self.wire.decode_response(body)
        if tensors is None:
            tensors = [wire_tensor(t) for t in pb.PredictResponse.FromString(body).tensors]
        return tensors


class _UpbOnly:
    """A wire codec that reads nothing itself (every body left to upb) and writes requests
    with upb: PredictCodec(UPB_ONLY) is Predict in protobuf alone."""

    @staticmethod
    def decode_request(body: Any) -> None:
        return None

    decode_response = decode_arrays_response = decode_request

    @staticmethod
    def encode_arrays_request(name: str, inputs: Any) -> None:
        return None

    @staticmethod
    def encode_request(name: str, tensors, output_handles) -> bytes:
        request = pb.PredictRequest(name=name)
        for tensor_name, data_type, shape, data in tensors:
            add_tensor(request.tensors, tensor_name, data_type, shape, data)
        request.output_handles.extend(pb_handle(h) for h in output_handles)
        return request.SerializeToString()


UPB_ONLY = _UpbOnly()


__all__ = ["PredictCall", "PredictCodec", "ProtobufCodec", "UPB_ONLY", "predict_call_of",
           "written"]
