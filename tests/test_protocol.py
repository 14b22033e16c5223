"""The sans-IO framing: no sockets, just bytes in and frames out."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edge_agent._framing
from edge_agent import protocol
from edge_agent.errors import StatusCode
from edge_agent.protocol import (HEADER, FrameDecoder, FramingError, Kind, Method, encode_error,
                                 encode_reply, encode_request)

LIMIT = 1 << 20


def decode_all(chunks, limit=LIMIT):
    decoder = FrameDecoder(limit)
    frames = []
    for chunk in chunks:
        decoder.feed(chunk)
        frames.extend(decoder.frames())
    return frames, decoder


def test_the_compiled_splitter_is_the_one_in_use():
    assert edge_agent._framing.__file__.endswith(".so")
    assert protocol.FrameSplitter is edge_agent._framing.FrameSplitter
    assert not hasattr(edge_agent._framing, "__pyx_fallback__")
    assert type(FrameDecoder(10)._splitter).__module__ == "edge_agent._framing"


def test_header_layout_is_as_documented():
    frame = encode_request(Method.LOAD_MODEL, 0x01020304, b"body")
    assert frame[:2] == b"EA"
    assert frame[2] == 1                                     # version
    assert frame[3] == Kind.REQUEST
    assert struct.unpack_from("<H", frame, 4)[0] == Method.LOAD_MODEL
    assert struct.unpack_from("<H", frame, 6)[0] == 0        # status
    assert struct.unpack_from("<I", frame, 8)[0] == 0x01020304
    assert struct.unpack_from("<I", frame, 12)[0] == 4
    assert frame[16:] == b"body" and HEADER.size == 16


def test_round_trip_of_each_kind():
    stream = (encode_request(Method.PREDICT, 1, b"abc") + encode_reply(Method.PREDICT, 2, b"")
              + encode_error(StatusCode.NOT_FOUND, 3, "no model", Method.DESCRIBE_MODEL))
    frames, decoder = decode_all([stream])
    assert [(f.kind, f.method, f.status, f.request_id, f.body) for f in frames] == [
        (Kind.REQUEST, Method.PREDICT, 0, 1, b"abc"),
        (Kind.REPLY, Method.PREDICT, 0, 2, b""),
        (Kind.REPLY, Method.DESCRIBE_MODEL, StatusCode.NOT_FOUND, 3, b"no model"),
    ]
    assert decoder.pending_bytes == 0
    decoder.end_of_stream()  # nothing pending: no error


frame_specs = st.lists(
    st.tuples(st.sampled_from(list(Method)), st.integers(0, 2**32 - 1), st.binary(max_size=300)),
    min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(specs=frame_specs, data=st.data())
def test_any_split_of_a_stream_yields_the_same_frames(specs, data):
    stream = b"".join(encode_request(m, rid, body) for m, rid, body in specs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    frames, decoder = decode_all(chunks)
    assert [(f.method, f.request_id, f.body) for f in frames] == specs
    assert decoder.pending_bytes == 0


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_never_crashes_and_is_refused_or_waited_for(garbage):
    decoder = FrameDecoder(LIMIT)
    decoder.feed(garbage)
    try:
        frames = list(decoder.frames())
    except FramingError as e:
        assert e.code in (StatusCode.INVALID_ARGUMENT, StatusCode.RESOURCE_EXHAUSTED)
        return
    # Bytes that happen to form valid frames, or an incomplete one: never more than was sent.
    assert sum(len(f.body) + HEADER.size for f in frames) + decoder.pending_bytes == len(garbage)


def test_bad_magic_is_refused():
    decoder = FrameDecoder(LIMIT)
    decoder.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(FramingError, match="not an edge-agent frame") as info:
        list(decoder.frames())
    assert info.value.code == StatusCode.INVALID_ARGUMENT and info.value.request_id == 0


def test_unknown_version_is_refused_with_the_request_id():
    frame = bytearray(encode_request(Method.PREDICT, 77, b""))
    frame[2] = 9
    decoder = FrameDecoder(LIMIT)
    decoder.feed(bytes(frame))
    with pytest.raises(FramingError, match="version 9") as info:
        list(decoder.frames())
    assert info.value.request_id == 77


def test_oversize_length_is_refused_from_the_header_alone():
    header = HEADER.pack(b"EA", 1, Kind.REQUEST, Method.PREDICT, 0, 5, 2**32 - 1)
    decoder = FrameDecoder(LIMIT)
    decoder.feed(header)  # no body byte sent: the limit is checked before buffering any
    with pytest.raises(FramingError, match="exceeds the limit") as info:
        list(decoder.frames())
    assert info.value.code == StatusCode.RESOURCE_EXHAUSTED and info.value.request_id == 5


def test_a_body_at_the_limit_is_accepted():
    frames, _ = decode_all([encode_request(Method.PREDICT, 1, b"x" * 1000)], limit=1000)
    assert frames[0].body == b"x" * 1000


def test_a_failed_stream_stays_failed():
    decoder = FrameDecoder(LIMIT)
    decoder.feed(b"XX" + b"\0" * 14)
    with pytest.raises(FramingError):
        list(decoder.frames())
    decoder.feed(encode_request(Method.PREDICT, 1, b""))
    with pytest.raises(FramingError, match="out of step"):
        list(decoder.frames())


def test_a_frame_cut_short_is_reported_at_end_of_stream():
    frame = encode_request(Method.PREDICT, 1, b"0123456789")
    frames, decoder = decode_all([frame[:20]])
    assert frames == [] and decoder.pending_bytes == 20
    with pytest.raises(FramingError, match="middle of a frame"):
        decoder.end_of_stream()


def test_consumed_bytes_are_released_during_a_long_burst():
    # A partial frame is always pending, so the buffer never empties by itself.
    decoder = FrameDecoder(LIMIT)
    frame = encode_request(Method.PREDICT, 1, b"y" * 1000)
    decoder.feed(frame[:500])
    for _ in range(2000):
        decoder.feed(frame[500:] + frame[:500])
        assert len(list(decoder.frames())) == 1
        assert decoder.buffered_bytes < 3 * 65536
    assert decoder.pending_bytes == 500
