"""The connection objects of edge_agent.protocol, without sockets: bytes (and descriptors) in,
events out, driven the way the socket loops drive them. Every test runs on both frame
splitters, the compiled one and its pure-Python twin."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edge_agent.protocol._framing
import edge_agent.protocol._framing_py
from edge_agent.errors import StatusCode
from edge_agent.transport.pending import PendingBudget
from edge_agent.protocol import (CLOSED, HEADER, NEED_DATA, ClientConnection, FrameSplitter,
                                 Kind, ProtocolError, Reply, Request, ServerConnection,
                                 encode_error, encode_request)
from edge_agent.api.rpcs import Method
from edge_agent.protocol.receiving import MAX_FDS, WAITALL_BYTES
from wire import encode_reply, split_frames

SPLITTERS = {"compiled": edge_agent.protocol._framing.FrameSplitter,
             "python": edge_agent.protocol._framing_py.FrameSplitter}
LIMIT = 1 << 20
FRAME_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0


def send_reply(conn: ServerConnection, *args) -> bytes:
    """The reply frame, joined (the loop sends the two parts in one sendmsg)."""
    return b"".join(conn.reply_parts(*args))


@pytest.fixture(params=sorted(SPLITTERS), scope="module")
def splitter(request):
    return SPLITTERS[request.param]


def server(splitter, budget=None, receive_bytes=4096, limit=LIMIT):
    return ServerConnection(limit, budget or PendingBudget(1 << 30), FRAME_TIMEOUT,
                            IDLE_TIMEOUT, receive_bytes=receive_bytes, splitter=splitter)


def deliver(conn: ServerConnection, data: bytes, now: float = 0.0, fds=(),
            truncated: bool = False) -> None:
    """Bytes arriving in one receive, as the loop hands them over: into get_buffer()."""
    assert conn.next_event() is NEED_DATA
    view = conn.get_buffer()
    assert len(view) >= len(data), "one receive never brings more than the buffer offered"
    view[:len(data)] = data
    conn.buffer_updated(len(data), now, fds, truncated)


def stream_in(conn: ServerConnection, data: bytes, now: float = 0.0, describe=lambda e: e) -> list:
    """All of `data` through get_buffer()/buffer_updated(), as many receives as the offered
    space needs; every event on the way (NEED_DATA left out), requests answered OK.
    `describe`: what is kept of each event, taken at once (a body view is valid only until
    the next get_buffer())."""
    events, offset = [], 0
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            if offset == len(data):
                return events
            view = conn.get_buffer()
            n = min(len(view), len(data) - offset)
            view[:n] = data[offset:offset + n]
            offset += n
            conn.buffer_updated(n, now)
            continue
        events.append(describe(event))
        if isinstance(event, Request):
            send_reply(conn, event.request_id, event.method, StatusCode.OK, b"")
        if event is CLOSED:
            return events


def described(event):
    """An event as plain values (a body view copied): comparable after the buffer moved on."""
    if isinstance(event, Request):
        return ("request", event.method, event.request_id, bytes(event.body), event.fds)
    if isinstance(event, ProtocolError):
        return ("error", int(event.code), event.message, event.request_id, event.method,
                event.closing)
    return repr(event)


def receive(splitter, data: bytes) -> None:
    splitter.get_buffer(len(data))[:] = data
    splitter.buffer_updated(len(data))


def decode_reply(data: bytes):
    splitter = FrameSplitter(LIMIT)
    frames = split_frames(splitter, data)
    assert len(frames) == 1 and not splitter.pending
    return frames[0]


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def memfds():
    """Real descriptors to pass; any the connection failed to close are closed here."""
    made = []

    def make(n=1):
        new = tuple(os.memfd_create("passed", os.MFD_CLOEXEC) for _ in range(n))
        made.extend(new)
        return new
    yield make
    for fd in made:
        if is_open(fd):
            os.close(fd)


# --- the server side: requests ----------------------------------------------------------------

def test_a_request_comes_out_with_its_body_as_a_view_of_the_buffer(splitter):
    conn = server(splitter)
    deliver(conn, encode_request(Method.LIST_MODELS, 7, b"hello"))
    event = conn.next_event()
    assert isinstance(event, Request)
    assert (event.method, event.request_id, event.fds) == (Method.LIST_MODELS, 7, ())
    assert isinstance(event.body, memoryview) and event.body == b"hello"
    reply = decode_reply(send_reply(conn, 7, Method.LIST_MODELS, StatusCode.OK, b"answer"))
    assert (reply.kind, reply.method, reply.status, reply.request_id, reply.body) == \
        (Kind.REPLY, Method.LIST_MODELS, StatusCode.OK, 7, b"answer")
    assert conn.next_event() is NEED_DATA


def test_the_receive_buffer_is_reused_from_request_to_request(splitter):
    conn = server(splitter)
    buffers = set()
    for request_id in range(1, 50):
        deliver(conn, encode_request(Method.PREDICT, request_id, b"x" * 100))
        event = conn.next_event()
        buffers.add(id(event.body.obj))
        send_reply(conn, request_id, Method.PREDICT, StatusCode.OK, b"")
        del event
    assert len(buffers) == 1


def test_a_failed_call_is_encoded_as_an_error_reply(splitter):
    conn = server(splitter)
    deliver(conn, encode_request(Method.DESCRIBE_MODEL, 3, b""))
    event = conn.next_event()
    reply = decode_reply(send_reply(conn, event.request_id, event.method, StatusCode.NOT_FOUND,
                                         "no model named x"))
    assert (reply.status, reply.method, reply.body) == \
        (StatusCode.NOT_FOUND, Method.DESCRIBE_MODEL, b"no model named x")


def test_reply_parts_are_the_reply_frame_not_joined(splitter):
    """The loop sends header and body apart (one sendmsg): together they are the whole reply frame
    frame, and the body is the response object itself, not a copy."""
    conn = server(splitter)
    body = b"r" * 10000
    for request_id, code, reply in ((1, StatusCode.OK, body),
                                    (2, StatusCode.NOT_FOUND, "no model named \u00e9")):
        deliver(conn, encode_request(Method.PREDICT, request_id, b""))
        conn.next_event()
        header, sent = conn.reply_parts(request_id, Method.PREDICT, code, reply)
        if code == StatusCode.OK:
            assert sent is body
        frame = decode_reply(header + sent)
        assert (frame.kind, frame.method, frame.status, frame.request_id) == \
            (Kind.REPLY, Method.PREDICT, code, request_id)
        assert frame.body == (reply if code == StatusCode.OK else reply.encode())
    with pytest.raises(RuntimeError):  # one reply per request
        conn.reply_parts(2, Method.PREDICT, StatusCode.OK, b"")


def test_a_reply_is_only_for_the_request_being_answered(splitter):
    conn = server(splitter)
    deliver(conn, encode_request(Method.LIST_MODELS, 3, b""))
    conn.next_event()
    with pytest.raises(RuntimeError, match="reply to request 4, but 3"):
        send_reply(conn, 4, Method.LIST_MODELS, StatusCode.OK, b"")


def test_pipelined_requests_come_out_in_order(splitter):
    conn = server(splitter)
    data = b"".join(encode_request(Method.PREDICT, i, bytes([i]) * i) for i in range(1, 6))
    events = stream_in(conn, data)
    assert [described(e) for e in events] == [
        ("request", Method.PREDICT, i, bytes([i]) * i, ()) for i in range(1, 6)]



def test_drained_says_whether_anything_received_waits_behind_a_request(splitter):
    """What the loop asks when it hands a call off: may the connection's next step be
    nothing but waiting for the client (its worker then re-arms reading itself)?"""
    one = encode_request(Method.PREDICT, 1, b"a")
    conn = server(splitter)
    deliver(conn, one)
    assert isinstance(conn.next_event(), Request) and conn.drained
    conn = server(splitter)
    deliver(conn, one + encode_request(Method.PREDICT, 2, b"b"))  # a second, whole
    assert isinstance(conn.next_event(), Request) and not conn.drained
    conn = server(splitter)
    deliver(conn, one + one[:5])  # part of a second
    assert isinstance(conn.next_event(), Request) and not conn.drained
    conn = server(splitter)
    deliver(conn, one)
    conn.receive_eof()  # the end of the stream after it
    assert isinstance(conn.next_event(), Request) and not conn.drained

# --- the server side: protocol errors ---------------------------------------------------------

@pytest.mark.parametrize("frame, code, message, request_id", [
    (b"XY" + bytes(14), StatusCode.INVALID_ARGUMENT,
     "not an edge-agent frame: expected magic 'EA', got 5859", 0),
    (HEADER.pack(b"EA", 2, Kind.REQUEST, 1, 0, 9, 0), StatusCode.INVALID_ARGUMENT,
     "unsupported protocol version 2 (this agent speaks 1)", 9),
    (HEADER.pack(b"EA", 1, Kind.REQUEST, 1, 0, 9, LIMIT + 1), StatusCode.RESOURCE_EXHAUSTED,
     f"frame body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes", 9),
    (encode_reply(Method.PREDICT, 9, b""), StatusCode.INVALID_ARGUMENT,
     "expected a request frame, got kind 2", 9),
    (HEADER.pack(b"EA", 1, 7, 1, 0, 9, 0), StatusCode.INVALID_ARGUMENT,
     "expected a request frame, got kind 7", 9),
])
def test_a_broken_stream_gets_one_closing_error(splitter, frame, code, message, request_id):
    conn = server(splitter)
    # A good request first: answered before the fault is reached.
    events = stream_in(conn, encode_request(Method.LIST_MODELS, 1, b"") + frame
                       + encode_request(Method.LIST_MODELS, 2, b""))
    assert [described(e) for e in events] == [
        ("request", Method.LIST_MODELS, 1, b"", ()),
        ("error", code, message, request_id, 0, True), "CLOSED"]
    reply = decode_reply(conn.send_error(events[1]))
    assert (reply.status, reply.request_id, reply.body) == (code, request_id, message.encode())
    assert conn.next_event() is CLOSED


def test_an_oversized_body_is_refused_before_any_of_it_arrives(splitter):
    conn = server(splitter, limit=100)
    deliver(conn, HEADER.pack(b"EA", 1, Kind.REQUEST, 1, 0, 4, 101))
    event = conn.next_event()
    assert (event.code, event.request_id, event.closing) == \
        (StatusCode.RESOURCE_EXHAUSTED, 4, True)


def test_a_request_with_a_status_is_refused_and_the_connection_stays(splitter):
    conn = server(splitter)
    bad = HEADER.pack(b"EA", 1, Kind.REQUEST, Method.PREDICT, 3, 5, 0)
    events = stream_in(conn, bad + encode_request(Method.LIST_MODELS, 6, b""))
    assert [described(e) for e in events] == [
        ("error", StatusCode.INVALID_ARGUMENT, "a request frame carries status 0, got 3", 5,
         Method.PREDICT, False),
        ("request", Method.LIST_MODELS, 6, b"", ())]
    reply = decode_reply(conn.send_error(events[0]))
    assert (reply.method, reply.request_id) == (Method.PREDICT, 5)


def test_end_of_stream_between_frames_closes(splitter):
    budget = PendingBudget(1 << 20)
    conn = server(splitter, budget)
    deliver(conn, encode_request(Method.LIST_MODELS, 1, b""))
    assert isinstance(conn.next_event(), Request)
    send_reply(conn, 1, Method.LIST_MODELS, StatusCode.OK, b"")
    assert conn.next_event() is NEED_DATA
    conn.receive_eof()
    assert conn.next_event() is CLOSED and budget.used == 0


def test_end_of_stream_in_the_middle_of_a_frame_is_an_error(splitter):
    budget = PendingBudget(1 << 20)
    conn = server(splitter, budget)
    deliver(conn, encode_request(Method.LIST_MODELS, 1, b"abc")[:10])
    assert conn.next_event() is NEED_DATA
    conn.receive_eof()
    event = conn.next_event()
    assert described(event) == ("error", StatusCode.INVALID_ARGUMENT,
                                "connection closed in the middle of a frame (10 bytes pending)",
                                0, 0, True)
    assert conn.next_event() is CLOSED and budget.used == 0


# --- the server side: time -------------------------------------------------------------------

def test_the_receive_timeout_follows_the_state(splitter):
    conn = server(splitter)
    assert conn.next_event() is NEED_DATA
    assert conn.receive_timeout == IDLE_TIMEOUT and not conn.frame_in_progress
    frame = encode_request(Method.LIST_MODELS, 1, b"abc")
    deliver(conn, frame[:5], now=100.0)
    assert conn.next_event() is NEED_DATA
    assert conn.receive_timeout == FRAME_TIMEOUT and conn.frame_in_progress
    deliver(conn, frame[5:], now=101.0)
    assert isinstance(conn.next_event(), Request)
    send_reply(conn, 1, Method.LIST_MODELS, StatusCode.OK, b"")
    assert conn.next_event() is NEED_DATA
    assert conn.receive_timeout == IDLE_TIMEOUT and not conn.frame_in_progress


def test_an_idle_client_is_told_and_let_go(splitter):
    conn = server(splitter)
    assert conn.next_event() is NEED_DATA
    conn.receive_timed_out()
    event = conn.next_event()
    assert described(event) == (
        "error", StatusCode.UNAVAILABLE,
        "connection closed after 30 s without a request (edge_agent_idle_timeout_seconds); "
        "connect again", 0, 0, True)
    assert conn.next_event() is CLOSED


def test_a_client_stalled_in_a_frame_gets_deadline_exceeded(splitter):
    conn = server(splitter)
    deliver(conn, encode_request(Method.LIST_MODELS, 1, b"abc")[:5], now=10.0)
    assert conn.next_event() is NEED_DATA
    conn.receive_timed_out()
    assert described(conn.next_event()) == (
        "error", StatusCode.DEADLINE_EXCEEDED, "frame not completed within 5 s", 0, 0, True)


def test_a_trickle_of_bytes_cannot_hold_a_frame_open(splitter):
    conn = server(splitter)
    frame = encode_request(Method.LIST_MODELS, 1, b"x" * 20)
    deliver(conn, frame[:1], now=10.0)
    for i, now in enumerate((11.0, 12.0, 14.0, 15.0), start=1):  # within the 5 s: waits
        deliver(conn, frame[i:i + 1], now=now)
    deliver(conn, frame[5:6], now=15.5)  # 5.5 s after the frame began
    assert described(conn.next_event()) == (
        "error", StatusCode.DEADLINE_EXCEEDED, "frame not completed within 5 s", 0, 0, True)


def test_a_frame_behind_a_request_starts_its_clock_when_the_agent_is_done_answering(splitter):
    """A request and the start of the next frame arrive together; answering the first takes
    longer than the frame timeout. That time was the agent's: the second frame's clock starts
    when the loop asks for the next event, not when its first bytes came."""
    conn = server(splitter)
    first = encode_request(Method.LOAD_MODEL, 1, b"slow")
    second = encode_request(Method.LIST_MODELS, 2, b"x" * 20)
    deliver(conn, first + second[:6], now=0.0)
    request = conn.next_event(0.0)
    assert isinstance(request, Request) and request.request_id == 1
    send_reply(conn, 1, Method.LOAD_MODEL, StatusCode.OK, b"")
    assert conn.next_event(15.0) is NEED_DATA  # answered 15 s later: no deadline passed yet
    assert conn.receive_timeout == FRAME_TIMEOUT and conn.frame_in_progress
    view = conn.get_buffer()
    view[:1] = second[6:7]
    conn.buffer_updated(1, 16.0)  # 16 s after its first bytes, 1 s after the answer
    assert conn.next_event(16.0) is NEED_DATA
    view = conn.get_buffer()
    view[:len(second) - 7] = second[7:]
    conn.buffer_updated(len(second) - 7, 17.0)
    event = conn.next_event(17.0)
    assert isinstance(event, Request) and event.request_id == 2
    # Without a time from the loop, the frame is timed from its bytes' arrival, as before.
    send_reply(conn, 2, Method.LIST_MODELS, StatusCode.OK, b"")
    deliver(conn, second[:6], now=20.0)
    deliver(conn, second[6:7], now=26.0)
    assert described(conn.next_event()) == (
        "error", StatusCode.DEADLINE_EXCEEDED, "frame not completed within 5 s", 0, 0, True)


# --- the server side: the pending budget ------------------------------------------------------

def test_an_incomplete_frame_holds_the_budget_until_it_is_whole(splitter):
    budget = PendingBudget(1 << 20)
    conn = server(splitter, budget)
    frame = encode_request(Method.PREDICT, 1, b"y" * 1000)
    deliver(conn, frame[:300])
    assert budget.used == 300
    deliver(conn, frame[300:])
    assert budget.used == len(frame)
    assert isinstance(conn.next_event(), Request)
    assert budget.used == 0  # released before the call runs
    conn.close()
    assert budget.used == 0


def test_a_large_body_grows_the_buffer_with_what_arrived(splitter):
    budget = PendingBudget(1 << 30)
    conn = server(splitter, budget, receive_bytes=4096)
    body = bytes(range(256)) * 4096  # 1 MiB
    frame = encode_request(Method.PREDICT, 1, body)
    deliver(conn, frame[:4096])
    offered = []
    offset = 4096
    while (event := conn.next_event()) is NEED_DATA:
        view = conn.get_buffer()
        # At most doubling what is pending; beyond the fixed buffer, set aside against the
        # budget before any of it arrived.
        assert len(view) <= max(4096, offset)
        assert conn.receive_whole == (len(view) > 4096)
        if conn.receive_whole:
            assert budget.used == offset + len(view)
        offered.append(len(view))
        n = min(len(view), len(frame) - offset)
        view[:n] = frame[offset:offset + n]
        offset += n
        conn.buffer_updated(n, 0.0)
    assert offered[:4] == [4096, 8192, 16384, 32768] and max(offered) <= WAITALL_BYTES
    assert isinstance(event, Request) and event.body == body
    del event
    send_reply(conn, 1, Method.PREDICT, StatusCode.OK, b"")
    assert conn.next_event() is NEED_DATA and budget.used == 0
    assert len(conn.get_buffer()) == 4096 and not conn.receive_whole


@pytest.mark.parametrize("first", [1, 1000, 3000, 4095, 4096])
def test_a_large_body_takes_the_same_steps_however_its_first_bytes_came(splitter, first):
    """The space set aside grows to the next power-of-two multiple of the fixed buffer, so
    what a large frame holds against the budget does not depend on how the kernel cut it."""
    budget = PendingBudget(1 << 30)
    conn = server(splitter, budget, receive_bytes=4096)
    frame = encode_request(Method.PREDICT, 1, bytes(100000))
    deliver(conn, frame[:first])
    offset, reached = first, []
    while (event := conn.next_event()) is NEED_DATA:
        view = conn.get_buffer()
        if conn.receive_whole:
            reached.append((offset + len(view), budget.used))
            n = len(view)
        else:
            n = min(len(view), 1000)  # ordinary receives bring what happened to arrive
        view[:n] = frame[offset:offset + n]
        offset += n
        conn.buffer_updated(n, 0.0)
    # Up to twice the fixed buffer, ordinary receives; then set aside, from the same points.
    assert reached == [(16384, 16384), (32768, 32768), (65536, 65536), (len(frame), len(frame))]
    assert isinstance(event, Request)


def test_the_budget_refuses_what_all_connections_together_would_exceed(splitter):
    budget = PendingBudget(1000)
    first, second = server(splitter, budget), server(splitter, budget)
    frame = encode_request(Method.PREDICT, 1, b"z" * 900)
    deliver(first, frame[:700])
    deliver(second, frame[:400])
    event = second.next_event()
    assert (event.code, event.closing) == (StatusCode.RESOURCE_EXHAUSTED, True)
    assert event.message == budget.refusal()
    assert budget.used == 700  # the refused bytes are not held
    first.close()
    assert budget.used == 0


def test_a_bad_header_is_refused_for_itself_even_when_the_budget_is_full(splitter):
    budget = PendingBudget(10)
    conn = server(splitter, budget)
    deliver(conn, b"XY" + bytes(30))
    event = conn.next_event()
    assert (event.code, event.message) == (
        StatusCode.INVALID_ARGUMENT, "not an edge-agent frame: expected magic 'EA', got 5859")


def test_a_budget_that_cannot_hold_the_rest_of_a_large_body_refuses_it(splitter):
    budget = PendingBudget(10000)
    conn = server(splitter, budget, receive_bytes=4096)
    frame = encode_request(Method.PREDICT, 1, bytes(100000))
    deliver(conn, frame[:4096])
    deliver(conn, frame[4096:8192])
    event = conn.next_event()  # setting 8192 bytes aside would take it to 16384
    assert (event.code, event.message) == (StatusCode.RESOURCE_EXHAUSTED, budget.refusal())
    assert budget.used == 0


def test_bytes_the_budget_cannot_hold_are_refused_when_they_arrive(splitter):
    budget = PendingBudget(6000)
    conn = server(splitter, budget, receive_bytes=4096)
    frame = encode_request(Method.PREDICT, 1, bytes(100000))
    deliver(conn, frame[:4096])
    deliver(conn, frame[4096:8192])
    event = conn.next_event()
    assert (event.code, event.message) == (StatusCode.RESOURCE_EXHAUSTED, budget.refusal())
    assert budget.used == 0


# --- the server side: descriptors -------------------------------------------------------------

def test_descriptors_go_to_the_frame_they_arrived_with(splitter, memfds):
    conn = server(splitter)
    fds = memfds(2)
    deliver(conn, encode_request(Method.PREDICT, 1, b"a") + encode_request(Method.PREDICT, 2, b"b"),
            fds=fds)
    first, second = conn.next_event(), conn.next_event()
    # The last frame that begins in the bytes they came with owns them.
    assert (first.request_id, first.fds, second.request_id, second.fds) == (1, (), 2, fds)
    assert all(is_open(fd) for fd in fds)  # the loop's to close, after the call


def test_descriptors_of_a_frame_still_incomplete_wait_for_it(splitter, memfds):
    conn = server(splitter)
    fds = memfds()
    frame = encode_request(Method.LOAD_MODEL, 4, b"q" * 50)
    deliver(conn, frame[:20], fds=fds)
    assert conn.next_event() is NEED_DATA
    deliver(conn, frame[20:])
    event = conn.next_event()
    assert (event.request_id, event.fds, bytes(event.body)) == (4, fds, b"q" * 50)


def test_descriptors_in_the_middle_of_a_frame_are_refused_and_closed(splitter, memfds):
    conn = server(splitter)
    fds = memfds(2)
    frame = encode_request(Method.PREDICT, 8, b"m" * 40)
    deliver(conn, frame[:10])
    deliver(conn, frame[10:], fds=fds)
    event = conn.next_event()
    assert (event.code, event.request_id, event.closing) == (StatusCode.INVALID_ARGUMENT, 8, True)
    assert "file descriptors arrived in the middle of a frame" in event.message
    assert not any(is_open(fd) for fd in fds)
    assert conn.next_event() is CLOSED


def test_descriptors_with_no_request_are_closed(splitter, memfds):
    conn = server(splitter)
    fds = memfds()
    deliver(conn, encode_reply(Method.PREDICT, 3, b""), fds=fds)
    event = conn.next_event()
    assert (event.message, event.closing) == ("expected a request frame, got kind 2", True)
    assert not is_open(fds[0])


def test_descriptors_of_a_refused_request_frame_are_closed(splitter, memfds):
    conn = server(splitter)
    fds = memfds()
    deliver(conn, HEADER.pack(b"EA", 1, Kind.REQUEST, Method.PREDICT, 1, 3, 0), fds=fds)
    event = conn.next_event()
    assert (event.request_id, event.closing) == (3, False)
    assert not is_open(fds[0])


def test_truncated_ancillary_data_refuses_that_request_only(splitter, memfds):
    conn = server(splitter)
    fds = memfds(3)  # what fitted; the kernel closed the rest and said MSG_CTRUNC
    deliver(conn, encode_request(Method.PREDICT, 5, b""), fds=fds, truncated=True)
    event = conn.next_event()
    assert described(event) == (
        "error", StatusCode.INVALID_ARGUMENT,
        f"more than {MAX_FDS} file descriptors came with one frame; all were closed", 5,
        Method.PREDICT, False)
    assert not any(is_open(fd) for fd in fds)
    deliver(conn, encode_request(Method.LIST_MODELS, 6, b""))
    assert conn.next_event().request_id == 6


def test_no_buffer_is_given_while_requests_split_early_wait(splitter, memfds):
    """Frames that came with descriptors are split at once; their bodies are views of the
    receive buffer, which another receive would move or overwrite: get_buffer() refuses
    until the last of them is handed out."""
    conn = server(splitter)
    fds = memfds()
    frames = [encode_request(Method.DESCRIBE_MODEL, i, bytes([i]) * 20) for i in (1, 2, 3)]
    deliver(conn, b"".join(frames), fds=fds)
    first = conn.next_event()
    assert first.request_id == 1
    with pytest.raises(RuntimeError, match="NEED_DATA"):
        conn.get_buffer()
    send_reply(conn, 1, first.method, StatusCode.OK, b"")
    second, third = conn.next_event(), conn.next_event()
    assert (bytes(second.body), bytes(third.body), third.fds) == (b"\2" * 20, b"\3" * 20, fds)
    assert conn.next_event() is NEED_DATA
    assert len(conn.get_buffer()) > 0


def test_descriptors_not_handed_out_are_closed_with_the_connection(splitter, memfds):
    budget = PendingBudget(1 << 20)
    conn = server(splitter, budget)
    fds = memfds()
    deliver(conn, encode_request(Method.PREDICT, 1, b"w" * 30)[:18], fds=fds)
    assert conn.next_event() is NEED_DATA
    conn.close()
    assert not is_open(fds[0]) and budget.used == 0
    conn.close()  # idempotent


def test_frames_after_a_fault_are_not_handed_out_and_their_descriptors_closed(splitter, memfds):
    conn = server(splitter)
    fds = memfds()
    data = (encode_request(Method.LIST_MODELS, 1, b"") + encode_reply(Method.PREDICT, 2, b"")
            + encode_request(Method.PREDICT, 3, b""))
    deliver(conn, data, fds=fds)  # they belong to request 3, never reached
    assert conn.next_event().request_id == 1
    assert conn.next_event().message == "expected a request frame, got kind 2"
    assert conn.next_event() is CLOSED
    assert not is_open(fds[0])


# --- the client side --------------------------------------------------------------------------

def client(splitter) -> ClientConnection:
    return ClientConnection(splitter=splitter)


def client_events(conn: ClientConnection, data: bytes) -> list:
    conn.receive_data(data)
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if event is CLOSED or isinstance(event, ProtocolError):
            break
    return events


def test_requests_get_ids_and_replies_are_matched(splitter):
    conn = client(splitter)
    first, data = conn.send_request(Method.LIST_MODELS, b"q")
    second, _ = conn.send_request(Method.PREDICT, b"")
    assert (first, second) == (1, 2) and conn.outstanding == {1, 2}
    frame = decode_reply(data)
    assert (frame.kind, frame.method, frame.request_id, frame.body) == \
        (Kind.REQUEST, Method.LIST_MODELS, 1, b"q")
    events = client_events(conn, encode_reply(Method.PREDICT, 2, b"p")
                           + encode_error(StatusCode.NOT_FOUND, 1, "gone", Method.LIST_MODELS))
    assert [(e.request_id, e.method, e.code, bytes(e.body)) for e in events] == [
        (2, Method.PREDICT, 0, b"p"), (1, Method.LIST_MODELS, StatusCode.NOT_FOUND, b"gone")]
    assert isinstance(events[0], Reply) and conn.outstanding == frozenset()


def test_request_ids_wrap_around_without_zero_or_one_still_awaited(splitter):
    conn = client(splitter)
    conn._next_id = 0xFFFFFFFF
    assert conn.send_request(Method.PREDICT, b"")[0] == 0xFFFFFFFF
    assert conn.send_request(Method.PREDICT, b"")[0] == 1
    conn._next_id = 0xFFFFFFFF
    assert conn.send_request(Method.PREDICT, b"")[0] == 2  # 0xFFFFFFFF and 1 are awaited


def test_the_reply_of_an_abandoned_request_is_dropped(splitter):
    conn = client(splitter)
    stale, _ = conn.send_request(Method.PREDICT, b"")
    conn.abandon(stale)  # the caller timed out
    fresh, _ = conn.send_request(Method.PREDICT, b"")
    events = client_events(conn, encode_reply(Method.PREDICT, stale, b"late")
                           + encode_reply(Method.PREDICT, fresh, b"mine"))
    assert [(e.request_id, bytes(e.body)) for e in events] == [(fresh, b"mine")]


@pytest.mark.parametrize("reply, message", [
    (encode_reply(Method.PREDICT, 99, b""),
     "the agent replied to request 99, which is not awaiting a reply"),
    (encode_reply(Method.LIST_MODELS, 1, b""),
     "the agent's reply to request 1 is for method 4, the request was for method 1"),
    (encode_request(Method.PREDICT, 1, b""), "the agent sent a frame of kind 1, not a reply"),
    (b"HTTP/1.1 400 Bad Request\r\n",
     "the agent's reply stream is broken: not an edge-agent frame: expected magic 'EA', "
     "got 4854"),
])
def test_a_reply_that_does_not_match_is_a_protocol_error(splitter, reply, message):
    conn = client(splitter)
    conn.send_request(Method.PREDICT, b"")
    events = client_events(conn, reply)
    assert [described(e) for e in events] == [("error", StatusCode.INTERNAL, message, 0, 0, True)]
    assert conn.next_event() is CLOSED


def test_an_error_about_the_frame_itself_names_no_method_and_is_the_reply(splitter):
    conn = client(splitter)
    request_id, _ = conn.send_request(Method.PREDICT, b"")
    events = client_events(conn, encode_error(StatusCode.RESOURCE_EXHAUSTED, request_id, "big"))
    assert [(e.request_id, e.method, e.code) for e in events] == \
        [(request_id, 0, StatusCode.RESOURCE_EXHAUSTED)]


def test_the_agents_word_on_the_connection_comes_as_reply_zero_then_the_end(splitter):
    conn = client(splitter)
    conn.send_request(Method.PREDICT, b"")
    conn.receive_data(encode_error(StatusCode.UNAVAILABLE, 0, "idle"))
    event = conn.next_event()
    assert (event.request_id, event.code, bytes(event.body)) == (0, StatusCode.UNAVAILABLE, b"idle")
    assert conn.next_event() is CLOSED


def test_the_end_of_the_replies(splitter):
    conn = client(splitter)
    conn.send_request(Method.PREDICT, b"")
    assert client_events(conn, b"") == [CLOSED]
    conn = client(splitter)
    conn.send_request(Method.PREDICT, b"")
    conn.receive_data(encode_reply(Method.PREDICT, 1, b"abc")[:7])
    assert conn.next_event() is NEED_DATA
    conn.receive_eof()
    assert described(conn.next_event()) == (
        "error", StatusCode.UNAVAILABLE,
        "the agent closed the connection in the middle of a frame (7 bytes pending)", 0, 0, True)


def test_the_client_receives_into_its_buffer_and_grows_it_for_a_large_reply(splitter):
    conn = ClientConnection(receive_bytes=1024, splitter=splitter)
    request_id, _ = conn.send_request(Method.PREDICT, b"")
    body = os.urandom(50000)
    data = encode_reply(Method.PREDICT, request_id, body)
    offset = 0
    while (event := conn.next_event()) is NEED_DATA:
        view = conn.get_buffer()
        assert len(view) <= max(1024, 2 * offset)  # grows with what arrived
        n = min(len(view), len(data) - offset)
        view[:n] = data[offset:offset + n]
        offset += n
        conn.buffer_updated(n)
    assert event.body == body


# --- any split of the stream ------------------------------------------------------------------

def _requests(draw) -> bytes:
    frame = st.builds(encode_request, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
                      st.one_of(st.binary(max_size=64), st.integers(5000, 9000).map(bytes)))
    refused = st.builds(lambda m, s, r: HEADER.pack(b"EA", 1, Kind.REQUEST, m, s, r, 0),
                        st.integers(0, 0xFFFF), st.integers(1, 0xFFFF), st.integers(0, 2**32 - 1))
    parts = draw(st.lists(st.one_of(frame, refused), max_size=8))
    tail = draw(st.sampled_from([b"", b"", b"XX" + bytes(14), encode_reply(1, 1, b"")]))
    return b"".join(parts) + tail


def _cut(data, stream: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]


def _server_events(splitter, chunks: list[bytes]) -> list:
    conn = server(splitter, receive_bytes=1024)
    said = []
    for chunk in chunks:
        said.extend(stream_in(conn, chunk, describe=described))
        if said and said[-1] == "CLOSED":
            return said
    if conn.next_event() is NEED_DATA:
        conn.receive_eof()
        said.extend(stream_in(conn, b"", describe=described))
    return said


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_split_of_a_stream_gives_the_same_events(data):
    stream = _requests(data.draw)
    whole = _server_events(SPLITTERS["python"], [stream])
    for splitter in SPLITTERS.values():
        assert _server_events(splitter, _cut(data, stream)) == whole


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_split_of_the_replies_gives_the_same_replies(data):
    bodies = data.draw(st.lists(st.one_of(st.binary(max_size=40),
                                          st.integers(2000, 6000).map(bytes)), max_size=6))

    def run(splitter, chunks):
        conn = ClientConnection(receive_bytes=512, splitter=splitter)
        ids = [conn.send_request(Method.PREDICT, b"")[0] for _ in bodies]
        said = []
        for chunk in filter(None, chunks):  # (an empty receive is the end of the stream)
            said.extend((e.request_id, bytes(e.body)) if isinstance(e, Reply) else described(e)
                        for e in client_events(conn, chunk))
        return ids, said

    stream = b"".join(encode_reply(Method.PREDICT, i, body)
                      for i, body in enumerate(bodies, start=1))
    ids, whole = run(SPLITTERS["python"], [stream])
    assert whole == list(zip(ids, bodies))
    for splitter in SPLITTERS.values():
        assert run(splitter, _cut(data, stream)) == (ids, whole)


def test_the_buffer_grows_and_shrinks_even_while_a_body_view_is_alive(splitter):
    """A view handed out pins the buffer's memory: the splitter then moves to a new buffer
    rather than fail (the view's bytes are no longer the splitter's to keep)."""
    frames = splitter(LIMIT, 64)
    second = encode_request(Method.PREDICT, 2, b"b" * 100)
    receive(frames, encode_request(Method.PREDICT, 1, b"a" * 10) + second[:30])
    kept = frames.next_view()[4]
    receive(frames, second[30:])  # more than 64 bytes pending: grows
    assert frames.buffered >= len(second)
    body = frames.next_view()[4]
    assert body == b"b" * 100
    view = frames.get_buffer(10)  # nothing pending: back to 64 bytes, beside the live views
    assert frames.buffered == 64 and len(view) == 10
    frames.buffer_updated(0)
    assert kept.nbytes == 10 and body == b"b" * 100  # the old buffer lives on with them
