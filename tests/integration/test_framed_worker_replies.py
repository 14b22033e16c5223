"""A Predict on a model's own worker is answered from that worker (transport/framed_front.py,
FramedConnection._finish): the reply is sent there when the socket takes it whole, the rest
goes to the loop; the connection's lock keeps that send and the loop's close() apart. By
construction, with a fake service whose Predict waits on events: never on time."""
from __future__ import annotations

import os
import socket
import threading

import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.api.rpcs import Method
from edge_agent.config import from_mapping
from edge_agent.errors import StatusCode
from edge_agent.protocol import FrameSplitter, encode_request
from edge_agent.transport.event_loop import READ
from edge_agent.transport.framed_front import FramedConnection, SocketServer
from edge_agent.transport.front_core import FrontLoop
from edge_agent.transport.workers import SAMPLES
from wire import connect_to, split_frames

WAIT = 30  # seconds: a bound for a bug (a hang), never a measurement
MODEL = "big"
WORKER = f"edge-agent-model-{MODEL}"


class NumberingService:
    """Predict's n-th call (from 1) answers a tensor of `size(n)` bytes, each byte n % 251,
    after `on_predict(n)` returns (the test holds it there)."""

    def __init__(self, size=lambda n: 64, on_predict=lambda n: None):
        from types import SimpleNamespace
        self.metrics = SimpleNamespace(call_counter=lambda front: (lambda rpc, code: None),
                                       watch_connections=lambda front, count: None)
        self.size = size
        self.on_predict = on_predict
        self.calls = 0
        self.threads: list[str] = []
        # No model for the framed front's inline pass: every Predict goes to the workers.
        self.serving: dict = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda request, caller: None

    def predict_call(self, request, caller):
        self.calls += 1
        n = self.calls
        self.threads.append(threading.current_thread().name)
        self.on_predict(n)
        return pb.PredictResponse(tensors=[pb.Tensor(
            byte_data=bytes([n % 251]) * self.size(n))]).SerializeToString()


def _predict(request_id: int) -> bytes:
    return encode_request(Method.PREDICT, request_id,
                          pb.PredictRequest(name=MODEL).SerializeToString())


def _check(reply, n: int, size: int) -> None:
    assert reply.request_id == n and reply.status == StatusCode.OK, bytes(reply.body)
    [tensor] = pb.PredictResponse.FromString(bytes(reply.body)).tensors
    assert tensor.byte_data == bytes([n % 251]) * size


class Replies:
    """The client's side: frames read as they come."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.splitter = FrameSplitter(64 << 20)
        self.frames: list = []

    def take(self, count: int) -> list:
        self.sock.settimeout(WAIT)
        while len(self.frames) < count:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the agent closed the connection"
            self.frames.extend(split_frames(self.splitter, chunk))
        taken, self.frames = self.frames[:count], self.frames[count:]
        return taken

    def until_closed(self) -> bytes:
        """Everything up to the agent's end of the stream."""
        self.sock.settimeout(WAIT)
        data = b""
        try:
            while chunk := self.sock.recv(1 << 20):
                data += chunk
        except ConnectionResetError:
            pass
        return data


@pytest.fixture
def serving(tmp_path):
    """start(service, **settings) → (server, fronts): on a loop in a thread, with MODEL
    already measured slow (its calls go to its own worker), stopped afterwards."""
    started: list[FrontLoop] = []

    def start(service, **settings):
        fronts = FrontLoop()
        config = from_mapping({"edge_agent_socket_path": str(tmp_path / "agent.sock"),
                               **settings})
        server = SocketServer(service, config, fronts=fronts)
        workers = server.workers
        workers.inline_seconds = 0.0
        for _ in range(SAMPLES):
            workers.measure(MODEL, 1.0)
        server.bind()
        started.append(fronts.start())
        return server, fronts

    yield start
    for fronts in started:
        fronts.stop(0)
        assert fronts.join(WAIT)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _on_loop(fronts: FrontLoop, check) -> None:
    """Wait until check() is true on the loop's thread (asked once a turn)."""
    seen = threading.Event()

    def look():
        if check():
            seen.set()
        else:
            fronts.loop.soon(look)

    fronts.loop.call_soon_threadsafe(look)
    assert seen.wait(WAIT)


def test_one_request_at_a_time_each_reply_comes_whole_from_the_worker(serving, monkeypatch):
    """The client's usual way: a request, its reply, the next. Replies of 1 MiB (more than a
    socket takes at once: the rest goes to the loop) and of 100 bytes, alternately; every
    one whole, and every one finished on the model's worker."""
    finished_on: list[str] = []
    finish = FramedConnection._finish

    def finishing(self, request, outcome, drained):
        finished_on.append(threading.current_thread().name)
        finish(self, request, outcome, drained)

    monkeypatch.setattr(FramedConnection, "_finish", finishing)
    service = NumberingService(size=lambda n: 1 << 20 if n % 2 else 100)
    server, _ = serving(service)
    with connect_to(server.path, WAIT) as sock:
        replies = Replies(sock)
        for n in range(1, 21):
            sock.sendall(_predict(n))
            [reply] = replies.take(1)
            _check(reply, n, service.size(n))
    assert set(service.threads) == set(finished_on) == {WORKER}
    assert len(finished_on) == 20


def test_pipelined_requests_are_answered_whole_and_in_order(serving):
    """40 requests sent at once, replies of up to 600 KiB: the worker answers each request
    while the next ones wait in the receive buffer, so it leaves putting the connection back
    to reading to the loop; order and bytes are kept."""
    service = NumberingService(size=lambda n: (n * 15_013) % (600 << 10))
    server, _ = serving(service)
    with connect_to(server.path, WAIT) as sock:
        sender = threading.Thread(
            target=sock.sendall, args=(b"".join(_predict(n) for n in range(1, 41)),))
        sender.start()
        replies = Replies(sock).take(40)
        sender.join(WAIT)
    for n, reply in enumerate(replies, 1):
        _check(reply, n, service.size(n))
    assert set(service.threads) == {WORKER}


def test_a_request_sent_while_the_previous_call_runs_is_answered_after_it(serving):
    """Nothing else had come when the call went to the worker (so the worker arms the socket
    for reading itself); the client's next request comes while the call runs (the loop
    stops reading until then): both are answered, in order, whole."""
    inside, release = threading.Event(), threading.Event()

    def hold(n):
        if n == 1:
            inside.set()
            assert release.wait(WAIT)

    service = NumberingService(size=lambda n: 300_000, on_predict=hold)
    server, fronts = serving(service)
    with connect_to(server.path, WAIT) as sock:
        sock.sendall(_predict(1))
        assert inside.wait(WAIT)
        sock.sendall(_predict(2))
        [connection] = server.core.handlers.values()
        _on_loop(fronts, lambda: not connection._mask & READ)  # seen: reading stopped
        release.set()
        first, second = Replies(sock).take(2)
        _check(first, 1, 300_000)
        _check(second, 2, 300_000)
        sock.sendall(_predict(3))
        _check(Replies(sock).take(1)[0], 3, 300_000)


def test_a_client_that_hangs_up_while_its_call_runs_costs_no_descriptor(serving):
    """The call runs on the worker when the client leaves: the loop closes the connection
    (under its lock), the worker then finds it closed and sends nothing; the agent serves
    the next client on the same worker, and no descriptor of the first is left open."""
    inside, release = threading.Event(), threading.Event()

    def hold(n):
        if n == 1:
            inside.set()
            assert release.wait(WAIT)

    service = NumberingService(on_predict=hold)
    server, fronts = serving(service)
    before = _open_fds()
    leaving = connect_to(server.path, WAIT)
    leaving.sendall(_predict(1))
    assert inside.wait(WAIT)
    leaving.close()
    _on_loop(fronts, lambda: not server.core.handlers)  # the hang-up seen, closed
    release.set()
    with connect_to(server.path, WAIT) as sock:
        sock.sendall(_predict(7))
        [reply] = Replies(sock).take(1)
        assert reply.request_id == 7 and reply.status == StatusCode.OK
    _on_loop(fronts, lambda: not server.core.handlers)
    for worker in server.workers._models.values():  # the first call has ended
        done = threading.Event()
        worker.submit(done.set)
        assert done.wait(WAIT)
    assert _open_fds() <= before
    assert service.calls == 2


def test_a_stop_while_the_worker_answers_delivers_the_reply_then_closes(serving):
    """The agent stops while a call runs on the worker: the worker's reply (1 MiB, more
    than the socket takes at once) reaches the client whole, then the connection ends."""
    inside, release = threading.Event(), threading.Event()

    def hold(n):
        inside.set()
        assert release.wait(WAIT)

    service = NumberingService(size=lambda n: 1 << 20, on_predict=hold)
    server, fronts = serving(service)
    with connect_to(server.path, WAIT) as sock:
        sock.sendall(_predict(1))
        assert inside.wait(WAIT)
        fronts.stop(WAIT)  # a grace longer than the test's bound: the call is waited for
        _on_loop(fronts, lambda: all(c._stopping for c in server.core.handlers.values()))
        release.set()
        replies = Replies(sock)
        [reply] = replies.take(1)
        _check(reply, 1, 1 << 20)
        assert replies.until_closed() == b""
    assert fronts.join(WAIT)


def test_a_client_that_does_not_read_its_large_reply_meets_the_send_timeout(serving):
    """8 MiB of reply: the worker sends what the socket takes, the loop keeps the rest and
    its send timeout; the client reads nothing, the connection is closed, and the agent
    serves the next client."""
    service = NumberingService(size=lambda n: 8 << 20 if n == 1 else 10)
    server, fronts = serving(service, edge_agent_send_timeout_seconds=0.05)
    stuck = connect_to(server.path, WAIT)
    try:
        stuck.sendall(_predict(1))
        _on_loop(fronts, lambda: service.calls == 1 and not server.core.handlers)
        assert len(Replies(stuck).until_closed()) < 8 << 20
    finally:
        stuck.close()
    with connect_to(server.path, WAIT) as sock:
        sock.sendall(_predict(2))
        [reply] = Replies(sock).take(1)
        _check(reply, 2, 10)


def test_an_idle_client_after_a_worker_reply_still_meets_the_idle_timeout(serving):
    """The worker puts the connection back to reading and the loop learns of it lazily; the
    idle timeout still runs from then: the idle client is told and let go."""
    service = NumberingService()
    server, fronts = serving(service, edge_agent_idle_timeout_seconds=0.05)
    with connect_to(server.path, WAIT) as sock:
        sock.sendall(_predict(1))
        replies = Replies(sock)
        [reply] = replies.take(1)
        _check(reply, 1, 64)
        [goodbye] = replies.take(1)
        assert goodbye.status == StatusCode.UNAVAILABLE
        assert b"edge_agent_idle_timeout_seconds" in bytes(goodbye.body)
        assert replies.until_closed() == b""
