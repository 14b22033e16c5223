"""The sans-IO gRPC server connection on plain bytes: an h2 client connection object on the
other side, no socket, time passed in."""
from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import pytest

from edge_agent.errors import StatusCode
from edge_agent.protocol.grpc_connection import (MAX_STREAMS, GrpcConnection, parse_timeout,
                                                 percent_encode, refusal_connection)
from edge_agent.transport.pending import PendingBudget

class Rpc:
    name = "Echo"


ECHO = Rpc()
ROUTES = {"/svc/Echo": ECHO}


def headers(path: str = "/svc/Echo", **extra) -> list[tuple[bytes, bytes]]:
    base = {b":method": b"POST", b":scheme": b"http", b":path": path.encode(),
            b":authority": b"agent", b"content-type": b"application/grpc", b"te": b"trailers"}
    base.update({k.replace("_", "-").encode(): v for k, v in extra.items()})
    return list(base.items())


def message(body: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(body)) + body


class Pair:
    """A server connection and an h2 client, bytes moved by hand."""

    def __init__(self, budget=None, max_message=1 << 20, frame_timeout=5.0, idle_timeout=0.0,
                 send_timeout=5.0, greet=True):
        self.budget = budget or PendingBudget(1 << 24, 1 << 10).holder(1)
        self.server = GrpcConnection(self.budget, ROUTES, max_message, frame_timeout,
                                     idle_timeout, send_timeout)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.now = 0.0
        self.server.initiate(self.now)
        self.client.initiate_connection()
        self.replies: dict[int, dict] = {}
        self.terminated = None
        self.to_server()
        if greet:  # the client has the server's settings
            self.to_client()

    def to_server(self) -> list:
        return self.server.receive_data(self.client.data_to_send(), self.now)

    def to_client(self) -> None:
        data = self.server.data_to_send()
        if not data:
            return
        for event in self.client.receive_data(data):
            if isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
                continue
            entry = self.replies.setdefault(getattr(event, "stream_id", 0),
                                            {"headers": {}, "data": b"", "trailers": {}})
            if isinstance(event, h2.events.ResponseReceived):
                entry["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                entry["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                entry["data"] += event.data
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                entry["done"] = True

    def call(self, header_list, *chunks: bytes, end: bool = True) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, header_list, end_stream=not chunks and end)
        for i, chunk in enumerate(chunks):
            self.client.send_data(stream_id, chunk, end_stream=end and i == len(chunks) - 1)
        return stream_id

    def status(self, stream_id: int) -> tuple[int, bytes]:
        entry = self.replies[stream_id]
        trailers = entry["trailers"] or entry["headers"]
        return int(trailers[b"grpc-status"]), trailers.get(b"grpc-message", b"")


def test_a_call_comes_out_whole_and_its_reply_goes_back():
    pair = Pair()
    stream_id = pair.call(headers(), message(b"hello"))
    calls = pair.to_server()
    assert [(c.stream_id, c.rpc, c.body) for c in calls] == [(stream_id, ECHO, b"hello")]
    assert pair.server.running == 1 and pair.server.busy
    pair.server.reply(stream_id, StatusCode.OK, b"world", pair.now)
    pair.to_client()
    assert pair.status(stream_id) == (0, b"")
    assert pair.replies[stream_id]["data"] == message(b"world")
    assert not pair.server.busy and pair.budget.total == 0


def test_a_message_in_many_frames_and_chunks_is_charged_until_handed_out():
    pair = Pair()
    body = bytes(range(256)) * 40
    data = message(body)
    stream_id = pair.call(headers(), *[data[i:i + 7] for i in range(0, len(data), 7)], end=False)
    wire = pair.client.data_to_send()
    for i in range(0, len(wire), 100):  # however the bytes are cut
        assert pair.server.receive_data(wire[i:i + 100], pair.now) == []
    assert pair.budget.total == len(data) and pair.server.incomplete
    pair.client.end_stream(stream_id)
    [call] = pair.to_server()
    assert call.body == body and pair.budget.total == 0


def test_refusals_before_a_call_runs():
    pair = Pair(max_message=100)
    not_grpc = pair.call(headers(content_type=b"text/plain"), message(b"x"))
    compressed = pair.call(headers(), message(b"x", compressed=1))
    too_large = pair.call(headers(), message(bytes(101)))
    two = pair.call(headers(), message(b"a") + message(b"b"))
    short = pair.call(headers(), message(b"abc")[:-1])
    assert pair.to_server() == []
    pair.to_client()
    assert pair.status(not_grpc)[0] == StatusCode.INVALID_ARGUMENT
    assert pair.status(compressed)[0] == StatusCode.UNIMPLEMENTED
    code, text = pair.status(too_large)
    assert code == StatusCode.RESOURCE_EXHAUSTED and b"101 bytes" in text
    assert pair.status(two)[0] == StatusCode.INVALID_ARGUMENT
    assert pair.status(short)[0] == StatusCode.INVALID_ARGUMENT
    assert not pair.server.busy and pair.budget.total == 0


def test_an_unknown_path_is_handed_out_at_once_with_no_rpc():
    pair = Pair()
    stream_id = pair.call(headers("/svc/Nope"), message(b"x"), end=False)
    [call] = pair.to_server()
    assert call.rpc is None and call.path == "/svc/Nope"
    pair.server.reply(stream_id, StatusCode.UNIMPLEMENTED, "unknown method /svc/Nope", pair.now)
    pair.to_client()
    assert pair.status(stream_id) == (StatusCode.UNIMPLEMENTED, b"unknown method /svc/Nope")


def test_the_pending_budget_refuses_a_call_past_it():
    budget = PendingBudget(64, 0).holder(1)
    pair = Pair(budget=budget)
    stream_id = pair.call(headers(), message(bytes(200)))
    assert pair.to_server() == []
    pair.to_client()
    assert pair.status(stream_id)[0] == StatusCode.RESOURCE_EXHAUSTED
    assert budget.total == 0


def test_an_expired_deadline_is_answered_without_running():
    pair = Pair()
    stream_id = pair.call(headers(grpc_timeout=b"1m"), message(b"x"), end=False)
    assert pair.to_server() == []
    pair.now += 1.0
    pair.client.end_stream(stream_id)
    assert pair.to_server() == []
    pair.to_client()
    assert pair.status(stream_id)[0] == StatusCode.DEADLINE_EXCEEDED


def test_a_deadline_comes_out_with_the_call():
    pair = Pair()
    pair.now = 10.0
    pair.call(headers(grpc_timeout=b"5S"), message(b"x"))
    [call] = pair.to_server()
    assert call.deadline == 15.0


def test_a_reply_held_back_by_flow_control_goes_on_as_the_window_opens():
    pair = Pair()
    stream_id = pair.call(headers(), message(b"x"))
    [call] = pair.to_server()
    big = bytes(200_000)  # past the client's 65,535-byte default window
    pair.server.reply(stream_id, StatusCode.OK, big, pair.now)
    pair.to_client()
    assert not pair.replies[stream_id].get("done") and pair.server.busy
    assert pair.server.deadline() == pair.now + 5.0  # the send timeout's clock
    acknowledged = 0
    for _ in range(100):  # a bound for a bug, each round opens the window by what came
        if pair.replies[stream_id].get("done"):
            break
        received = len(pair.replies[stream_id]["data"])
        pair.client.acknowledge_received_data(received - acknowledged, stream_id)
        acknowledged = received
        pair.to_server()
        pair.to_client()
    assert pair.replies[stream_id]["data"] == message(big)
    assert pair.status(stream_id) == (0, b"")


def test_a_client_that_does_not_open_its_window_is_given_up_after_the_send_timeout():
    pair = Pair(send_timeout=3.0)
    stream_id = pair.call(headers(), message(b"x"))
    pair.to_server()
    pair.server.reply(stream_id, StatusCode.OK, bytes(200_000), pair.now)
    pair.to_client()
    pair.now += 2.0
    assert pair.server.check_timers(pair.now) is None
    pair.now += 2.0
    assert "has not read its reply" in pair.server.check_timers(pair.now)
    assert pair.server.closed


def test_a_request_left_incomplete_is_given_up_after_the_frame_timeout():
    pair = Pair(frame_timeout=2.0)
    pair.call(headers(), message(b"abc")[:3], end=False)
    pair.to_server()
    assert pair.server.deadline() == 2.0
    pair.now = 1.0
    assert pair.server.check_timers(pair.now) is None
    pair.now = 2.5
    assert "not completed within 2 s" in pair.server.check_timers(pair.now)


def test_idle_clock_starts_when_the_last_call_ends_and_goaway_says_why():
    pair = Pair(idle_timeout=10.0)
    stream_id = pair.call(headers(), message(b"x"))
    pair.to_server()
    pair.now = 50.0  # a call longer than the idle timeout is never cut
    assert pair.server.deadline() is None and pair.server.check_timers(pair.now) is None
    pair.server.reply(stream_id, StatusCode.OK, b"", pair.now)
    pair.to_client()
    assert pair.server.deadline() == 60.0
    pair.now = 59.0
    assert pair.server.check_timers(pair.now) is None
    pair.now = 60.0
    assert "idle for 10 s" in pair.server.check_timers(pair.now)
    pair.to_client()
    assert pair.terminated is not None and b"without a request" in pair.terminated.additional_data


def test_streams_beyond_the_limit_are_refused_before_the_settings_are_acked():
    pair = Pair(greet=False)
    ids = [pair.call(headers(), message(b"x"), end=False) for _ in range(MAX_STREAMS + 2)]
    pair.to_server()
    pair.to_client()
    refused = [i for i in ids if pair.replies.get(i, {}).get("done")]
    assert refused == ids[MAX_STREAMS:]


def test_a_reset_stream_drops_its_reply_and_frees_its_bytes():
    pair = Pair()
    stream_id = pair.call(headers(), message(b"x"))
    pair.to_server()
    pair.client.reset_stream(stream_id)
    pair.to_server()
    pair.server.reply(stream_id, StatusCode.OK, b"late", pair.now)
    assert pair.server.data_to_send() == b"" and not pair.server.busy


def test_goaway_lets_open_calls_finish_and_refuses_new_ones():
    from hyperframe.frame import Frame, GoAwayFrame

    pair = Pair()
    stream_id = pair.call(headers(), message(b"x"))
    pair.to_server()
    pair.server.go_away()
    sent = memoryview(pair.server.data_to_send())
    goaway, length = Frame.parse_frame_header(sent[:9])
    goaway.parse_body(sent[9:9 + length])
    assert isinstance(goaway, GoAwayFrame) and goaway.last_stream_id == stream_id
    late = pair.call(headers(), message(b"y"))
    assert pair.to_server() == []
    pair.server.reply(stream_id, StatusCode.OK, b"done", pair.now)
    pair.to_client()
    assert pair.replies[stream_id]["data"] == message(b"done")
    assert pair.replies[late].get("done") and not pair.replies[late]["trailers"]


def test_only_an_idle_connection_is_evicted():
    pair = Pair()
    stream_id = pair.call(headers(), message(b"x"))
    pair.to_server()
    assert not pair.server.evict("room")
    pair.server.reply(stream_id, StatusCode.OK, b"", pair.now)
    assert pair.server.evict("room for another") and pair.server.closed
    pair.to_client()
    assert pair.terminated.additional_data == b"room for another"


def test_garbage_closes_the_connection_with_a_goaway():
    pair = Pair()
    assert pair.server.receive_data(b"\x00" * 9 + b"garbage", pair.now) == []
    assert pair.server.closed and "protocol error" in pair.server.close_reason


def test_a_connection_over_the_limit_is_answered_resource_exhausted_then_goaway():
    feed = refusal_connection("too many clients")
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    out, answered = feed(b"")
    assert not answered
    client.receive_data(out)
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, headers(), end_stream=True)
    out, answered = feed(client.data_to_send())
    events = client.receive_data(out)
    trailers = [dict(e.headers) for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert answered and trailers[0][b"grpc-status"] == b"%d" % StatusCode.RESOURCE_EXHAUSTED
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)


def test_helpers():
    assert percent_encode("a%b é") == b"a%25b %C3%A9"
    assert parse_timeout(b"100m") == pytest.approx(0.1) and parse_timeout(b"x") is None


def test_a_reset_call_still_running_counts_against_the_stream_limit():
    """Resetting a stream does not end its call: until the call is answered, a new stream
    beyond MAX_STREAMS is refused, else HEADERS, DATA and RST_STREAM in a loop would queue
    calls without bound. The reset call is no longer wanted; its answer frees its place."""
    pair = Pair()
    streams = [pair.call(headers(), message(b"")) for _ in range(MAX_STREAMS)]
    assert len(pair.to_server()) == MAX_STREAMS
    for stream_id in streams:
        pair.client.reset_stream(stream_id)
    extra = pair.call(headers(), message(b""))
    assert pair.to_server() == []  # refused: the reset calls still run
    pair.to_client()
    assert pair.replies[extra].get("done")
    assert not any(pair.server.wanted(stream_id) for stream_id in streams)
    pair.server.reply(streams[0], StatusCode.OK, b"late", pair.now)  # dropped: place freed
    again = pair.call(headers(), message(b""))
    assert [call.stream_id for call in pair.to_server()] == [again]
    assert pair.server.wanted(again)
    pair.to_client()
    assert streams[0] not in pair.replies or not pair.replies[streams[0]]["data"]


def test_a_stream_refused_over_the_limit_and_reset_by_the_client_in_one_chunk():
    """The client reset the stream past the limit in the same write that opened it: h2 has
    closed it already when the agent refuses it, and the connection goes on."""
    pair = Pair(greet=False)  # (a client with the agent's settings would not open a 17th)
    streams = [pair.call(headers(), end=False) for _ in range(MAX_STREAMS)]  # bodies to come
    assert pair.to_server() == []
    extra = pair.call(headers(), end=False)
    pair.client.reset_stream(extra)
    assert pair.to_server() == []  # no StreamClosedError out of receive_data
    assert not pair.server.closed
    pair.client.send_data(streams[0], message(b"x"), end_stream=True)
    assert [call.stream_id for call in pair.to_server()] == [streams[0]]
