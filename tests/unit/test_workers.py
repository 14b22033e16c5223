"""Where a call runs (edge_agent.transport.workers): what decides inline or off the loop, and
what becomes of the jobs still queued at stop. Times are passed in or bounded far from the
threshold: nothing here depends on how fast the machine is."""
from __future__ import annotations

import os
import threading

from edge_agent import agent_pb2 as pb
from edge_agent.api.rpcs import Method, Outcome
from edge_agent.errors import StatusCode
from edge_agent.transport.workers import MAX_MEASURED, SAMPLES, Workers

WAIT = 30  # seconds: a bound for a bug (a hang), never a measurement
SLOW = 10.0  # "seconds" per call, passed to measure(): far above any threshold here


def _predict(name: str) -> bytes:
    return pb.PredictRequest(name=name).SerializeToString()


def _inline(workers: Workers, name: str) -> bool:
    queue, _ = workers.place(Method.PREDICT, _predict(name), ())
    return queue is None


def test_a_failed_call_is_not_measured():
    """One Predict that fails at once (a malformed body, a wrong shape) among a slow model's
    calls must not send that model inline: only successful calls are timed."""
    workers = Workers(1, inline_seconds=1.0)
    try:
        for _ in range(SAMPLES - 1):
            workers.measure("slow", SLOW)
        failed = workers.run("slow", lambda: Outcome(StatusCode.INVALID_ARGUMENT, "bad shape"))
        assert failed.code == StatusCode.INVALID_ARGUMENT
        assert not _inline(workers, "slow")  # undecided yet: off the loop
        workers.measure("slow", SLOW)  # the 16th successful call decides
        assert workers._slow["slow"] is True and not _inline(workers, "slow")
        for _ in range(SAMPLES):  # (a successful call through run() is timed)
            workers.run("slow", lambda: Outcome(StatusCode.OK, b""))  # well under 1 s
        assert workers._slow["slow"] is False
    finally:
        workers.stop()


def test_many_names_measured_once_leave_the_decisions_alone():
    workers = Workers(1, inline_seconds=1.0)
    try:
        for _ in range(SAMPLES):
            workers.measure("slow", SLOW)
            workers.measure("tiny", 0.0)
        for i in range(MAX_MEASURED * 2):
            workers.measure(f"bogus-{i}", 0.0)
        assert (workers._slow.get("slow"), workers._slow.get("tiny")) == (True, False)
        assert _inline(workers, "tiny") and not _inline(workers, "slow")
    finally:
        workers.stop()


def test_beyond_the_limit_the_least_recently_measured_decision_is_forgotten():
    workers = Workers(1, inline_seconds=1.0)

    def decide(name: str) -> None:
        for _ in range(SAMPLES):
            workers.measure(name, SLOW)

    try:
        for i in range(MAX_MEASURED):
            decide(f"model-{i}")
        decide("model-0")  # measured again: the most recent now
        decide("newcomer")
        assert len(workers._slow) == MAX_MEASURED
        assert "model-1" not in workers._slow
        assert {"model-0", "model-2", "newcomer"} <= set(workers._slow)
    finally:
        workers.stop()


def test_jobs_still_queued_at_stop_run_and_close_their_descriptors():
    """The pool's one thread is busy when the workers stop: the job queued behind it is not
    dropped (it would never close the descriptor it holds); it runs once the thread is free
    (the fronts' jobs then find their connection closed and answer at once)."""
    workers = Workers(1)
    release, inside = threading.Event(), threading.Event()
    r, w = os.pipe()
    ran: list[str] = []

    def busy() -> None:
        inside.set()
        assert release.wait(WAIT)

    def holding_a_descriptor() -> None:
        ran.append("queued")
        os.close(w)

    try:
        queue, _ = workers.place(Method.GET_METRICS, b"", ())
        assert queue is not None
        queue(busy)
        assert inside.wait(WAIT)
        queue(holding_a_descriptor)
        assert workers.stop(timeout=0) is False  # the busy call still runs
        release.set()
        pool_threads = list(workers._pool._threads)  # type: ignore[attr-defined]
        for thread in pool_threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        assert ran == ["queued"]
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # the write end was closed
    finally:
        release.set()
        os.close(r)


def test_the_model_name_of_a_predict_is_read_or_none_whatever_the_body():
    """Read off the body's first field without decoding it: a body cut anywhere, in the
    name's length too, is None (the Predict goes the usual way, which refuses it), never an
    exception on the loop."""
    from edge_agent.transport.workers import predict_model_name

    body = _predict("tiny")
    assert predict_model_name(body) == predict_model_name(memoryview(body)) == "tiny"
    long = "m" * 200  # a two-byte length
    assert predict_model_name(_predict(long) + b"\x12\x00") == long
    for cut in range(len(body)):
        assert predict_model_name(memoryview(body[:cut])) is None, cut
    for odd in (b"\x0a\x80", b"\x0a\xff\xff", b"\x0a\x80\x80\x01", b"\x12\x00", b"\x0a"):
        assert predict_model_name(memoryview(odd)) is None, odd
    with_tensor = pb.PredictRequest(name="tiny", tensors=[pb.Tensor(byte_data=b"x")])
    assert predict_model_name(with_tensor.SerializeToString()) == "tiny"
