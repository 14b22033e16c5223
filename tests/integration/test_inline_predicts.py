"""The framed front's inline Predicts (edge_agent.transport.inline_predicts): the pass over
the whole frames a receive brought answers the Predicts of models decided inline, sooner,
exactly as the usual path would, and hands everything else to it in order. Every test runs
on both implementations, the compiled pass and plain call (cext/_inline_predicts.pyx,
cext/_plain_call.pyx) and their pure-Python twins.

A real SocketServer over an in-process AgentService with real models, on its event loop;
each client is one end of a socketpair whose requests are all written (one write) before the
loop takes the other end, so the first receive holds them all. Turns are shown by the order
the loop sends its replies in (a record of FramedConnection._send), never by time."""
from __future__ import annotations

import array
import gc
import importlib
import logging
import os
import socket
import threading
import weakref

import numpy as np
import pytest
from wire import add_array, split_frames

from edge_agent import agent_pb2 as pb
from edge_agent.api.caller import Caller
from edge_agent.api.rpcs import Method
from edge_agent.api.service import AgentService
from edge_agent.config import from_mapping
from edge_agent.errors import FramingError, StatusCode
from edge_agent.models import _plain_call_py
from edge_agent.protocol import HEADER, FrameSplitter, Kind, encode_request
from edge_agent.protocol.receiving import MAX_FDS
from edge_agent.tools import model_builder
from edge_agent.transport import _inline_predicts_py
from edge_agent.transport.framed_front import FramedConnection, SocketServer
from edge_agent.transport.front_core import FrontLoop
from edge_agent.transport.workers import MEASURE_EVERY, SAMPLES, TURN

# Every test runs on each implementation by itself: the EDGE_AGENT_PUREPYTHON pass would
# repeat them.
pytestmark = pytest.mark.twins

WAIT = 30  # seconds: a bound for a bug (a hang), never a measurement
TINY = model_builder.tiny_model()
ADD = model_builder.add_model()
# The models decided inline ("gone" is not loaded; "victim" is, for one test only).
FAST = ("tiny", "add", "gone", "victim")
CALLER = Caller(os.getpid(), os.getuid(), os.getgid())


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    directory = tmp_path_factory.mktemp("inline-predicts")
    config = from_mapping({"edge_agent_state_dir": str(directory / "state"),
                           "edge_agent_socket_path": str(directory / "agent.sock"),
                           "edge_agent_allow_unsigned_models": True,
                           "edge_agent_num_threads": 1})
    service = AgentService(config)
    for name, built in (("tiny", TINY), ("add", ADD),
                        ("dyn", model_builder.dynamic_batch_model())):
        path = built.write(directory / f"{name}.tflite")
        service.load_model(pb.LoadModelRequest(name=name, url=str(path)))
    yield service
    service.close()


@pytest.fixture(params=["compiled", "python"])
def implementation(request):
    """(InlinePredicts, PlainCall) of each implementation in turn."""
    if request.param == "python":
        return _inline_predicts_py.InlinePredicts, _plain_call_py.PlainCall
    try:
        inline = importlib.import_module("edge_agent.transport._inline_predicts")
        plain = importlib.import_module("edge_agent.models._plain_call")
    except ImportError:
        pytest.skip("no compiled build")
    return inline.InlinePredicts, plain.PlainCall


class Pass:
    """The front's pass, recording what each one did: (frames answered, what it stopped at:
    the method and request id of the frame it held, "FramingError", or None; whether a call
    raised). Only numbers are kept: a body is a view of the connection's buffer."""

    def __init__(self, inner):
        self.inner = inner
        self.passes: list[tuple] = []
        # on_sent(fd, data): told what the steady state's call sent itself (the rest of what
        # a pass answers goes through FramedConnection._send).
        self.on_sent = None

    def answer(self, splitter, turn, out, now):
        answered = self.inner.answer(splitter, turn, out, now)
        self._record(answered)
        return answered

    def receive(self, sock, splitter, offer, turn, out, now):
        """The steady state's receive and pass in one call (recorded when the pass ran:
        bytes without descriptors)."""
        received = self.inner.receive(sock, splitter, offer, turn, out, now)
        if received[0] and not (received[1] or received[2]):
            self._record(received[3])
            if self.on_sent is not None and received[4]:
                self.on_sent(sock.fileno(), bytes(out[:received[4]]))
        return received

    def _record(self, answered):
        held = self.inner.held
        if isinstance(held, FramingError):
            stopped = "FramingError"
        elif held is not None:
            stopped = (held[1], held[3])
        else:
            stopped = None
        self.passes.append((answered, stopped, self.inner.failed is not None))

    @property
    def held(self):
        return self.inner.held

    @held.setter
    def held(self, value):
        self.inner.held = value

    @property
    def failed(self):
        return self.inner.failed

    @failed.setter
    def failed(self, value):
        self.inner.failed = value


class NoPass:
    """A pass that takes nothing: every frame goes the usual way."""
    held = failed = None

    def __init__(self):
        self.passes: list[tuple] = []

    def answer(self, splitter, turn, out, now):
        self.passes.append((0, None, False))
        return 0

    # The twin's receive, over this answer(): the bytes received, nothing answered.
    receive = _inline_predicts_py.InlinePredicts.receive


class Front:
    """A SocketServer over `service` whose pass and models' plain calls are of
    `implementation` (or no pass at all), with FAST decided inline."""

    def __init__(self, service, implementation, monkeypatch, passing: bool = True):
        inline_class, plain_class = implementation
        for model in service.serving.values():
            monkeypatch.setattr(model, "plain_call", plain_class(model, model._interpreter))
        self.service = service
        self.fronts = FrontLoop()
        self.loop = self.fronts.loop
        self.server = server = SocketServer(service, service.config, fronts=self.fronts)
        workers = server.workers
        workers.inline_seconds = 60.0  # every call "fast": the measures below decide
        for name in FAST:
            for _ in range(SAMPLES):
                workers.measure(name, 0.0)
        assert all(workers.decided[name] is False for name in FAST)
        self.measured: list[tuple[str, float]] = []  # what the pass timed, in order

        def measure(name: str, seconds: float) -> None:
            self.measured.append((name, seconds))
            workers.measure(name, seconds)

        inline = inline_class(service.serving, workers.decided, server.api.count,
                              measure, Method.PREDICT, MEASURE_EVERY)
        self.inline = server.inline = Pass(inline) if passing else NoPass()

    def admit(self, sock: socket.socket) -> None:
        """The loop serves `sock` (a connected socket), from its own thread."""
        def admit():
            sock.setblocking(False)
            connection = FramedConnection(self.server, sock, CALLER)
            self.server.core.handlers[connection.fd] = connection
            self.loop.add_timed(connection)
        self.loop.call_soon_threadsafe(admit)

    def connect(self, data: bytes = b"", fds: list[int] | None = None) -> socket.socket:
        """A client that wrote `data` (with `fds`, in one sendmsg) before the loop took its
        connection."""
        client, agent_side = socket.socketpair()
        client.settimeout(WAIT)
        if data:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds \
                else []
            assert client.sendmsg([data], rights) == len(data)
        self.admit(agent_side)
        return client

    def settled(self) -> None:
        """Once the loop has finished the handler it runs now: the client may read the replies
        of a steady state's receive before that handler has recorded its pass (Pass.receive)
        or returned (dropping what it held of the pass); a callback queued now runs after."""
        if self.loop.closed:  # stopped (stop() joins the loop): settled
            return
        done = threading.Event()
        self.loop.call_soon_threadsafe(done.set)
        assert done.wait(WAIT)

    def stop(self) -> None:
        self.fronts.stop(0)
        assert self.fronts.join(WAIT)


@pytest.fixture
def start_front(service, implementation, monkeypatch):
    """start_front(passing=True) → a running Front, stopped after the test."""
    started: list[Front] = []

    def start(passing: bool = True) -> Front:
        front = Front(service, implementation, monkeypatch, passing)
        started.append(front)
        front.fronts.start()
        return front

    yield start
    for front in started:
        front.stop()


# --- requests and replies ---------------------------------------------------------------------

def predict_body(model: str, inputs: dict, named: bool = True) -> bytes:
    message = pb.PredictRequest(name=model)
    for key, value in inputs.items():
        add_array(message.tensors, key if named else "", value)
    return message.SerializeToString()


def predict(request_id: int, model: str = "tiny", seed: int = 0, named: bool = True,
            built: model_builder.BuiltModel = TINY) -> bytes:
    return encode_request(Method.PREDICT, request_id,
                          predict_body(model, built.sample_inputs(seed=seed), named))


def replies(sock: socket.socket, count: int) -> list:
    """`count` reply frames, or those that came before the agent closed the connection."""
    splitter, frames = FrameSplitter(1 << 24), []
    while len(frames) < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        frames.extend(split_frames(splitter, chunk))
    assert not splitter.pending
    return frames


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def outputs(body: bytes) -> dict:
    response = pb.PredictResponse.FromString(body)
    return {bytes(t.tensor_metadata.name).decode(): np.frombuffer(
        t.byte_data, np.float32).reshape(tuple(t.tensor_metadata.shape))
        for t in response.tensors}


def assert_predicted(frame, request_id: int, seed: int = 0,
                     built: model_builder.BuiltModel = TINY) -> None:
    assert (frame.kind, frame.request_id, frame.method) == (Kind.REPLY, request_id, Method.PREDICT)
    assert frame.status == StatusCode.OK, frame.body
    expected = built.reference(built.sample_inputs(seed=seed))
    got = outputs(frame.body)
    assert list(got) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6)


def framed_calls(service) -> dict:
    """The framed front's call counter: (rpc, code name) → count."""
    return {(c.rpc, c.code): c.count for c in service.get_metrics().calls if c.front == "framed"}


def predictions(service, model: str) -> dict:
    """The model's predictions by status code name."""
    [metrics] = [m for m in service.get_metrics().models if m.name == model]
    return {p.code: p.count for p in metrics.predictions}


def delta(after: dict, before: dict) -> dict:
    return {key: count - before.get(key, 0) for key, count in after.items()
            if count != before.get(key, 0)}


# --- the tests --------------------------------------------------------------------------------

def _mixed() -> tuple[bytes, list[tuple[int, int]]]:
    """Requests of every kind pipelined in one write, and the (request id, status) each
    gets."""
    wrong_shape = pb.PredictRequest(name="tiny")
    add_array(wrong_shape.tensors, "a", np.zeros((1, 5), np.float32))
    add_array(wrong_shape.tensors, "b", np.zeros((1, 5), np.float32))
    frames = [
        (predict(1, seed=1), StatusCode.OK),
        (predict(2, seed=2, named=False), StatusCode.OK),
        (predict(3, "add", seed=3, built=ADD), StatusCode.OK),
        (encode_request(Method.LIST_MODELS, 4, b""), StatusCode.OK),
        (predict(5, seed=5), StatusCode.OK),
        (predict(6, "unknown", seed=6), StatusCode.NOT_FOUND),
        (predict(7, seed=7), StatusCode.OK),
        # The name of a model decided inline, then a tensor cut short.
        (encode_request(Method.PREDICT, 8, b"\x0a\x04tiny\x12\x10\x22"), StatusCode.INVALID_ARGUMENT),
        (encode_request(Method.PREDICT, 9, b"\xff\xff"), StatusCode.INVALID_ARGUMENT),
        (encode_request(Method.PREDICT, 10, wrong_shape.SerializeToString()),
         StatusCode.INVALID_ARGUMENT),
        (predict(11, seed=11), StatusCode.OK),
        (predict(12, "dyn", seed=12, built=model_builder.dynamic_batch_model()), StatusCode.OK),
        (predict(13, seed=13), StatusCode.OK),
        (HEADER.pack(b"EA", 1, Kind.REQUEST, Method.PREDICT, 9, 14, 0),
         StatusCode.INVALID_ARGUMENT),  # a request frame with a status
        (encode_request(77, 15, b""), StatusCode.UNIMPLEMENTED),
        (predict(16, seed=16), StatusCode.OK),
    ]
    return b"".join(f for f, _ in frames), [(i + 1, code) for i, (_, code) in enumerate(frames)]


def test_pipelined_requests_are_answered_in_order_as_without_the_pass(start_front, service):
    data, expected = _mixed()
    answers = {}
    for passing in (False, True):
        front = start_front(passing)
        calls, tiny = framed_calls(service), predictions(service, "tiny")
        with front.connect(data) as client:
            frames = replies(client, len(expected))
            assert [(f.request_id, f.status) for f in frames] == expected, \
                [bytes(f.body) for f in frames]
            # The connection stays open: the next request is answered.
            client.sendall(predict(99, seed=9))
            [last] = replies(client, 1)
            assert_predicted(last, 99, seed=9)
        answers[passing] = [(f.request_id, f.method, f.status, f.body) for f in frames]
        assert delta(framed_calls(service), calls) == {
            ("Predict", "OK"): 10, ("Predict", "NOT_FOUND"): 1,
            ("Predict", "INVALID_ARGUMENT"): 3, ("ListModels", "OK"): 1,
            ("unknown", "UNIMPLEMENTED"): 1}
        assert delta(predictions(service, "tiny"), tiny) == {"OK": 8, "INVALID_ARGUMENT": 1}
        front.stop()
    assert answers[True] == answers[False]
    for frame, seed in zip(frames[:2], (1, 2)):
        assert_predicted(frame, frame.request_id, seed)
    assert_predicted(frames[2], 3, seed=3, built=ADD)
    # The pass answered the three Predicts at the head and stopped at the ListModels; the
    # one after (its own receive) at once.
    front.settled()
    assert front.inline.passes == [(3, (Method.LIST_MODELS, 4), False), (1, None, False)]


def test_a_predict_cut_in_its_model_name_is_refused_in_its_place(start_front, service):
    """A body that ends in the length of its model name: INVALID_ARGUMENT, and the Predicts
    before and after it are answered."""
    front = start_front()
    data = predict(1, seed=1) + encode_request(Method.PREDICT, 2, b"\x0a\x80") + predict(3, seed=3)
    with front.connect(data) as client:
        first, cut, last = replies(client, 3)
        assert_predicted(first, 1, seed=1)
        assert (cut.request_id, cut.status) == (2, StatusCode.INVALID_ARGUMENT), cut.body
        assert_predicted(last, 3, seed=3)
    front.settled()
    assert front.inline.passes[0] == (1, (Method.PREDICT, 2), False)


def test_a_pipelining_connection_takes_turns_with_another(service, implementation, monkeypatch):
    """More than TURN fast Predicts on one connection and one on another, all written before
    the loop runs: the other's reply is sent before the first connection's (TURN + 1)th, and
    every reply is in its connection's order. The loop runs on this thread; the order of
    its sends is recorded."""
    front = Front(service, implementation, monkeypatch)
    sent: list[tuple[int, list[int]]] = []  # (connection, request ids), in the order sent
    send = FramedConnection._send

    def record(fd, data):
        sent.append((fd, [f.request_id for f in split_frames(FrameSplitter(1 << 24), data)]))

    def recording(self, *parts):
        record(self.fd, b"".join(bytes(part) for part in parts))
        send(self, *parts)

    monkeypatch.setattr(FramedConnection, "_send", recording)
    front.inline.on_sent = record  # what the steady state's compiled call sends itself
    greedy, greedy_agent = socket.socketpair()
    other, other_agent = socket.socketpair()
    count = 5 * TURN
    try:
        greedy.sendall(b"".join(predict(i + 1, seed=i) for i in range(count)))
        other.sendall(predict(99, seed=99))
        for sock in (greedy_agent, other_agent):
            sock.setblocking(False)
            connection = FramedConnection(front.server, sock, CALLER)
            front.server.core.handlers[connection.fd] = connection
        front.loop.run(lambda: sum(len(ids) for _, ids in sent) >= count + 1)
        order = [(fd, i) for fd, ids in sent for i in ids]
        assert [i for fd, i in order if fd == other_agent.fileno()] == [99]
        greedy_ids = [i for fd, i in order if fd == greedy_agent.fileno()]
        assert greedy_ids == list(range(1, count + 1))
        assert order.index((other_agent.fileno(), 99)) < order.index(
            (greedy_agent.fileno(), TURN + 1))
        # The pass answered a turn's worth of the greedy connection's at once.
        assert (TURN, None, False) in front.inline.passes
        for client, ids, seeds in ((greedy, range(1, count + 1), range(count)),
                                   (other, [99], [99])):
            client.settimeout(WAIT)
            frames = replies(client, len(ids))
            for frame, request_id, seed in zip(frames, ids, seeds):
                assert_predicted(frame, request_id, seed)
    finally:
        front.server.core.close_all()
        front.server.workers.stop()
        front.loop.close()
        greedy.close()
        other.close()


def test_a_framing_error_after_fast_predicts_is_answered_after_them(start_front):
    front = start_front()
    data = predict(1, seed=1) + predict(2, seed=2) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with front.connect(data) as client:
        frames = replies(client, 4)
        assert len(frames) == 3
        assert_predicted(frames[0], 1, seed=1)
        assert_predicted(frames[1], 2, seed=2)
        error = frames[2]
        assert (error.kind, error.status) == (Kind.REPLY, StatusCode.INVALID_ARGUMENT)
        assert b"not an edge-agent frame" in error.body
        assert closed(client)
    front.settled()
    assert front.inline.passes == [(2, "FramingError", False)]


class FailingOnce:
    """A model's plain call whose `nth` answer raises as a runtime fault would."""

    def __init__(self, plain, nth: int):
        self.plain = plain
        self.calls = 0
        self.nth = nth

    def answer(self, body, started):
        self.calls += 1
        if self.calls == self.nth:
            raise RuntimeError("the runtime failed")
        return self.plain.answer(body, started)

    def run(self, tensors, started):
        return self.plain.run(tensors, started)


def test_a_runtime_failure_in_the_pass_is_internal_in_its_place(start_front, service,
                                                               monkeypatch):
    front = start_front()
    model = service.serving["tiny"]
    monkeypatch.setattr(model, "plain_call", FailingOnce(model.plain_call, 2))
    calls, tiny = framed_calls(service), predictions(service, "tiny")
    data = predict(1, seed=1) + predict(2, seed=2) + predict(3, seed=3)
    with front.connect(data) as client:
        first, failed, third = replies(client, 3)
        assert_predicted(first, 1, seed=1)
        assert (failed.request_id, failed.method, failed.status) == (
            2, Method.PREDICT, StatusCode.INTERNAL)
        assert bytes(failed.body) == b"internal error in Predict: RuntimeError: the runtime failed"
        assert_predicted(third, 3, seed=3)
        client.sendall(predict(4, seed=4))  # the connection is open
        [fourth] = replies(client, 1)
        assert_predicted(fourth, 4, seed=4)
    front.settled()
    assert front.inline.passes[0] == (1, None, True)
    assert delta(framed_calls(service), calls) == {("Predict", "OK"): 3,
                                                   ("Predict", "INTERNAL"): 1}
    assert delta(predictions(service, "tiny"), tiny) == {"OK": 3, "INTERNAL": 1}
    model.wait_idle()  # the model is free


def test_the_pass_keeps_nothing_of_a_call_once_answered(start_front, service, tmp_path,
                                                       monkeypatch):
    """After its pass, the front keeps neither the frame it handed back (a view of the
    connection's buffer) nor the call that raised (its model, its exception): a model
    unloaded after an inline failure is freed, not kept alive until some later pass."""
    front = start_front()
    path = TINY.write(tmp_path / "victim.tflite")
    service.load_model(pb.LoadModelRequest(name="victim", url=str(path)))
    model = service.serving["victim"]

    def fail(body, started):  # (its frame holds nothing of the model)
        raise RuntimeError("the runtime failed")

    model.plain_call = type("Failing", (), {"answer": staticmethod(fail)})()
    gone = weakref.ref(model)
    del model
    # What is logged with its traceback is kept by the test's log capture: not logged here.
    monkeypatch.setattr(logging.getLogger("edge_agent.api.rpcs"), "disabled", True)
    try:
        with front.connect(predict(1, "victim") + encode_request(Method.LIST_MODELS, 2, b"")) \
                as client:
            failed, listed = replies(client, 2)
            assert (failed.status, listed.status) == (StatusCode.INTERNAL, StatusCode.OK)
        front.settled()
        assert front.inline.passes == [(0, None, True)]
        assert (front.inline.held, front.inline.failed) == (None, None)
    finally:
        service.unload_model(pb.UnLoadModelRequest(name="victim"))
    gc.collect()
    assert gone() is None, gc.get_referrers(gone())


def test_one_call_in_measure_every_is_timed_and_a_model_grown_slow_leaves_the_pass(
        start_front):
    """The pass feeds the workers the time of one call in MEASURE_EVERY; once those say the
    model is slow (here: every time is, inline_seconds 0), its Predicts are no longer the
    pass's, and are answered all the same (on the model's worker)."""
    front = start_front()
    workers = front.server.workers
    calls = 0
    with front.connect() as client:
        def turn():  # a turn's worth of Predicts in one write, all the pass's while fast
            nonlocal calls
            client.sendall(b"".join(predict(calls + i + 1, seed=i) for i in range(TURN)))
            for i, frame in enumerate(replies(client, TURN)):
                assert_predicted(frame, calls + i + 1, seed=i)
            calls += TURN

        for _ in range(2 * MEASURE_EVERY // TURN):
            turn()
        front.settled()
        assert [name for name, _ in front.measured] == ["tiny", "tiny"]
        assert all(seconds > 0 for _, seconds in front.measured)
        assert front.inline.passes == [(TURN, None, False)] * (2 * MEASURE_EVERY // TURN)
        workers.inline_seconds = 0.0  # from now on every call measured is "slow"
        while workers.decided["tiny"] is False:
            assert calls < 2 * SAMPLES * MEASURE_EVERY, "the pass stopped measuring"
            turn()
        assert len(front.measured) == SAMPLES  # the two above are among the samples
        # Decided slow: the next turn is the usual path's, on the model's worker.
        front.settled()  # the last pass recorded before the record is emptied
        del front.inline.passes[:]
        turn()
        front.settled()
        assert front.inline.passes == [(0, (Method.PREDICT, calls - TURN + 1), False)]
        assert len(front.measured) == SAMPLES


def _memfds() -> int:
    """How many descriptors of this process (the agent's too) are memfds."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:")
        except OSError:  # the descriptor listdir itself used, closed meanwhile
            pass
    return count


def test_predicts_with_descriptors_go_the_usual_way_and_leak_nothing(start_front):
    """A receive that brought descriptors is not the pass's: its Predicts are answered the
    usual way (the descriptors closed as their reply is ready); the next receive's are the
    pass's again."""
    pytest.importorskip("edge_agent.shm._shm")
    front = start_front()
    a, b = np.arange(4, dtype=np.float32).reshape(1, 4), np.full((1, 4), 10, np.float32)
    first, second = (os.memfd_create(n, os.MFD_CLOEXEC) for n in ("a", "b"))
    try:
        for fd, values, offset in ((first, a, 0), (second, b, 16)):
            os.ftruncate(fd, 4096)
            os.pwrite(fd, values.tobytes(), offset)
        by_fd = pb.PredictRequest(name="add")
        for index, offset, name, value in ((0, 0, "a", a), (1, 16, "b", b)):
            tensor = by_fd.tensors.add()
            tensor.shared_memory_handle.CopyFrom(pb.SharedMemoryHandle(fd_index=index,
                                                                       offset=offset))
            tensor.tensor_metadata.name = name.encode()
            tensor.tensor_metadata.data_type = pb.FLOAT32
            tensor.tensor_metadata.shape.extend(value.shape)
        by_fd.output_handles.add(fd_index=0, offset=64)
        assert _memfds() == 2  # ours
        # The descriptors belong to the last frame that begins in the bytes they came with.
        data = (predict(1, seed=1) + predict(2, seed=2)
                + encode_request(Method.PREDICT, 3, by_fd.SerializeToString()))
        with front.connect(data, [first, second]) as client:
            inline_one, inline_two, by_shm = replies(client, 3)
            assert_predicted(inline_one, 1, seed=1)
            assert_predicted(inline_two, 2, seed=2)
            assert (by_shm.request_id, by_shm.status) == (3, StatusCode.OK), by_shm.body
            np.testing.assert_array_equal(
                np.frombuffer(os.pread(first, 16, 64), np.float32), (a + b).ravel())
            front.settled()
            assert front.inline.passes == []  # the receive with descriptors skipped the pass
            assert _memfds() == 2, "a passed descriptor stayed open"
            client.sendall(predict(4, seed=4) + predict(5, seed=5))
            fourth, fifth = replies(client, 2)
            assert_predicted(fourth, 4, seed=4)
            assert_predicted(fifth, 5, seed=5)
            front.settled()
            assert front.inline.passes == [(2, None, False)]
    finally:
        os.close(first)
        os.close(second)


def test_a_model_not_decided_inline_is_left_to_the_usual_path(start_front, service):
    """A model not decided (measured yet) or decided slow: its Predicts are not the pass's,
    and are answered all the same."""
    front = start_front()
    front.server.workers.decided["tiny"] = True  # measured slow: its own worker
    data = predict(1, seed=1) + predict(2, "add", seed=2, built=ADD)
    with front.connect(data) as client:
        first, second = replies(client, 2)
        assert_predicted(first, 1, seed=1)
        assert_predicted(second, 2, seed=2, built=ADD)
    front.settled()
    assert front.inline.passes == [(0, (Method.PREDICT, 1), False)]
    with front.connect(predict(3, "dyn", seed=3, built=model_builder.dynamic_batch_model())
                       + predict(4, "add", seed=4, built=ADD)) as client:
        third, fourth = replies(client, 2)
        assert_predicted(third, 3, seed=3, built=model_builder.dynamic_batch_model())
        assert_predicted(fourth, 4, seed=4, built=ADD)
    front.settled()
    assert front.inline.passes[1] == (0, (Method.PREDICT, 3), False)


def test_a_model_decided_inline_but_not_loaded_is_not_found(start_front):
    front = start_front()
    with front.connect(predict(1, "gone", seed=1) + predict(2, seed=2)) as client:
        missing, found = replies(client, 2)
        assert (missing.request_id, missing.status) == (1, StatusCode.NOT_FOUND), missing.body
        assert_predicted(found, 2, seed=2)
    front.settled()
    assert front.inline.passes == [(0, (Method.PREDICT, 1), False)]


def test_a_predict_naming_a_second_model_is_the_second_ones(start_front, service):
    """A model name given twice: the last one counts (as protobuf reads it), not the one
    the pass looked up (the first)."""
    front = start_front()
    tiny, add = predictions(service, "tiny"), predictions(service, "add")
    inputs = TINY.sample_inputs(seed=1)  # add's inputs are tiny's: the add model answers
    body = predict_body("tiny", inputs) + pb.PredictRequest(name="add").SerializeToString()
    assert pb.PredictRequest.FromString(body).name == "add"
    with front.connect(encode_request(Method.PREDICT, 1, body) + predict(2, seed=2)) as client:
        first, second = replies(client, 2)
        assert_predicted(first, 1, seed=1, built=ADD)
        assert_predicted(second, 2, seed=2)
    front.settled()
    assert front.inline.passes[0] == (0, (Method.PREDICT, 1), False)
    assert delta(predictions(service, "add"), add) == {"OK": 1}
    assert delta(predictions(service, "tiny"), tiny) == {"OK": 1}


def test_more_descriptors_than_a_frame_may_bring_are_refused_and_closed(start_front):
    """MAX_FDS + 1 descriptors with a frame, received by the steady state's receive: its
    ancillary space is the usual path's (the kernel cuts off what does not fit, MSG_CTRUNC),
    so the frame is refused as the usual path refuses it and every descriptor is closed;
    MAX_FDS are taken."""
    front = start_front()
    fds = [os.memfd_create(f"m{i}", os.MFD_CLOEXEC) for i in range(MAX_FDS + 1)]
    try:
        assert _memfds() == MAX_FDS + 1  # ours
        with front.connect(b"", None) as client:
            client.sendmsg([encode_request(Method.LIST_MODELS, 5, b"")],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            [refused] = replies(client, 1)
            assert (refused.request_id, refused.status) == (5, StatusCode.INVALID_ARGUMENT)
            assert f"more than {MAX_FDS} file descriptors".encode() in refused.body
            client.sendmsg([encode_request(Method.LIST_MODELS, 6, b"")],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                             array.array("i", fds[:MAX_FDS]))])
            [taken] = replies(client, 1)
            assert (taken.request_id, taken.status) == (6, StatusCode.OK), taken.body
            assert _memfds() == MAX_FDS + 1, "a passed descriptor stayed open"
    finally:
        for fd in fds:
            os.close(fd)


def test_a_client_that_does_not_read_has_no_more_than_one_large_reply_waiting(start_front,
                                                                             service,
                                                                             monkeypatch):
    """Fast Predicts with 1 MiB replies, a turn's worth pipelined, the client reading none:
    as on the usual path (the next request is answered once the last reply went), the pass
    stops once its replies fill a socket's worth, so the agent keeps one large reply waiting
    for the client, not a turn's."""
    front = start_front()
    reply = bytes(1 << 20)
    monkeypatch.setattr(service.serving["tiny"], "plain_call",
                        type("Large", (), {"answer": staticmethod(lambda body, now: reply),
                                           "run": staticmethod(lambda tensors, now: reply)})())
    with front.connect(b"".join(predict(i + 1, seed=i) for i in range(TURN))) as client:
        [connection] = _on_loop_until(front, lambda: [
            c for c in front.server.core.handlers.values() if c._out])
        waiting = sum(len(part) for part in connection._out)
        assert waiting <= len(reply) + HEADER.size, waiting
        for frame in replies(client, TURN):
            assert (frame.status, len(frame.body)) == (StatusCode.OK, len(reply))


def _on_loop_until(front, check):
    """check()'s first true value, asked on the loop's thread once a turn."""
    seen: list = []
    found = threading.Event()

    def look():
        value = check()
        if value:
            seen.append(value)
            found.set()
        else:
            front.loop.soon(look)

    front.loop.call_soon_threadsafe(look)
    assert found.wait(WAIT)
    return seen[0]
