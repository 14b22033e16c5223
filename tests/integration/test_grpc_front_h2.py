"""The gRPC front as a hostile or unusual HTTP/2 client sees it: requests written frame by
frame with h2's client side over the agent's real socket, and the helpers on their own."""
from __future__ import annotations

import os
import random
import socket
import struct
import threading

import h2.config
import h2.connection
import h2.events
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.api.rpcs import GRPC_SERVICE
from edge_agent.transport.grpc_front import parse_timeout, percent_encode

PATH = f"/{GRPC_SERVICE}/ListModels".encode()


def headers(path: bytes = PATH, **extra) -> list[tuple[bytes, bytes]]:
    base = {b":method": b"POST", b":scheme": b"http", b":path": path, b":authority": b"agent",
            b"content-type": b"application/grpc", b"te": b"trailers"}
    base.update({k.replace("_", "-").encode(): v for k, v in extra.items()})
    return list(base.items())


def message(body: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(body)) + body


class RawClient:
    """One HTTP/2 connection, written by hand."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.flush()
        self.replies: dict[int, dict] = {}
        self.goaway = None  # the ConnectionTerminated event, once the agent sent GOAWAY

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def call(self, header_list, *chunks: bytes, end: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, header_list, end_stream=not chunks and end)
        for i, chunk in enumerate(chunks):
            self.h2.send_data(stream_id, chunk, end_stream=end and i == len(chunks) - 1)
        self.flush()
        return stream_id

    def reply(self, stream_id: int) -> dict:
        """headers, data and trailers of one stream, once it ended (or was reset)."""
        while stream_id not in self.replies or not self.replies[stream_id].get("done"):
            self.receive()
        return self.replies[stream_id]

    def receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the agent closed the connection")
        for event in self.h2.receive_data(data):
            entry = self.replies.setdefault(getattr(event, "stream_id", 0), {
                "headers": {}, "data": b"", "trailers": {}})
            if isinstance(event, h2.events.ResponseReceived):
                entry["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                entry["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                entry["data"] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                entry["done"] = True
                if isinstance(event, h2.events.StreamReset):
                    entry["reset"] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()

    def settled(self) -> None:
        """Wait for the agent's settings and connection window (then large messages fit)."""
        while (self.h2.remote_settings.initial_window_size < 1 << 20
               or self.h2.outbound_flow_control_window < 1 << 20):
            self.receive()

    def status(self, stream_id: int) -> tuple[int, str]:
        reply = self.reply(stream_id)
        fields = {**reply["headers"], **reply["trailers"]}
        return int(fields[b"grpc-status"]), fields.get(b"grpc-message", b"").decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def grpc_path(tmp_path_factory):
    from agents import AgentInThread

    workdir = tmp_path_factory.mktemp("h2-agent")
    path = str(workdir / "grpc.sock")
    agent = AgentInThread(workdir, {"edge_agent_grpc_socket_path": path,
                                    "edge_agent_max_frame_bytes": 65536}).start()
    yield path
    assert agent.alive(), agent.log()
    agent.stop()


@pytest.fixture
def client(grpc_path):
    c = RawClient(grpc_path)
    yield c
    c.close()


def test_a_message_in_many_small_frames(client):
    body = message(pb.ListModelsRequest().SerializeToString())
    stream = client.call(headers(), *[bytes([b]) for b in body])
    assert client.status(stream) == (0, "")
    assert client.reply(stream)["data"] == message(b"")


def test_what_is_not_one_message_is_invalid(client):
    cases = {
        "nothing": client.call(headers()),
        "a prefix cut short": client.call(headers(), b"\x00\x00"),
        "a body cut short": client.call(headers(), struct.pack(">BI", 0, 10) + b"abc"),
        "two messages": client.call(headers(), message(b"") + message(b"")),
    }
    for what, stream in cases.items():
        code, text = client.status(stream)
        assert code == 3, what
        assert text == ("malformed ListModels request: a unary call carries exactly one gRPC "
                        "message"), what


def test_the_refusals_of_the_gateway(client):
    not_grpc = client.call(headers(content_type=b"application/json"), message(b""))
    assert client.status(not_grpc)[0] == 3
    unknown = client.call(headers(path=b"/nothing"), message(b""))
    assert client.status(unknown) == (12, "unknown method /nothing")
    compressed = client.call(headers(grpc_encoding=b"gzip"), message(b"zz", compressed=1))
    assert client.status(compressed)[0] == 12
    too_big = client.call(headers(), struct.pack(">BI", 0, 65537), end=False)
    assert client.status(too_big) == (8, "message of 65537 bytes exceeds the limit of 65536 bytes")
    # The connection still serves.
    assert client.status(client.call(headers(), message(b""))) == (0, "")


def test_an_expired_deadline_is_not_run(client):
    stream = client.call(headers(grpc_timeout=b"1n"), message(b""))
    assert client.status(stream) == (4, "the call's deadline passed before it could start")


def test_a_reset_call_and_garbage_leave_the_agent_serving(client, grpc_path):
    stream = client.call(headers(), b"\x00", end=False)
    client.h2.reset_stream(stream)
    client.flush()
    assert client.status(client.call(headers(), message(b""))) == (0, "")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(30)
        raw.connect(grpc_path)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")  # not HTTP/2
        while raw.recv(65536):
            pass  # a GOAWAY, then the agent closes
    again = RawClient(grpc_path)
    try:
        assert again.status(again.call(headers(), message(b""))) == (0, "")
    finally:
        again.close()


def test_garbage_after_the_preface_never_stops_the_agent(grpc_path):
    """Random frames, valid and not, on fresh connections: each is closed or answered, and
    the agent keeps serving everyone else."""
    rng = random.Random(7)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for _ in range(60):
        frames = b"".join(
            struct.pack(">I", rng.randrange(0, 64))[1:] + bytes([rng.randrange(0, 12),
                                                                 rng.randrange(0, 256)])
            + struct.pack(">I", rng.randrange(0, 8)) + rng.randbytes(rng.randrange(0, 64))
            for _ in range(rng.randrange(1, 6)))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(30)
            raw.connect(grpc_path)
            raw.sendall(preface + frames)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(65536):
                pass
    survivor = RawClient(grpc_path)
    try:
        assert survivor.status(survivor.call(headers(), message(b""))) == (0, "")
    finally:
        survivor.close()


def test_a_request_left_incomplete_closes_its_connection(start_agent, tmp_path):
    """As on the framed socket, a request not completed within edge_agent_frame_timeout_seconds
    costs the client its connection; the agent serves the next one."""
    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_frame_timeout_seconds=0.2)
    stalled = RawClient(path)
    try:
        stream = stalled.call(headers(), struct.pack(">BI", 0, 100) + b"x" * 10, end=False)
        with pytest.raises(ConnectionError):
            stalled.reply(stream)  # the agent closes it; nothing is answered
    finally:
        stalled.close()
    fresh = RawClient(path)
    try:
        assert fresh.status(fresh.call(headers(), message(b""))) == (0, "")
    finally:
        fresh.close()
    assert "a request was not completed within 0.2 s" in agent.log()


def _read_until_closed(sock: socket.socket) -> bytes:
    """All the agent sends until it closes the connection (30 s at most per read)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_an_idle_connection_is_closed_and_frees_its_place(start_agent, tmp_path):
    """As on the framed socket, a connection with no call open for
    edge_agent_idle_timeout_seconds gets a GOAWAY and is closed: one that never even sent the
    preface, and one that made a call and went quiet. Its place (edge_agent_max_connections)
    goes to the next client."""
    from hyperframe.frame import Frame, GoAwayFrame

    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_idle_timeout_seconds=0.2,
                        edge_agent_max_connections=1)
    def last_frame(received: bytes):
        while received:
            frame, length = Frame.parse_frame_header(received[:9])
            frame.parse_body(memoryview(received[9:9 + length]))
            received = received[9 + length:]
        return frame

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.settimeout(30)
        silent.connect(path)
        goaway = last_frame(_read_until_closed(silent))
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == 0
    assert b"without a request (edge_agent_idle_timeout_seconds)" in goaway.additional_data

    quiet = RawClient(path)  # the place is free again
    try:
        stream = quiet.call(headers(), message(b""))
        # Read to the end before h2 sees any of it: the client writes nothing more, so it
        # cannot trip over the closed connection.
        events = quiet.h2.receive_data(_read_until_closed(quiet.sock))
    finally:
        quiet.close()
    trailers = [dict(e.headers) for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers == [{b"grpc-status": b"0"}]  # its call was served, then it went quiet
    goaway = events[-1]
    assert isinstance(goaway, h2.events.ConnectionTerminated)
    assert (goaway.error_code, goaway.last_stream_id) == (0, stream)
    assert "idle for 0.2 s (edge_agent_idle_timeout_seconds)" in agent.log()
    again = RawClient(path)
    try:
        assert again.status(again.call(headers(), message(b""))) == (0, "")
    finally:
        again.close()


def test_streams_beyond_the_limit_are_refused_before_the_settings_are_acked(start_agent,
                                                                           tmp_path):
    """SETTINGS_MAX_CONCURRENT_STREAMS is MAX_STREAMS; a client that opens more streams
    before it acknowledged the setting (h2 enforces it only after) has the extra ones
    refused (REFUSED_STREAM, safe to retry), and its other calls are served."""
    from h2.errors import ErrorCodes

    from edge_agent.protocol.grpc_connection import MAX_STREAMS

    path = str(tmp_path / "grpc.sock")
    start_agent(edge_agent_grpc_socket_path=path)
    client = RawClient(path)  # nothing received yet: the agent's settings are not acked
    try:
        body = message(b"")
        streams = []
        for _ in range(MAX_STREAMS + 1):  # in one write: the agent may get all in one chunk
            streams.append(client.h2.get_next_available_stream_id())
            client.h2.send_headers(streams[-1], headers())
            client.h2.send_data(streams[-1], body[:2])
        client.flush()
        *open_calls, extra = streams
        assert client.reply(extra).get("reset") == ErrorCodes.REFUSED_STREAM
        for stream in open_calls:
            client.h2.send_data(stream, body[2:], end_stream=True)
        client.flush()
        assert [client.status(stream) for stream in open_calls] == [(0, "")] * MAX_STREAMS
        assert client.status(client.call(headers(), body)) == (0, "")  # a place is free again
    finally:
        client.close()


def _list_models_body(size: int) -> bytes:
    """A ListModelsRequest of exactly `size` bytes (one unknown bytes field, 15), answered OK."""
    length = size - 4  # the tag's byte and a 3-byte varint length
    assert 1 << 14 <= length < 1 << 21
    return bytes([0x7A, length & 0x7F | 0x80, length >> 7 & 0x7F | 0x80, length >> 14]) + \
        bytes(length)


def test_incomplete_requests_of_both_fronts_share_one_budget(start_agent, tmp_path):
    """edge_agent_max_pending_bytes bounds what incomplete gRPC requests hold, together with
    the framed socket's incomplete frames: past it, the gRPC call is answered
    RESOURCE_EXHAUSTED with the framed socket's words, and a framed client is refused too.
    The bytes are given back when a request is handed to a worker, reset, or its connection
    ends; then the same requests fit again."""
    from wire import _list_models_frame, wait_taken
    from wire import closed_by_peer, raw_connection, read_replies

    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_max_frame_bytes=65536,
                        edge_agent_max_pending_bytes=200_000,
                        edge_agent_connection_reserve_bytes=0,  # the shared budget alone
                        edge_agent_frame_timeout_seconds=300.0)
    refusal = ("incomplete frames of all clients would hold more than 200000 bytes "
               "(edge_agent_max_pending_bytes); send the frame again later")
    body = message(_list_models_body(65000))
    head, rest = body[:60005], body[60005:]
    client = RawClient(path)
    try:
        client.settled()
        first, second, third = (client.call(headers(), head, end=False) for _ in range(3))
        over = client.call(headers(), head, end=False)  # 4 x 60005 bytes: past 200000
        assert client.status(over) == (8, refusal)
        assert client.reply(over).get("reset") == 0  # the rest of it is not wanted

        framed = raw_connection(agent)  # the same budget: 180015 + 30016 bytes do not fit
        framed.sendall(_list_models_frame(1, 60000)[:30016])
        [refused] = read_replies(framed)
        assert (refused.status, refused.body.decode()) == (8, refusal)
        assert closed_by_peer(framed)
        framed.close()

        client.h2.send_data(first, rest, end_stream=True)  # handed to a worker: given back
        client.flush()
        assert client.status(first) == (0, "")
        again = client.call(headers(), body)
        assert client.status(again) == (0, "")
        client.h2.reset_stream(second)  # given back as the stream goes
        client.flush()
        client.sock.shutdown(socket.SHUT_WR)  # the third's share goes with the connection
        _read_until_closed(client.sock)
    finally:
        client.close()
    # Nothing is held any more: three framed clients may each hold all but a byte of the
    # largest frame at once (196653 bytes; a leak of 3348 would refuse one), then finish.
    frames = {request_id: _list_models_frame(request_id, 65536) for request_id in (2, 3, 4)}
    holders = {request_id: raw_connection(agent) for request_id in frames}
    try:
        for request_id, sock in holders.items():
            sock.sendall(frames[request_id][:-1])
            wait_taken(sock)
        for request_id, sock in holders.items():
            sock.sendall(frames[request_id][-1:])
            [reply] = read_replies(sock)
            assert (reply.status, reply.request_id) == (0, request_id), reply.body
    finally:
        for sock in holders.values():
            sock.close()
    assert agent.alive()


def test_a_client_that_does_not_take_its_reply_is_disconnected(start_agent, tmp_path):
    """It reads, but never opens its flow-control window: the 256 KiB reply cannot be sent,
    and after edge_agent_send_timeout_seconds the connection goes, as on the framed socket."""
    from wire import add_array
    from edge_agent.tools import model_builder

    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_send_timeout_seconds=0.2)
    built = model_builder.add_model((1, 1 << 16))
    with agent.client() as framed:
        framed.load_model("wide", str(built.write(tmp_path / "wide.tflite")))
    request = pb.PredictRequest(name="wide")
    for name, array in built.sample_inputs().items():
        add_array(request.tensors, name, array)
    greedy = RawClient(path)
    try:
        greedy.receive()  # the agent's settings and window: room for the 512 KiB request
        greedy.call(headers(path=f"/{GRPC_SERVICE}/Predict".encode()),
                    message(request.SerializeToString()))
        while greedy.sock.recv(65536):  # read everything, acknowledge nothing
            pass
    finally:
        greedy.close()
    assert "the client has not read its reply for 0.2 s" in agent.log()
    with agent.client() as framed:
        assert [m.name for m in framed.list_models()] == ["wide"]  # still serving


def test_a_client_that_does_not_open_its_window_holds_no_worker(start_agent, tmp_path):
    """A client's reply held back by its closed window waits on its own connection, and
    another client's call is answered meanwhile (nothing waits for the window;
    edge_agent_send_timeout_seconds is far away)."""
    from edge_agent.tools import model_builder
    from wire import add_array

    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_send_timeout_seconds=600)
    built = model_builder.add_model((1, 1 << 16))
    with agent.client() as framed:
        framed.load_model("wide", str(built.write(tmp_path / "wide.tflite")))
    request = pb.PredictRequest(name="wide")
    for name, array in built.sample_inputs().items():
        add_array(request.tensors, name, array)
    greedy = RawClient(path)
    try:
        greedy.settled()  # room for the 512 KiB request
        greedy.call(headers(path=f"/{GRPC_SERVICE}/Predict".encode()),
                    message(request.SerializeToString()))
        received = 0
        while received < 65535:  # the reply fills the client's default window: it waits
            received += len(greedy.sock.recv(65536))  # read, acknowledge nothing
        other = RawClient(path)
        try:
            assert other.status(other.call(headers(), message(b""))) == (0, "")
        finally:
            other.close()
    finally:
        greedy.close()
    assert agent.alive()


def test_grpc_message_is_percent_encoded():
    assert percent_encode("no model named 'x' (100%)") == b"no model named 'x' (100%25)"
    assert percent_encode("caf\u00e9\n") == b"caf%C3%A9"  # UTF-8; blanks at the ends go
    assert percent_encode("a\r\nb") == b"a%0D%0Ab"


def test_grpc_message_is_cut_at_a_character_boundary():
    assert percent_encode("x" * 1024) == b"x" * 1024  # the limit itself is kept whole
    assert percent_encode("x" * 5000) == b"x" * 1024 + b"..."
    # 1023 bytes of "x", then a 2-byte character that would straddle the limit: left out.
    assert percent_encode("x" * 1023 + "\u00e9" * 10) == b"x" * 1023 + b"..."
    assert percent_encode("\u00e9" * 20000) == b"%C3%A9" * 512 + b"..."


@pytest.mark.parametrize("value, seconds", [
    (b"5S", 5.0), (b"100m", 0.1), (b"2M", 120.0), (b"1H", 3600.0), (b"250u", 250e-6),
    (b"7n", 7e-9), (b"", None), (b"5", None), (b"123456789S", None), (b"-1S", None)])
def test_grpc_timeout_values(value, seconds):
    assert parse_timeout(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_stopping_sends_goaway_and_answers_the_call_in_progress(tmp_path, model_files,
                                                              recording_delegate):
    """A call is held inside the runtime (the test delegate's barrier) while the front stops:
    the client gets a GOAWAY, the socket file goes, and the call is still answered once it
    is released."""
    import numpy as np
    from capture_helpers import wait_for

    from edge_agent import config
    from edge_agent.transport import grpc_front
    from edge_agent.tools import model_builder
    from edge_agent.api.service import AgentService
    from wire import add_array

    record = tmp_path / "record.txt"
    settings = config.from_mapping({
        "edge_agent_socket_path": str(tmp_path / "unused.sock"),
        "edge_agent_grpc_socket_path": str(tmp_path / "grpc.sock"),
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1,
        "edge_agent_delegate": "external", "edge_agent_delegate_library": recording_delegate,
        "edge_agent_delegate_options": {"rendezvous": 2, "rendezvous_seconds": 60,
                                        "record_to": str(record)}})
    service = AgentService(settings)
    for name in ("held", "partner"):
        service.load_model(pb.LoadModelRequest(name=name, url=str(model_files["add"])))
    server = grpc_front.start(service, settings)
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=5)
    request = pb.PredictRequest(name="held")
    for name, array in inputs.items():
        add_array(request.tensors, name, array)
    client = RawClient(settings.edge_agent_grpc_socket_path)
    stopper = None
    try:
        stream = client.call(headers(path=f"/{GRPC_SERVICE}/Predict".encode()),
                             message(request.SerializeToString()))
        wait_for(lambda: "arrive" in record.read_text(), what="the call inside the runtime")
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 60})
        stopper.start()
        while client.goaway is None:
            client.receive()
        assert client.goaway.error_code == 0
        assert client.goaway.last_stream_id == stream
        assert not os.path.exists(settings.edge_agent_grpc_socket_path)
        assert not client.replies.get(stream, {}).get("done")  # still running
        partner = pb.PredictRequest(name="partner")
        for name, array in inputs.items():
            add_array(partner.tensors, name, array)
        service.predict(partner)  # meets the held call at the barrier: both go on
        fields, data = _frames_after_goaway(client, stream)
        assert fields[b":status"] == b"200" and fields[b"grpc-status"] == b"0"
        reply = pb.PredictResponse.FromString(data[5:])
        out = np.frombuffer(reply.tensors[0].byte_data, np.float32).reshape(1, 4)
        np.testing.assert_allclose(out, built.reference(inputs)["sum"], rtol=1e-6)
    finally:
        client.close()
        if stopper is not None:
            stopper.join()
        else:
            server.stop(grace=0)
        service.close()


def test_a_call_longer_than_the_idle_timeout_is_not_cut(tmp_path, model_files,
                                                       recording_delegate):
    """The idle clock runs only while no call is open: a call held in the runtime (the test
    delegate's barrier) for many idle timeouts is answered, and the connection serves on."""
    import time

    from capture_helpers import wait_for

    from edge_agent import config
    from edge_agent.transport import grpc_front
    from edge_agent.tools import model_builder
    from edge_agent.api.service import AgentService
    from wire import add_array

    record = tmp_path / "record.txt"
    settings = config.from_mapping({
        "edge_agent_socket_path": str(tmp_path / "unused.sock"),
        "edge_agent_grpc_socket_path": str(tmp_path / "grpc.sock"),
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_idle_timeout_seconds": 0.05,
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1,
        "edge_agent_delegate": "external", "edge_agent_delegate_library": recording_delegate,
        "edge_agent_delegate_options": {"rendezvous": 2, "rendezvous_seconds": 60,
                                        "record_to": str(record)}})
    service = AgentService(settings)
    for name in ("held", "partner"):
        service.load_model(pb.LoadModelRequest(name=name, url=str(model_files["add"])))
    server = grpc_front.start(service, settings)
    inputs = model_builder.add_model().sample_inputs(seed=5)
    requests = {}
    for name in ("held", "partner"):
        requests[name] = pb.PredictRequest(name=name)
        for tensor, array in inputs.items():
            add_array(requests[name].tensors, tensor, array)
    client = RawClient(settings.edge_agent_grpc_socket_path)
    try:
        stream = client.call(headers(path=f"/{GRPC_SERVICE}/Predict".encode()),
                             message(requests["held"].SerializeToString()))
        wait_for(lambda: "arrive" in record.read_text(), what="the call inside the runtime")
        time.sleep(0.5)  # ten idle timeouts pass while the call is held (no bound asserted)
        service.predict(requests["partner"])  # meets the held call at the barrier
        assert client.status(stream) == (0, "")
        assert client.goaway is None
        assert client.status(client.call(headers(), message(b""))) == (0, "")
    finally:
        client.close()
        server.stop(grace=0)
        service.close()


def test_a_queued_call_of_a_closed_connection_is_not_run(tmp_path, model_files,
                                                        recording_delegate):
    """One pool thread, held in the runtime (the test delegate's barrier): a call queued
    behind it whose client has gone is skipped, not run, when the thread is free; other
    connections are served meanwhile (the call counters show which ran)."""
    from capture_helpers import wait_for

    from edge_agent import config
    from edge_agent.transport import grpc_front
    from edge_agent.transport.front_core import FrontLoop
    from edge_agent.tools import model_builder
    from edge_agent.api.service import AgentService
    from wire import add_array

    record = tmp_path / "record.txt"
    settings = config.from_mapping({
        "edge_agent_socket_path": str(tmp_path / "unused.sock"),
        "edge_agent_grpc_socket_path": str(tmp_path / "grpc.sock"),
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1,
        "edge_agent_delegate": "external", "edge_agent_delegate_library": recording_delegate,
        "edge_agent_delegate_options": {"rendezvous": 2, "rendezvous_seconds": 60,
                                        "record_to": str(record)}})
    service = AgentService(settings)
    for name in ("held", "partner"):
        service.load_model(pb.LoadModelRequest(name=name, url=str(model_files["add"])))
    fronts = FrontLoop(pool_threads=1)  # models not yet measured run in the pool
    grpc_front.GrpcServer(service, settings, fronts=fronts).start()
    fronts.start()
    inputs = model_builder.add_model().sample_inputs(seed=5)
    requests = {}
    for name in ("held", "partner"):
        requests[name] = pb.PredictRequest(name=name)
        for tensor, array in inputs.items():
            add_array(requests[name].tensors, tensor, array)
    predict = headers(path=f"/{GRPC_SERVICE}/Predict".encode())

    def grpc_calls(rpc: str) -> int:
        return sum(c.count for c in service.get_metrics().calls
                   if (c.front, c.rpc) == ("grpc", rpc))

    def grpc_connections() -> int:
        return sum(c.open for c in service.get_metrics().connections if c.front == "grpc")

    holder = RawClient(settings.edge_agent_grpc_socket_path)
    try:
        held = holder.call(predict, message(requests["held"].SerializeToString()))
        wait_for(lambda: "arrive" in record.read_text(), what="the call inside the runtime")
        gone = RawClient(settings.edge_agent_grpc_socket_path)
        gone.call(predict, message(requests["partner"].SerializeToString()))  # queued
        gone.sock.shutdown(socket.SHUT_WR)  # (a close with unread data would be a reset)
        wait_for(lambda: grpc_connections() == 1, what="the closed connection to go")
        gone.close()
        late = RawClient(settings.edge_agent_grpc_socket_path)
        try:
            stream = late.call(headers(), message(b""))  # (inline: served meanwhile)
            service.predict(requests["partner"])  # meets the held call: the thread is free
            assert holder.status(held) == (0, "")
            assert late.status(stream) == (0, "")
        finally:
            late.close()
        assert grpc_calls("Predict") == 1  # the held one; the gone one never ran
        assert grpc_calls("ListModels") == 1
    finally:
        holder.close()
        fronts.stop(0)
        fronts.join()
        service.close()


def _frames_after_goaway(client: RawClient, stream_id: int) -> tuple[dict, bytes]:
    """The headers, trailers and data of one stream, read frame by frame: h2's client side
    takes nothing after a GOAWAY, though HTTP/2 lets the streams it spared finish."""
    from hyperframe.frame import DataFrame, Frame, HeadersFrame

    buffer, data, fields = b"", b"", {}
    while True:
        chunk = client.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the agent closed the connection before the reply")
        buffer += chunk
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(buffer[9:9 + length]))
            buffer = buffer[9 + length:]
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, DataFrame):
                data += frame.data
            elif isinstance(frame, HeadersFrame):
                fields.update(dict(client.h2.decoder.decode(frame.data, raw=True)))
                if "END_STREAM" in frame.flags:
                    return fields, data


def _ping_flood(sock: socket.socket, total: int) -> threading.Thread:
    """A thread that writes `total` bytes of PINGs and reads nothing (ends when they are all
    written or the agent closes the connection)."""
    from hyperframe.frame import PingFrame

    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    burst = ping * 4096

    def flood() -> None:
        try:
            for _ in range(total // len(burst) + 1):
                sock.sendall(burst)
        except OSError:  # closed by the agent
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    return thread


def test_a_client_that_sends_and_never_reads_holds_a_bounded_output(start_agent, tmp_path):
    """PINGs sent and their ACKs never read: past MAX_UNSENT unsent bytes the agent reads
    nothing more from that client (what it holds stays bounded), and reads again once the
    client takes what waits; the connection still serves calls."""
    from capture_helpers import wait_for

    from edge_agent.protocol.receiving import RECV_BYTES
    from edge_agent.transport.grpc_front import MAX_UNSENT

    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_send_timeout_seconds=3600)
    client = RawClient(path)
    try:
        client.settled()
        handlers = agent.app.grpc_server._handlers
        wait_for(lambda: len(handlers) == 1, what="the connection to be registered")
        [handler] = handlers.values()
        flood = _ping_flood(client.sock, 4 << 20)  # far more than the socket buffers hold
        wait_for(lambda: handler.unsent > MAX_UNSENT, what="the ACKs to pile up")
        # The flood is held back in the sockets: the agent has stopped reading it.
        assert flood.is_alive() and handler.unsent <= MAX_UNSENT + RECV_BYTES
        received = b""
        while flood.is_alive():  # taking what waits lets the agent read on, to the end
            client.sock.settimeout(0.5)
            try:
                received += client.sock.recv(1 << 20)
            except (TimeoutError, socket.timeout):
                pass
        client.sock.settimeout(30)
        events = client.h2.receive_data(received)
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
        assert client.status(client.call(headers(), message(b""))) == (0, "")
    finally:
        client.close()
    assert agent.alive()


def test_a_client_that_takes_nothing_is_closed_after_the_send_timeout(start_agent, tmp_path):
    """As on the framed socket: what the agent sent (PING ACKs here) not taken for
    edge_agent_send_timeout_seconds closes the connection."""
    from capture_helpers import wait_for

    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_send_timeout_seconds=0.2)
    client = RawClient(path)
    try:
        client.settled()
        flood = _ping_flood(client.sock, 4 << 20)
        wait_for(lambda: "it has not read what the agent sent for 0.2 s" in agent.log(),
                 timeout=60, what="the connection to be closed")
        flood.join(60)
        assert not flood.is_alive()
    finally:
        client.close()
    other = RawClient(path)
    try:
        assert other.status(other.call(headers(), message(b""))) == (0, "")
    finally:
        other.close()


def test_clients_gone_before_their_refusal_leave_no_trace(start_agent, tmp_path):
    """Clients over edge_agent_max_connections that left before the agent took them (their
    refusal closed at once) do not use up the refusals: the next one over the limit is still
    told why (RESOURCE_EXHAUSTED), not closed unanswered. The loop is held while they come
    and go, so every one is gone when it is accepted."""
    from edge_agent.transport.grpc_front import MAX_REFUSING

    path = str(tmp_path / "grpc.sock")
    agent = start_agent(edge_agent_grpc_socket_path=path, edge_agent_max_connections=1)
    holder = RawClient(path)
    try:
        assert holder.status(holder.call(headers(), message(b""))) == (0, "")
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(60)

        agent.app.fronts.loop.call_soon_threadsafe(hold)
        assert held.wait(60)
        try:
            for _ in range(MAX_REFUSING + 1):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
                    gone.connect(path)
            refused = RawClient(path)  # its preface waits in the socket
        finally:
            release.set()
        try:
            refused.call(headers(), message(b""))
            events = refused.h2.receive_data(_read_until_closed(refused.sock))
            [answer] = [dict(e.headers) for e in events
                        if isinstance(e, h2.events.ResponseReceived)]
            assert answer[b"grpc-status"] == b"8"
            assert b"too many clients" in answer[b"grpc-message"]
        finally:
            refused.close()
    finally:
        holder.close()


def test_a_queued_call_whose_stream_was_reset_is_not_run(tmp_path, model_files,
                                                         recording_delegate):
    """One pool thread, held in the runtime (the test delegate's barrier): a call queued
    behind it whose stream the client reset is skipped when the thread is free (nothing
    answered, its place among the connection's streams freed), and the connection goes on."""
    from capture_helpers import wait_for

    from edge_agent import config
    from edge_agent.api.service import AgentService
    from edge_agent.tools import model_builder
    from edge_agent.transport import grpc_front
    from edge_agent.transport.front_core import FrontLoop
    from wire import add_array

    record = tmp_path / "record.txt"
    settings = config.from_mapping({
        "edge_agent_socket_path": str(tmp_path / "unused.sock"),
        "edge_agent_grpc_socket_path": str(tmp_path / "grpc.sock"),
        "edge_agent_state_dir": str(tmp_path / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1,
        "edge_agent_delegate": "external", "edge_agent_delegate_library": recording_delegate,
        "edge_agent_delegate_options": {"rendezvous": 2, "rendezvous_seconds": 60,
                                        "record_to": str(record)}})
    service = AgentService(settings)
    for name in ("held", "partner"):
        service.load_model(pb.LoadModelRequest(name=name, url=str(model_files["add"])))
    fronts = FrontLoop(pool_threads=1)  # models not yet measured run in the pool
    server = grpc_front.GrpcServer(service, settings, fronts=fronts).start()
    fronts.start()
    inputs = model_builder.add_model().sample_inputs(seed=5)
    requests = {}
    for name in ("held", "partner"):
        requests[name] = pb.PredictRequest(name=name)
        for tensor, array in inputs.items():
            add_array(requests[name].tensors, tensor, array)
    predict = headers(path=f"/{GRPC_SERVICE}/Predict".encode())

    def grpc_calls(rpc: str) -> int:
        return sum(c.count for c in service.get_metrics().calls
                   if (c.front, c.rpc) == ("grpc", rpc))

    holder = RawClient(settings.edge_agent_grpc_socket_path)
    client = RawClient(settings.edge_agent_grpc_socket_path)
    try:
        held = holder.call(predict, message(requests["held"].SerializeToString()))
        wait_for(lambda: "arrive" in record.read_text(), what="the call inside the runtime")
        queued = client.call(predict, message(requests["partner"].SerializeToString()))
        # Served inline once the Predict before it was queued in the pool (one connection's
        # calls are taken in order), then once the reset was read.
        assert client.status(client.call(headers(), message(b""))) == (0, "")
        client.h2.reset_stream(queued)
        client.flush()
        assert client.status(client.call(headers(), message(b""))) == (0, "")
        service.predict(requests["partner"])  # meets the held call: the thread is free
        assert holder.status(held) == (0, "")
        handlers = server._handlers
        wait_for(lambda: not any(h.conn.running for h in list(handlers.values())),
                 what="the reset call to leave the pool")
        assert grpc_calls("Predict") == 1  # the held one; the reset one never ran
        assert client.status(client.call(headers(), message(b""))) == (0, "")
    finally:
        holder.close()
        client.close()
        fronts.stop(0)
        fronts.join()
        service.close()
