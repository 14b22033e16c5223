"""The sans-IO framing: no sockets, just bytes in and frames out.

Every splitting test runs on both splitters, the compiled one and its pure-Python twin
(edge_agent.protocol._framing_py), and a property holds them to splitting any stream alike.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seams import fresh_import

import edge_agent.protocol._framing
import edge_agent.protocol._framing_py
from edge_agent import errors, protocol, pure_python
from edge_agent.errors import StatusCode
from edge_agent.api.rpcs import Method
from edge_agent.protocol import HEADER, FramingError, Kind, encode_error, encode_request
from wire import encode_reply, split_frames

LIMIT = 1 << 20
SPLITTERS = {"compiled": edge_agent.protocol._framing.FrameSplitter,
             "python": edge_agent.protocol._framing_py.FrameSplitter}


@pytest.fixture(params=sorted(SPLITTERS), scope="module")
def splitter(request):
    """Each splitter in turn (module scope: a class, shared safely by Hypothesis examples)."""
    return SPLITTERS[request.param]


def decode_all(chunks, splitter_type, limit=LIMIT):
    """The frames of a stream received in `chunks`, and the splitter that split it."""
    splitter = splitter_type(limit)
    frames = []
    for chunk in chunks:
        frames.extend(split_frames(splitter, chunk))
    return frames, splitter


@pytest.mark.skipif(pure_python(), reason="EDGE_AGENT_PUREPYTHON forces the twin")
def test_the_compiled_splitter_is_the_one_in_use():
    assert edge_agent.protocol._framing.__file__.endswith(".so")
    assert protocol.FrameSplitter is edge_agent.protocol._framing.FrameSplitter
    assert not hasattr(edge_agent.protocol._framing, "__pyx_fallback__")
    assert protocol.FrameSplitter.__module__ == "edge_agent.protocol._framing"


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


def test_round_trip_of_each_kind(splitter):
    stream = (encode_request(Method.PREDICT, 1, b"abc") + encode_reply(Method.PREDICT, 2, b"")
              + encode_error(StatusCode.NOT_FOUND, 3, "no model", Method.DESCRIBE_MODEL))
    frames, receiver = decode_all([stream], splitter)
    assert [(f.kind, f.method, f.status, f.request_id, f.body) for f in frames] == [
        (Kind.REQUEST, Method.PREDICT, 0, 1, b"abc"),
        (Kind.REPLY, Method.PREDICT, 0, 2, b""),
        (Kind.REPLY, Method.DESCRIBE_MODEL, StatusCode.NOT_FOUND, 3, b"no model"),
    ]
    assert receiver.pending == 0 and receiver.needed == HEADER.size


frame_specs = st.lists(
    st.tuples(st.sampled_from(list(Method)), st.integers(0, 2**32 - 1), st.binary(max_size=300)),
    min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(specs=frame_specs, data=st.data())
def test_any_split_of_a_stream_yields_the_same_frames(splitter, specs, data):
    stream = b"".join(encode_request(m, rid, body) for m, rid, body in specs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    frames, receiver = decode_all(chunks, splitter)
    assert [(f.method, f.request_id, f.body) for f in frames] == specs
    assert receiver.pending == 0


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_never_crashes_and_is_refused_or_waited_for(splitter, garbage):
    receiver = splitter(LIMIT)
    try:
        frames = split_frames(receiver, garbage)
    except FramingError as e:
        assert e.code in (StatusCode.INVALID_ARGUMENT, StatusCode.RESOURCE_EXHAUSTED)
        return
    # Bytes that happen to form valid frames, or an incomplete one: never more than was sent.
    assert sum(len(f.body) + HEADER.size for f in frames) + receiver.pending == len(garbage)


def test_bad_magic_is_refused(splitter):
    with pytest.raises(FramingError, match="not an edge-agent frame") as info:
        split_frames(splitter(LIMIT), b"GET / HTTP/1.1\r\n\r\n")
    assert info.value.code == StatusCode.INVALID_ARGUMENT and info.value.request_id == 0


def test_unknown_version_is_refused_with_the_request_id(splitter):
    frame = bytearray(encode_request(Method.PREDICT, 77, b""))
    frame[2] = 9
    with pytest.raises(FramingError, match="version 9") as info:
        split_frames(splitter(LIMIT), bytes(frame))
    assert info.value.request_id == 77


def test_oversize_length_is_refused_from_the_header_alone(splitter):
    header = HEADER.pack(b"EA", 1, Kind.REQUEST, Method.PREDICT, 0, 5, 2**32 - 1)
    # no body byte sent: the limit is checked before buffering any
    with pytest.raises(FramingError, match="exceeds the limit") as info:
        split_frames(splitter(LIMIT), header)
    assert info.value.code == StatusCode.RESOURCE_EXHAUSTED and info.value.request_id == 5


def test_a_body_at_the_limit_is_accepted(splitter):
    frames, _ = decode_all([encode_request(Method.PREDICT, 1, b"x" * 1000)], splitter, limit=1000)
    assert frames[0].body == b"x" * 1000


def test_a_failed_stream_stays_failed(splitter):
    receiver = splitter(LIMIT)
    with pytest.raises(FramingError):
        split_frames(receiver, b"XX" + b"\0" * 14)
    with pytest.raises(FramingError, match="out of step"):
        split_frames(receiver, encode_request(Method.PREDICT, 1, b""))


def test_a_frame_cut_short_stays_pending(splitter):
    # What end of stream then means is the connection's to say (test_protocol_connection.py).
    frame = encode_request(Method.PREDICT, 1, b"0123456789")
    frames, receiver = decode_all([frame[:20]], splitter)
    assert frames == [] and receiver.pending == 20 and receiver.needed == len(frame) - 20


def test_consumed_bytes_are_released_during_a_long_burst(splitter):
    # A partial frame is always pending, so the buffer never empties by itself.
    receiver = splitter(LIMIT)
    frame = encode_request(Method.PREDICT, 1, b"y" * 1000)
    split_frames(receiver, frame[:500])
    for _ in range(2000):
        assert len(split_frames(receiver, frame[500:] + frame[:500])) == 1
        assert receiver.buffered < 3 * 65536
    assert receiver.pending == 500


# --- the two splitters are one ----------------------------------------------------------------

def _run(splitter_type, max_body: int, chunks: list[bytes]) -> list:
    """Everything a splitter says about a stream fed in `chunks`: after each chunk its counters
    and the frames it hands back, ended by the error that stops it (code, message, id)."""
    splitter = splitter_type(max_body)
    said = []
    for chunk in chunks:
        splitter.get_buffer(len(chunk))[:] = chunk
        splitter.buffer_updated(len(chunk))
        said.append(("counts", splitter.pending, splitter.needed, splitter.buffered))
        try:
            while (frame := splitter.next_view()) is not None:
                *header, body = frame
                said.append(("frame", *header, bytes(body)))
            said.append(("then", splitter.pending, splitter.needed, splitter.buffered))
        except errors.FramingError as e:
            said.append(("error", int(e.code), e.message, e.request_id, str(e)))
            try:  # and it stays failed, alike
                splitter.next_view()
            except errors.FramingError as again:
                said.append(("again", int(again.code), again.message, again.request_id))
            return said
    return said


def _pieces(draw) -> bytes:
    """A stream of valid frames (some large enough for the buffer's compaction), headers with
    a bad magic, version or length, and raw bytes, in any order."""
    frame = st.builds(encode_request, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
                      st.one_of(st.binary(max_size=64),
                                # past 64 KiB consumed, the buffer drops what was read
                                st.integers(65000, 70000).map(bytes)))
    reply = st.builds(encode_error, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
                      st.text(max_size=20), st.integers(0, 0xFFFF))
    header = st.builds(lambda magic, version, kind, length, rid: HEADER.pack(
        magic, version, kind, 1, 0, rid, length),
        st.sampled_from([b"EA", b"EA", b"XX", b"E\0"]), st.sampled_from([1, 1, 0, 2, 255]),
        st.integers(0, 255), st.sampled_from([0, 3, 100, 2**20, 2**32 - 1]),
        st.integers(0, 2**32 - 1))
    parts = draw(st.lists(st.one_of(frame, reply, header, st.binary(max_size=40)), max_size=8))
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_two_splitters_split_any_stream_identically(data):
    stream = _pieces(data.draw)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    max_body = data.draw(st.sampled_from([0, 10, 1000, 70000, LIMIT, 2**32 - 1, 2**64 - 1]))
    compiled = _run(SPLITTERS["compiled"], max_body, chunks)
    assert _run(SPLITTERS["python"], max_body, chunks) == compiled


def test_the_two_splitters_refuse_the_same_limits():
    for bad in (-1, 2**64, "10"):
        raised = []
        for splitter_type in SPLITTERS.values():
            with pytest.raises((OverflowError, TypeError)) as info:
                splitter_type(bad)
            raised.append(info.type)
        assert raised[0] is raised[1], bad
    assert SPLITTERS["python"](2**64 - 1).max_body == SPLITTERS["compiled"](2**64 - 1).max_body


def test_both_splitters_raise_the_one_framing_error_of_errors_py():
    assert protocol.FramingError is errors.FramingError
    for splitter_type in SPLITTERS.values():
        with pytest.raises(errors.FramingError) as info:
            split_frames(splitter_type(LIMIT), b"XY" + bytes(14))
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        assert str(info.value) == info.value.message == \
            "not an edge-agent frame: expected magic 'EA', got 5859"


@pytest.mark.parametrize("value, module", [
    ("1", "edge_agent.protocol._framing_py"), ("yes", "edge_agent.protocol._framing_py"),
    ("0", "edge_agent.protocol._framing"), (None, "edge_agent.protocol._framing")])
def test_edge_agent_purepython_forces_the_twin(monkeypatch, value, module):
    frames = fresh_import("edge_agent.protocol.frames", monkeypatch, pure=value)
    assert frames.FrameSplitter.__module__ == module


def test_without_a_compiled_build_the_seam_takes_the_twin(monkeypatch):
    # (The client imported and framing in a fresh interpreter without any compiled module:
    # tests/e2e/test_unbuilt.py.)
    frames = fresh_import("edge_agent.protocol.frames", monkeypatch,
                          missing=("edge_agent.protocol._framing",))
    assert frames.FrameSplitter is edge_agent.protocol._framing_py.FrameSplitter
    splitter = frames.FrameSplitter(100)
    frame = frames.encode_request(Method.LIST_MODELS, 7, b"hi")
    splitter.get_buffer(len(frame))[:] = frame
    splitter.buffer_updated(len(frame))
    kind, method, status, request_id, body = splitter.next_view()
    assert (kind, method, status, request_id, bytes(body)) == (
        Kind.REQUEST, Method.LIST_MODELS, 0, 7, b"hi")
