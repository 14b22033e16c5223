"""The per-call counters of edge_agent.observe.metrics: every test runs on both, the compiled
module (cext/_metrics.pyx) and its pure-Python twin (edge_agent/observe/_metrics_py.py)."""
from __future__ import annotations

import importlib
import threading
import time

import pytest
from concurrency import run_concurrently

from edge_agent import pure_python
from edge_agent.errors import StatusCode
from edge_agent.observe import _metrics_py, metrics

TWINS = ["compiled", "python"]
# Every test runs on each module by itself: the EDGE_AGENT_PUREPYTHON pass would repeat them.
pytestmark = pytest.mark.twins


@pytest.fixture(params=TWINS, scope="module")
def counters(request):
    """Each module in turn."""
    if request.param == "python":
        return _metrics_py
    try:
        return importlib.import_module("edge_agent.observe._metrics")
    except ImportError:
        pytest.skip("no compiled build")


@pytest.mark.skipif(pure_python(), reason="EDGE_AGENT_PUREPYTHON forces the twin")
def test_the_compiled_counters_are_the_ones_in_use():
    from edge_agent.observe import _metrics

    assert _metrics.__file__.endswith(".so")
    assert metrics.PredictCounters is _metrics.PredictCounters
    assert metrics.CallCounts is _metrics.CallCounts


def test_call_counts_lose_no_count_across_threads(counters):
    """Threads released together by a barrier count at once: the totals are exact."""
    counter = counters.CallCounts()
    threads, per_thread = 8, 5000
    barrier = threading.Barrier(threads)

    def work():
        barrier.wait()
        for i in range(per_thread):
            counter.count("Predict", StatusCode.OK if i % 5 else StatusCode.NOT_FOUND)
        counter.count("ListModels", 0)

    run_concurrently(*[work] * threads)
    assert counter.counted() == {("Predict", StatusCode.OK): threads * per_thread * 4 // 5,
                                 ("Predict", StatusCode.NOT_FOUND): threads * per_thread // 5,
                                 ("ListModels", StatusCode.OK): threads}


def test_call_counts_skip_codes_outside_grpc_and_bound_the_names(counters):
    counter = counters.CallCounts()
    counter.count("Predict", 17)
    counter.count("Predict", -1)
    counter.count("Predict", 16)
    assert counter.counted() == {("Predict", 16): 1}
    for i in range(31):
        counter.count(f"rpc{i}", 0)
    with pytest.raises(ValueError, match="more than 32 RPC names"):
        counter.count("one too many", 0)
    counter.count("rpc3", 0)  # a name already counted still counts
    assert counter.counted()["rpc3", 0] == 2
    with pytest.raises(TypeError):
        counter.count(b"Predict", 0)


def test_predict_counters_fill_buckets_sums_and_bytes(counters):
    bounds = (0.001, 0.01, 0.1)
    c = counters.PredictCounters(bounds)
    assert c.state() == ([0, 0, 0, 0], 0.0, [0, 0, 0, 0], 0.0, 0, 0, 0)
    # invoke times on a bound go in that bound's bucket (le), above all in +Inf
    for invoke in (0.0005, 0.001, 0.05, 0.1, 7.0):
        c.succeeded(counters.now(), invoke, 1, 32, 16)
    c.succeeded(counters.now() - 5.0, 0.0, 0, 8, 4)  # started 5 s ago: +Inf end to end
    predict, predict_sum, invoke, invoke_sum, inputs, outputs, shared = c.state()
    assert invoke == [3, 0, 2, 1]  # the last one invoked in 0 s
    assert invoke_sum == pytest.approx(0.0005 + 0.001 + 0.05 + 0.1 + 7.0)
    assert sum(predict) == 6 and predict[-1] >= 1 and predict_sum >= 5.0
    assert (inputs, outputs, shared) == (5 * 32 + 8, 5 * 16 + 4, 5)
    assert (c.input_bytes, c.output_bytes, c.shared_inputs) == (inputs, outputs, shared)
    assert c.invoke_sum == invoke_sum and c.predict_sum == predict_sum


def test_a_reader_sees_each_prediction_whole(counters):
    """A reader racing writers (released together) never sees a prediction half-counted:
    every state has as many invoke counts as predict counts and bytes to match."""
    c = counters.PredictCounters(metrics.LATENCY_BUCKETS)
    writers, calls = 4, 2000
    barrier = threading.Barrier(writers + 1)
    done = threading.Event()
    seen: list[tuple] = []

    def write():
        barrier.wait()
        for _ in range(calls):
            c.succeeded(counters.now(), 0.0001, 1, 3, 5)

    def read():
        barrier.wait()
        while not done.is_set():
            seen.append(c.state())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        run_concurrently(*[write] * writers)
    finally:
        done.set()
        reader.join()
    seen.append(c.state())
    for predict, _, invoke, _, inputs, outputs, shared in seen:
        n = sum(predict)
        assert sum(invoke) == n == shared and inputs == 3 * n and outputs == 5 * n
    assert sum(seen[-1][0]) == writers * calls


def test_the_counters_end_on_the_clock_predictions_start_on(counters):
    """PredictCounters ends a prediction's time on CLOCK_MONOTONIC; the service starts it
    with time.perf_counter(): they must be one clock (a sandwich, not a timing)."""
    before = time.perf_counter()
    now = counters.now()
    after = time.perf_counter()
    assert before <= now <= after
    with pytest.raises(ValueError):
        counters.PredictCounters(tuple(range(1, 40)))
    counters.PredictCounters(tuple(range(1, 33)))  # 32 bounds: the most there may be
