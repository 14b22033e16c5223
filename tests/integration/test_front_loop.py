"""The fronts' event loop, by construction: connections take turns, a long call runs off the
loop while other connections are served, compute-bound models run at once, a fast model
runs inline, eviction never waits on a client. A fake service (no models, no processes)
whose Predict waits on events and barriers: never on time."""
from __future__ import annotations

import array
import os
import select
import socket
import threading
from types import SimpleNamespace

import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.api.caller import Caller
from edge_agent.api.rpcs import Method
from edge_agent.config import from_mapping
from edge_agent.errors import StatusCode
from edge_agent.protocol import FrameSplitter, encode_request
from wire import connect_to, split_frames
from edge_agent.transport.framed_front import FramedConnection, SocketServer
from edge_agent.transport.front_core import FrontLoop

WAIT = 30  # seconds: a bound for a bug (a hang), never a measurement


class FakeService:
    """What Api needs of a service: the handlers, and metrics that count nothing. Predict
    runs `on_predict(request)`, which the test makes wait."""

    def __init__(self, on_predict=None):
        self.metrics = SimpleNamespace(call_counter=lambda front: (lambda rpc, code: None),
                                       watch_connections=lambda front, count: None)
        self.on_predict = on_predict or (lambda request: None)
        # No models: the framed front's inline pass (it reads them here) leaves every
        # Predict to predict_call below.
        self.serving: dict = {}
        self.predicted_on: list[str] = []  # the thread of each Predict
        # No model for the framed front's inline pass: every Predict takes the usual path,
        # whose placement these tests are about.
        self.serving: dict = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda request, caller: None  # handlers this test never calls

    def list_models(self, request, caller):
        return pb.ListModelsResponse()

    def predict_call(self, request, caller):
        """The Predict row's handler: (model name, tensors, output handles) in, the
        serialized PredictResponse out (an empty one)."""
        self.predicted_on.append(threading.current_thread().name)
        self.on_predict(request)
        return pb.PredictResponse().SerializeToString()


def _config(tmp_path, **settings):
    return from_mapping({"edge_agent_socket_path": str(tmp_path / "agent.sock"), **settings})


def _replies(sock: socket.socket, count: int) -> list:
    splitter = FrameSplitter(1 << 20)
    frames: list = []
    sock.settimeout(WAIT)
    while len(frames) < count:
        chunk = sock.recv(65536)
        assert chunk, "the agent closed the connection"
        frames.extend(split_frames(splitter, chunk))
    return frames


def _predict(model: str, request_id: int = 1) -> bytes:
    return encode_request(Method.PREDICT, request_id,
                          pb.PredictRequest(name=model).SerializeToString())


@pytest.fixture
def serving(tmp_path):
    """start(service) → a SocketServer on a loop in a thread, stopped afterwards."""
    started: list[FrontLoop] = []

    def start(service, **settings) -> SocketServer:
        fronts = FrontLoop()
        server = SocketServer(service, _config(tmp_path, **settings), fronts=fronts)
        server.bind()
        started.append(fronts.start())
        return server

    yield start
    for fronts in started:
        fronts.stop(0)
        assert fronts.join(WAIT)


def test_a_long_predict_does_not_hold_another_connections_list_models(serving):
    release = threading.Event()
    inside = threading.Event()

    def slow(request):
        inside.set()
        assert release.wait(WAIT)

    server = serving(FakeService(slow))
    predicting, listing = connect_to(server.path, WAIT), connect_to(server.path, WAIT)
    try:
        predicting.sendall(_predict("slow"))
        assert inside.wait(WAIT)  # the Predict is running, and will until released
        listing.sendall(encode_request(Method.LIST_MODELS, 7, b""))
        [reply] = _replies(listing, 1)
        assert (reply.request_id, reply.status) == (7, StatusCode.OK)
        release.set()
        [reply] = _replies(predicting, 1)
        assert reply.status == StatusCode.OK
    finally:
        release.set()
        predicting.close()
        listing.close()


def test_two_models_predict_at_once():
    """Neither Predict can return until both are inside the runtime: they run on two
    threads, neither on the loop."""
    barrier = threading.Barrier(2, timeout=WAIT)
    service = FakeService(lambda request: barrier.wait())
    config = from_mapping({"edge_agent_socket_path": "/nonexistent/agent.sock"})
    fronts = FrontLoop()
    server = SocketServer(service, config, fronts=fronts)
    fronts.start()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        for (client, agent_side), model in zip(pairs, ("a", "b")):
            _serve_on(fronts, server, agent_side)
            client.sendall(_predict(model))
        for client, _ in pairs:
            [reply] = _replies(client, 1)
            assert reply.status == StatusCode.OK, reply.body
        assert "edge-agent-loop" not in service.predicted_on
    finally:
        fronts.stop(0)
        assert fronts.join(WAIT)
        for client, _ in pairs:
            client.close()


def _serve_on(fronts: FrontLoop, server: SocketServer, sock: socket.socket) -> None:
    """Hand an already connected socket to the running loop (as accept would)."""
    def admit():
        sock.setblocking(False)
        connection = FramedConnection(server, sock, Caller(os.getpid(), os.getuid(), os.getgid()))
        server.core.handlers[connection.fd] = connection
        fronts.loop.add_timed(connection)
    fronts.loop.call_soon_threadsafe(admit)


def test_a_model_measured_fast_runs_inline_on_the_loop(serving):
    service = FakeService()
    server = serving(service)
    server.workers.inline_seconds = 60.0  # every call "fast": what is measured decides
    with connect_to(server.path, WAIT) as sock:
        for i in range(20):
            sock.sendall(_predict("tiny", i + 1))
            [reply] = _replies(sock, 1)
            assert reply.status == StatusCode.OK
    threads = service.predicted_on
    assert "edge-agent-loop" not in threads[:16]  # unmeasured: off the loop
    assert set(threads[16:]) == {"edge-agent-loop"}


def test_a_model_measured_slow_gets_a_worker_of_its_own(serving):
    service = FakeService()
    server = serving(service)
    server.workers.inline_seconds = 0.0  # every call "slow"
    with connect_to(server.path, WAIT) as sock:
        for i in range(20):
            sock.sendall(_predict("big", i + 1))
            assert _replies(sock, 1)[0].status == StatusCode.OK
    assert set(service.predicted_on[16:]) == {"edge-agent-model-big"}


def test_connections_take_turns_under_a_pipelining_client(tmp_path):
    """40 requests pipelined on one connection and one on another, all buffered before the
    loop runs: the other's reply is written within the first turn, while most of the
    pipelined ones still wait (at most TURN per connection per turn)."""
    from edge_agent.transport.workers import TURN

    service = FakeService()
    fronts = FrontLoop()
    server = SocketServer(service, _config(tmp_path), fronts=fronts)
    greedy, greedy_agent = socket.socketpair()
    other, other_agent = socket.socketpair()
    try:
        greedy.sendall(b"".join(encode_request(Method.LIST_MODELS, i + 1, b"")
                                for i in range(40)))
        other.sendall(encode_request(Method.LIST_MODELS, 99, b""))
        caller = Caller(os.getpid(), os.getuid(), os.getgid())
        for sock in (greedy_agent, other_agent):
            sock.setblocking(False)
            connection = FramedConnection(server, sock, caller)
            server.core.handlers[connection.fd] = connection
        fronts.loop.run(lambda: bool(select.select([other], [], [], 0)[0]))
        [reply] = _replies(other, 1)
        assert reply.request_id == 99
        greedy.setblocking(False)
        splitter = FrameSplitter(1 << 20)
        frames = []
        try:
            while chunk := greedy.recv(1 << 20):
                frames.extend(split_frames(splitter, chunk))
        except BlockingIOError:
            pass
        answered = [frame.request_id for frame in frames]
        assert answered == list(range(1, len(answered) + 1))  # in order
        assert TURN <= len(answered) <= 2 * TURN < 40
        # The rest follows, in order, when the loop goes on.
        fronts.loop.run(lambda: not fronts.loop._ready)
        splitter2 = FrameSplitter(1 << 20)
        rest = []
        try:
            while chunk := greedy.recv(1 << 20):
                rest.extend(split_frames(splitter2, chunk))
        except BlockingIOError:
            pass
        assert [f.request_id for f in rest] == list(range(len(answered) + 1, 41))
    finally:
        server.core.close_all()
        server.workers.stop()
        server.loop.close()
        greedy.close()
        other.close()


def test_evicting_an_idle_grpc_connection_never_waits_on_its_client(tmp_path):
    """Eviction runs on the loop: a client that stopped reading (its socket buffer full)
    must not hold the loop for the send timeout. The GOAWAY is a courtesy; the connection is
    closed either way."""
    pytest.importorskip("h2")
    from edge_agent.transport.grpc_front import GrpcHandler, GrpcServer

    config = _config(tmp_path, edge_agent_send_timeout_seconds=3600)
    fronts = FrontLoop()
    server = GrpcServer(FakeService(), config, str(tmp_path / "grpc.sock"), fronts=fronts)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.setblocking(False)
        try:
            while True:  # what an earlier reply left unread: the buffer full
                ours.send(bytes(65536))
        except BlockingIOError:
            pass
        handler = GrpcHandler(server, ours, Caller(os.getpid(), os.getuid(), os.getgid()))
        server.core.handlers[handler.fd] = handler
        assert handler.evict("room")  # returns at once: the socket never blocks
        assert handler.closed and not server.core.handlers
    finally:
        server.workers.stop()
        fronts.loop.close()
        theirs.close()


def test_the_watchdog_is_fed_from_the_loop(monkeypatch):
    """WATCHDOG=1 is sent by the loop's own thread (a stuck loop would stop it), and no more
    once the agent says it is stopping."""
    from edge_agent.platform import systemd

    sent: list[tuple[str, str]] = []
    pinged = threading.Event()

    def notify(message, env=None):
        sent.append((message, threading.current_thread().name))
        if message == "WATCHDOG=1":
            assert threading.current_thread().name == "edge-agent-loop"
            if sent.count(("WATCHDOG=1", "edge-agent-loop")) >= 2:
                pinged.set()
        return True

    monkeypatch.setattr(systemd, "notify", notify)
    fronts = FrontLoop()
    notifier = systemd.Notifier({"WATCHDOG_USEC": "2000"})  # every millisecond
    notifier.ready("/run/agent.sock", fronts.loop.every)
    fronts.start()
    try:
        assert pinged.wait(WAIT)
        stopped = threading.Event()

        def stop_on_the_loop():  # (on the loop's thread: no ping can be half-way)
            notifier.stopping()
            sent.clear()
            stopped.set()

        fronts.loop.call_soon_threadsafe(stop_on_the_loop)
        assert stopped.wait(WAIT)
        turned = threading.Event()
        fronts.loop.call_soon_threadsafe(turned.set)  # a later turn of the loop
        assert turned.wait(WAIT)
        assert sent == []  # no ping since
    finally:
        fronts.stop(0)
        assert fronts.join(WAIT)
    assert not [message for message, _ in sent if message == "WATCHDOG=1"]


def test_a_fault_in_one_connection_closes_it_and_the_others_are_served(serving, monkeypatch):
    """A bug of ours in one connection's handling (here: forced) must not stop the loop."""
    server = serving(FakeService())
    original = FramedConnection._dispatch

    def faulty(self, request):
        if request.request_id == 666:
            raise RuntimeError("a bug")
        original(self, request)

    monkeypatch.setattr(FramedConnection, "_dispatch", faulty)
    failing, healthy = connect_to(server.path, WAIT), connect_to(server.path, WAIT)
    try:
        failing.sendall(encode_request(Method.LIST_MODELS, 666, b""))
        assert failing.recv(65536) == b""  # closed
        healthy.sendall(encode_request(Method.LIST_MODELS, 1, b""))
        [reply] = _replies(healthy, 1)
        assert reply.status == StatusCode.OK
    finally:
        failing.close()
        healthy.close()


def _admit_now(server: SocketServer, sock: socket.socket) -> FramedConnection:
    """A connected socket served by the loop (not running yet), as accept would."""
    sock.setblocking(False)
    connection = FramedConnection(server, sock, Caller(os.getpid(), os.getuid(), os.getgid()))
    server.core.handlers[connection.fd] = connection
    return connection


def _run_turns(fronts: FrontLoop, turns: int) -> None:
    left = iter(range(turns))
    fronts.loop.run(lambda: next(left, None) is None)


class DescribingService(FakeService):
    def describe_model(self, request, caller):
        return pb.DescribeModelResponse(model=pb.Model(name=request.name))


def test_requests_split_early_keep_their_bodies_while_more_bytes_wait(tmp_path):
    """21 requests that came with a descriptor are split at once (views of the receive
    buffer); 40 more wait in the socket. More than a turn's worth: nothing is received until
    the 21 are answered, so each reply is about its own request."""
    fronts = FrontLoop()
    server = SocketServer(DescribingService(), _config(tmp_path), fronts=fronts)
    client, agent_side = socket.socketpair()
    names = {i + 1: f"first-{i:02d}" for i in range(21)}
    names.update({i + 22: f"second-{i:02d}-" + "x" * 40 for i in range(40)})

    def frames(ids):
        return b"".join(encode_request(Method.DESCRIBE_MODEL, i, pb.DescribeModelRequest(
            name=names[i]).SerializeToString()) for i in ids)

    r, w = os.pipe()
    try:
        client.sendmsg([frames(range(1, 22))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array("i", [r]))])
        client.sendall(frames(range(22, 62)))
        _admit_now(server, agent_side)
        fronts.loop.run(lambda: not server.core.handlers or not (
            fronts.loop._ready or select.select([agent_side], [], [], 0)[0]))
        assert server.core.handlers, "the connection failed"
        replies = _replies(client, 61)
        assert [reply.request_id for reply in replies] == list(range(1, 62))
        for reply in replies:
            assert reply.status == StatusCode.OK, bytes(reply.body)
            model = pb.DescribeModelResponse.FromString(bytes(reply.body)).model
            assert model.name == names[reply.request_id]
    finally:
        server.core.close_all()
        server.workers.stop()
        server.loop.close()
        client.close()
        os.close(r)
        os.close(w)


def test_a_pipelining_client_is_read_no_further_than_what_is_answered(tmp_path):
    """The requests of one receive are answered a turn's worth at a time; meanwhile nothing
    more is received: the rest waits in the socket (the client's writes block), not in the
    agent's buffer."""
    from edge_agent.protocol.receiving import RECV_BYTES

    fronts = FrontLoop()
    server = SocketServer(FakeService(), _config(tmp_path), fronts=fronts)
    client, agent_side = socket.socketpair()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * RECV_BYTES)
        client.setblocking(False)
        request = encode_request(Method.LIST_MODELS, 1, b"")
        sent = 0
        try:
            while sent < 4 * RECV_BYTES:
                sent += client.send(request * 1024)
        except BlockingIOError:
            pass
        if sent <= 2 * RECV_BYTES:
            pytest.skip("this kernel's socket buffers hold too little to show it")
        connection = _admit_now(server, agent_side)
        _run_turns(fronts, 6)
        assert not connection._closed
        assert connection.protocol._splitter.pending <= RECV_BYTES
    finally:
        server.core.close_all()
        server.workers.stop()
        server.loop.close()
        client.close()


def test_the_calls_of_a_client_that_hung_up_are_not_run(tmp_path, monkeypatch):
    """One pool thread, busy with a call held on an event; a client queues a LoadModel with a
    descriptor behind it and hangs up. Its call is never run and its descriptor is closed;
    a later client's call (queued behind it) runs."""
    release, inside = threading.Event(), threading.Event()
    metrics_calls: list[int] = []
    loaded: list[int] = []

    class Service(FakeService):
        def get_metrics(self, request, caller):
            metrics_calls.append(1)
            if len(metrics_calls) == 1:
                inside.set()
                assert release.wait(WAIT)
            return pb.GetMetricsResponse()

        def load_model(self, request, caller):
            loaded.append(1)  # (the call of a client that hung up: never)
            return pb.LoadModelResponse()

    queued = threading.Event()
    leaving_connection: list[FramedConnection] = []
    dispatch = FramedConnection._dispatch

    def dispatched(self, request):
        dispatch(self, request)
        if request.request_id == 2:
            leaving_connection.append(self)
            queued.set()

    monkeypatch.setattr(FramedConnection, "_dispatch", dispatched)
    fronts = FrontLoop(pool_threads=1)
    server = SocketServer(Service(), _config(tmp_path), fronts=fronts)
    fronts.start()
    pairs = [socket.socketpair() for _ in range(3)]
    (busy, busy_agent), (leaving, leaving_agent), (later, later_agent) = pairs
    r, w = os.pipe()
    try:
        for _, agent_side in pairs:
            _serve_on(fronts, server, agent_side)
        busy.sendall(encode_request(Method.GET_METRICS, 1, b""))
        assert inside.wait(WAIT)  # the pool's one thread is busy
        leaving.sendmsg([encode_request(Method.LOAD_MODEL, 2, pb.LoadModelRequest(
            name="m", url="fd:0").SerializeToString())],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        os.close(w)
        w = -1
        assert queued.wait(WAIT)  # its call waits for the pool's thread
        leaving.close()
        seen = threading.Event()

        def hang_up_seen():  # on the loop, each turn until it is
            if leaving_connection[0]._closed:
                seen.set()
            else:
                fronts.loop.soon(hang_up_seen)

        fronts.loop.call_soon_threadsafe(hang_up_seen)
        assert seen.wait(WAIT)
        later.sendall(encode_request(Method.GET_METRICS, 3, b""))
        release.set()
        assert _replies(busy, 1)[0].status == StatusCode.OK
        assert _replies(later, 1)[0].status == StatusCode.OK  # ran after the one left
        assert len(metrics_calls) == 2 and not loaded
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # every write end closed: the agent's too
    finally:
        release.set()
        fronts.stop(0)
        assert fronts.join(WAIT)
        for client, _ in pairs:
            client.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_handler_that_closed_in_its_constructor_is_not_kept(tmp_path):
    """A client that connects and leaves at once: the handler's first write fails (EPIPE) and
    it closes itself before the core registers it. Registered anyway, it sat under
    handlers[-1] with its timer in the past, and the loop spun a core on it."""
    from edge_agent.transport.event_loop import READ
    from edge_agent.transport.front_core import FrontCore

    made: list = []

    class ClosesAtOnce:
        def __init__(self, sock, caller):
            self.sock, self.caller, self.closed = sock, caller, False
            loop.selector.register(sock, READ, lambda mask: None)
            made.append(self)
            self.close()  # (its first write: EPIPE)

        idle = True

        def deadline(self):
            return 0.0

        def on_timer(self, now):
            pass

        def close(self):
            if not self.closed:
                self.closed = True
                core.remove(self.sock.fileno(), self)
                loop.selector.unregister(self.sock)
                self.sock.close()

    fronts = FrontLoop()
    loop = fronts.loop
    core = FrontCore(loop, _config(tmp_path), str(tmp_path / "grpc.sock"), "test", None,
                     ClosesAtOnce, lambda sock, reason: sock.close())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        theirs.close()
        core._admit(ours)
        assert made and made[0].closed
        assert core.handlers == {} and made[0] not in loop._timed
    finally:
        fronts.workers.stop()
        loop.close()
        ours.close()
