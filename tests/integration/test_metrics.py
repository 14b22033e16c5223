"""Metrics: the GetMetrics RPC and `edge-agent client metrics` on the framed front, the
Prometheus listener (TCP and UNIX socket) and textfile, against real agents; the counters'
arithmetic and their lock-free call counting."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent import config as config_module
from edge_agent.observe import metrics
from edge_agent.app.root import StartError
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import encode_request
from edge_agent.api.service import AgentService
from edge_agent.shm_client import SysVSegment

from capture_helpers import capture_request, wait_for
from concurrency import run_concurrently

prometheus_parser = pytest.importorskip("prometheus_client.parser")

ADD_INPUTS = {"a": np.ones((1, 4), np.float32), "b": np.full((1, 4), 2, np.float32)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple, float]:
    """(name, sorted labels) → value of every sample in a Prometheus text exposition."""
    found = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def by_code(model: pb.ModelMetrics) -> dict[str, int]:
    return {c.code: c.count for c in model.predictions}


def calls(m: pb.GetMetricsResponse, front: str = "framed") -> dict[tuple, int]:
    return {(c.rpc, c.code): c.count for c in m.calls if c.front == front}


def edge_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True,
                          text=True, timeout=60)


def make_calls(client, model_path) -> None:
    """What the counting tests expect: 3 inline and 1 shared-memory prediction that succeed,
    one that does not fit, one on a model not loaded."""
    client.load_model("add", str(model_path))
    for _ in range(3):
        client.predict("add", ADD_INPUTS)
    segments = [SysVSegment.create(16, 0o600) for _ in range(2)]
    try:
        client.predict("add", {name: seg.write(array) for (name, array), seg
                               in zip(ADD_INPUTS.items(), segments)})
    finally:
        for seg in segments:
            seg.free()
    with pytest.raises(AgentError) as bad:
        client.predict("add", [np.ones((1, 5), np.float32), np.ones((1, 4), np.float32)])
    assert bad.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(AgentError) as missing:
        client.predict("absent", ADD_INPUTS)
    assert missing.value.code == StatusCode.NOT_FOUND


# --- the RPC and the CLI on the framed front ---------------------------------------------

def test_get_metrics_counts_predictions_per_model_and_calls_per_rpc(agent, model_files):
    with agent.client() as client:
        make_calls(client, model_files["add"])
        m = client.get_metrics()
    assert m.counters_kept and m.agent_version and m.uptime_seconds > 0
    [model] = m.models
    assert model.name == "add" and model.delegate and model.memory_reserved_bytes > 0
    assert model.load_seconds > 0 and model.package_name == ""
    assert by_code(model) == {"OK": 4, "INVALID_ARGUMENT": 1}
    assert model.predict_seconds.count == 4 == sum(model.predict_seconds.bucket_counts)
    assert model.invoke_seconds.count == 4
    assert 0 < model.invoke_seconds.sum_seconds <= model.predict_seconds.sum_seconds
    assert len(model.predict_seconds.bucket_counts) == len(metrics.LATENCY_BUCKETS) + 1
    # Two float32[1,4] inputs (32 bytes) and one output (16 bytes) per prediction.
    assert (model.input_bytes, model.output_bytes) == (4 * 32, 4 * 16)
    assert (model.shared_memory_inputs, model.inline_inputs) == (2, 6)
    # ListModels: the fixture's probe that the agent is up.
    assert calls(m) == {("ListModels", "OK"): 1, ("LoadModel", "OK"): 1, ("Predict", "OK"): 4,
                        ("Predict", "INVALID_ARGUMENT"): 1, ("Predict", "NOT_FOUND"): 1}
    assert {c.front: c.open for c in m.connections} == {"framed": 1}
    assert m.memory_budget_used_bytes == model.memory_reserved_bytes
    assert m.resident_memory_bytes > 0 and m.cpu_seconds > 0
    assert m.capture.journal_limit_bytes == 128 * 1024 * 1024


def test_hostile_method_numbers_are_counted_under_one_label(agent):
    """A client cycling through method numbers must not grow a label value per number."""
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(agent.socket_path)
        for method in (0, 8, 99, 199, 4242, 65535):
            raw.sendall(encode_request(method, method + 1, b""))
        with agent.client() as client:
            wait_for(lambda: calls(client.get_metrics()).get(("unknown", "UNIMPLEMENTED")) == 6,
                     what="six UNIMPLEMENTED calls counted")
            assert {rpc for rpc, _ in calls(client.get_metrics())} <= {"unknown", "GetMetrics", "ListModels"}
            assert agent.alive()


def test_client_metrics_table_and_json(agent, model_files):
    with agent.client() as client:
        make_calls(client, model_files["add"])
    table = edge_agent("client", "--socket", agent.socket_path, "metrics")
    assert table.returncode == 0, table.stderr
    [row] = [line.split() for line in table.stdout.splitlines() if line.startswith("add ")]
    assert row[6:9] == ["4", "INVALID_ARGUMENT", "1"]  # OK, then the errors by code
    assert "framed  Predict" in table.stdout and "capture: accepted 0" in table.stdout
    out = edge_agent("client", "--socket", agent.socket_path, "metrics", "--json")
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    [model] = document["models"]
    assert model["predictions"] == {"OK": 4, "INVALID_ARGUMENT": 1}
    assert model["predict_seconds"]["count"] == 4 and model["shared_memory_inputs"] == 2
    assert document["connections"] == {"framed": 1}  # the CLI's own


def test_metrics_off_keeps_no_counters_and_still_answers(start_agent, model_files):
    agent = start_agent(edge_agent_metrics=False)
    with agent.client() as client:
        make_calls(client, model_files["add"])
        m = client.get_metrics()
    assert not m.counters_kept and not m.calls
    [model] = m.models
    assert model.name == "add" and model.memory_reserved_bytes > 0
    assert not model.predictions and model.predict_seconds.count == 0
    assert "edge_agent_metrics is off" in edge_agent(
        "client", "--socket", agent.socket_path, "metrics").stdout


# --- Prometheus exposition --------------------------------------------------------------

def test_prometheus_listener_on_loopback_tcp(start_agent, model_files):
    port = free_port()
    agent = start_agent(edge_agent_metrics_listen=f"127.0.0.1:{port}",
                        sagemaker_edge_core_device_name="dev-1",
                        sagemaker_edge_core_device_fleet_name="fleet-a")
    with agent.client() as client:
        make_calls(client, model_files["add"])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    reply = connection.getresponse()
    assert reply.status == 200
    found = samples(reply.read().decode())
    assert found[("edge_agent_predictions_total", (("code", "OK"), ("model", "add")))] == 4
    assert found[("edge_agent_predictions_total",
                  (("code", "INVALID_ARGUMENT"), ("model", "add")))] == 1
    assert found[("edge_agent_predict_seconds_count", (("model", "add"),))] == 4
    assert found[("edge_agent_predict_seconds_bucket", (("le", "+Inf"), ("model", "add")))] == 4
    assert found[("edge_agent_predict_inputs_total", (("model", "add"), ("transport", "shm")))] == 2
    assert found[("edge_agent_calls_total", (("code", "NOT_FOUND"), ("front", "framed"),
                                             ("rpc", "Predict")))] == 1
    assert found[("edge_agent_info", (("device", "dev-1"), ("fleet", "fleet-a"),
                                      ("version", _version())))] == 1
    assert found[("edge_agent_resident_memory_bytes", ())] > 0
    # A scraper that connects and says nothing holds one thread, not the agent.
    with socket.create_connection(("127.0.0.1", port)):
        with agent.client() as client:
            client.predict("add", ADD_INPUTS)
    assert agent.alive()


def _version() -> str:
    from edge_agent import __version__
    return __version__


def _get_over_unix(path: str) -> tuple[int, str]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_prometheus_listener_on_a_unix_socket_with_the_agent_sockets_mode(start_agent, tmp_path,
                                                                          model_files):
    path = str(tmp_path / "metrics.sock")
    agent = start_agent(edge_agent_metrics_listen=path, edge_agent_socket_mode="0600")
    with agent.client() as client:
        make_calls(client, model_files["add"])
    assert os.stat(path).st_mode & 0o777 == 0o600
    status, body = _get_over_unix(path)
    assert status == 200
    assert samples(body)[("edge_agent_predictions_total", (("code", "OK"), ("model", "add")))] == 4
    agent.stop()
    assert not os.path.exists(path)  # a clean stop leaves no socket file behind


def test_textfile_is_replaced_atomically_while_read(tmp_path, model_files):
    """A reader polling the file while it is rewritten many times only ever sees whole
    expositions, each ending with the last family, and no temporary file stays behind."""
    from edge_agent.observe import exposition

    path = tmp_path / "prom" / "edge_agent.prom"
    path.parent.mkdir()
    config = config_module.from_mapping({
        "edge_agent_state_dir": str(tmp_path / "state"), "edge_agent_allow_unsigned_models": True,
        "edge_agent_metrics_textfile": str(path),
        "edge_agent_metrics_textfile_period_seconds": 3600})
    service = AgentService(config)
    try:
        service.load_model(pb.LoadModelRequest(name="add", url=str(model_files["add"])))
        request = pb.PredictRequest(name="add")
        from wire import add_array
        for name, array in ADD_INPUTS.items():
            add_array(request.tensors, name, array)
        writer = exposition.Exposition(service.get_metrics, config).start()  # writes once
        writes, done = 300, threading.Event()
        seen: list[float] = []

        def write():
            try:
                for _ in range(writes):
                    service.predict(request)
                    assert writer.write_textfile()
            finally:
                done.set()

        def read():
            while not done.is_set():
                text = path.read_text()
                # The last family (no error: no sample) closes every whole exposition.
                assert text.endswith("# TYPE edge_agent_capture_last_error_time_seconds gauge\n"), text
                found = samples(text)
                seen.append(found[("edge_agent_predictions_total",
                                   (("code", "OK"), ("model", "add")))])

        run_concurrently(write, read)
        writer.stop()
        final = samples(path.read_text())
        assert final[("edge_agent_predictions_total", (("code", "OK"), ("model", "add")))] == writes
        assert seen == sorted(seen)  # each read a whole file, never an older one after a newer
        assert os.listdir(path.parent) == [path.name]
    finally:
        service.close()


@pytest.mark.parametrize("key, value, extra, phrase", [
    ("edge_agent_metrics_listen", "localhost", {}, "expected HOST:PORT"),
    ("edge_agent_metrics_listen", "127.0.0.1:99999", {}, "expected HOST:PORT"),
    ("edge_agent_mqtt_url", "http://broker", {}, "expected mqtt://"),
    ("edge_agent_mqtt_url", "mqtts://127.0.0.1:1",
     {"sagemaker_edge_provider_aws_cert_file": "/nonexistent.crt"}, "sagemaker_edge_provider_aws"),
    ("edge_agent_heartbeat_topic", "fleet/+/x", {"edge_agent_mqtt_url": "mqtt://127.0.0.1:1"},
     "wildcard")])
def test_bad_exposition_and_heartbeat_settings_stop_start_up(start_agent, tmp_path, key, value,
                                                             extra, phrase):
    """Refused by App.start as a configuration error (status 2, what `serve` exits with), the
    socket gone and nothing left running (start_agent's teardown checks)."""
    socket_path = tmp_path / f"{uuid.uuid4().hex[:8]}.sock"
    with pytest.raises(StartError) as info:
        start_agent(edge_agent_socket_path=str(socket_path), **{key: value}, **extra)
    assert info.value.status == 2, (key, value, str(info.value))
    message = str(info.value)
    assert "configuration error" in message and phrase in message, message
    assert not socket_path.exists()


# --- the counters themselves ------------------------------------------------------------

def test_histogram_buckets_counts_and_quantile():
    m = metrics.ModelMetrics()
    m.inputs_per_call = 2
    for seconds in (0.00001, 0.0003, 0.0003, 0.0004, 20.0):
        m.succeeded(time.perf_counter(), seconds, 1, 32, 16)
    m.failed(StatusCode.INVALID_ARGUMENT, after_success=True)
    m.failed(StatusCode.NOT_FOUND)
    message = pb.ModelMetrics()
    m.fill(message, counters=True)
    h = message.invoke_seconds
    assert h.count == 5 and h.bucket_counts[0] == 1 and h.bucket_counts[-1] == 1
    assert h.bucket_counts[metrics.LATENCY_BUCKETS.index(0.0005)] == 3
    assert 0.00025 < metrics.quantile(h, 0.5) <= 0.0005
    assert metrics.quantile(h, 1.0) == metrics.LATENCY_BUCKETS[-1]
    assert metrics.quantile(pb.Histogram(), 0.5) is None
    # One of the five turned out a failure after all: 4 OK, and the inputs of all five ran.
    assert by_code(message) == {"OK": 4, "INVALID_ARGUMENT": 1, "NOT_FOUND": 1}
    assert (message.shared_memory_inputs, message.inline_inputs) == (5, 5)
    assert (message.input_bytes, message.output_bytes) == (5 * 32, 5 * 16)


def test_capture_counters_and_last_error(tmp_path):
    """Accepted, delivered, backlog, journal bytes; a destination that cannot be written
    shows as the last error while the capture stays in the backlog."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the captures' directory should be")
    config = config_module.from_mapping({
        "edge_agent_state_dir": str(tmp_path / "state"),
        "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "out"),
        "sagemaker_edge_core_capture_data_push_period_seconds": 0.05,
        "edge_agent_capture_retry_max_seconds": 0.05, "edge_agent_capture_flush_seconds": 0.5})
    service = AgentService(config)
    try:
        for _ in range(3):
            service.capture_data(capture_request())
        c = wait_for(lambda: (m := service.get_metrics().capture).delivered == 3 and m,
                     what="three captures delivered")
        assert (c.accepted, c.failed, c.backlog, c.last_error) == (3, 0, 0, "")
        assert c.journal_bytes > 0
    finally:
        service.close()
    failing = AgentService(config.replace(
        sagemaker_edge_core_capture_data_disk_path=str(blocked / "out"),
        edge_agent_state_dir=str(tmp_path / "state2"),
        # Never "failed for good" while the test looks: with 5 tries 0-50 ms apart, the batch
        # could leave the backlog before the first look on a busy machine.
        edge_agent_capture_max_attempts=1_000_000))
    try:
        failing.capture_data(capture_request())
        c = wait_for(lambda: (m := failing.get_metrics().capture).last_error and m,
                     what="the delivery error to show")
        assert c.accepted == 1 and c.backlog == 1 and c.delivered == 0
        assert c.last_error_unix_seconds > 0 and "capture batch" in c.last_error
    finally:
        failing.close()


def test_package_name_and_version_are_reported(start_agent, tmp_path):
    import package_cases as cases

    signer = cases.Signer(tmp_path / "keys")
    package = signer.package(tmp_path / "demo.tar.gz")
    agent = start_agent(sagemaker_edge_core_root_certs_path=str(signer.trust),
                        edge_agent_allow_unsigned_models=False)
    with agent.client() as client:
        client.load_model("demo", str(package))
        [model] = client.get_metrics().models
    assert (model.package_name, model.package_version) == ("demo", "1.0.0")


def test_idle_scrapers_beyond_the_limit_are_turned_away_and_scrapes_go_on(start_agent):
    """Connections that say nothing hold at most MAX_CONCURRENT_SCRAPES threads; the ones
    beyond are closed at once; once they go, a scrape is answered."""
    from edge_agent.observe.exposition import MAX_CONCURRENT_SCRAPES

    port = free_port()
    agent = start_agent(edge_agent_metrics_listen=f"127.0.0.1:{port}")
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONCURRENT_SCRAPES)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert extra.recv(1) == b""  # closed by the agent, not left waiting
        extra.close()
    finally:
        for s in idle:
            s.close()

    def scraped():
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/metrics")
            return b"edge_agent_uptime_seconds" in connection.getresponse().read()
        except (ConnectionError, http.client.HTTPException):
            return False  # the idle ones' threads are still letting go of their places
    wait_for(scraped, what="a scrape to be answered")
    assert agent.alive()


def test_another_user_cannot_read_a_unix_metrics_socket(start_agent, tmp_path):
    """The metrics socket gets the agent socket's mode: 0660 root:root keeps nobody out. The
    other user is a forked child (privileges.fork_as), not setpriv + exec, so it needs
    nothing it cannot reach: the interpreter may live under /root."""
    from privileges import NOBODY, fork_as

    if os.getuid() != 0:
        pytest.skip("needs root to act as a second user")
    public = tempfile.mkdtemp(prefix="edge-agent-metrics-")
    os.chmod(public, 0o755)
    try:
        path = os.path.join(public, "metrics.sock")
        start_agent(edge_agent_metrics_listen=path)

        def probe() -> int:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
            except PermissionError:
                os.write(1, b"denied\n")
            else:
                os.write(1, b"connected\n")
            return 0

        log = os.path.join(public, "probe.log")
        pid = fork_as(NOBODY, NOBODY, probe, log)
        _, status = os.waitpid(pid, 0)
        output = open(log).read()
        assert os.waitstatus_to_exitcode(status) == 0, output
        assert output.strip() == "denied", output
        assert _get_over_unix(path)[0] == 200  # its owner still reads it
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_get_metrics_over_grpc_counts_the_grpc_front(start_agent, tmp_path, model_files):
    grpc = pytest.importorskip("grpc")
    from edge_agent.api.rpcs import GRPC_SERVICE as SERVICE

    path = tmp_path / "grpc.sock"
    agent = start_agent(edge_agent_grpc_socket_path=str(path))
    with grpc.insecure_channel(f"unix://{path}") as channel:
        def call(method, request, response_type):
            return channel.unary_unary(f"/{SERVICE}/{method}",
                                       request_serializer=type(request).SerializeToString,
                                       response_deserializer=response_type.FromString)(request)
        call("LoadModel", pb.LoadModelRequest(name="add", url=str(model_files["add"])),
             pb.LoadModelResponse)
        request = pb.PredictRequest(name="add")
        from wire import add_array
        for name, array in ADD_INPUTS.items():
            add_array(request.tensors, name, array)
        call("Predict", request, pb.PredictResponse)
        with pytest.raises(grpc.RpcError) as missing:
            call("Predict", pb.PredictRequest(name="absent"), pb.PredictResponse)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        m = call("GetMetrics", pb.GetMetricsRequest(), pb.GetMetricsResponse)
    assert by_code(m.models[0]) == {"OK": 1}
    assert calls(m, "grpc") == {("LoadModel", "OK"): 1, ("Predict", "OK"): 1,
                                ("Predict", "NOT_FOUND"): 1}
    assert agent.alive()


def test_default_topic_and_client_id_come_from_the_device():
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
    from edge_agent.observe import heartbeat

    config = config_module.from_mapping({
        "sagemaker_edge_core_device_name": "cam/1+#", "sagemaker_edge_core_device_fleet_name": "",
        "edge_agent_mqtt_url": "mqtt://127.0.0.1"})
    assert heartbeat.topic(config) == "edge-agent/default/cam_1__/heartbeat"
    assert heartbeat.client_id(config) == "cam/1+#"
    assert heartbeat.topic(config.replace(edge_agent_heartbeat_topic="t/x")) == "t/x"


def test_garbage_to_the_prometheus_listener_gets_an_error_and_scrapes_go_on(start_agent):
    port = free_port()
    agent = start_agent(edge_agent_metrics_listen=f"127.0.0.1:{port}")
    for garbage in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET " + b"A" * 100000 + b" HTTP/1.1\r\n\r\n",
                    b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(garbage)
            answer = b""
            try:
                # The listener may have answered and closed already (a line too long).
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:  # ENOTCONN, or a reset for the bytes it never read
                pass
        # An error page (400, 414, 501: with or without a status line), never metrics.
        assert b" 200 " not in answer[:16] and b"edge_agent" not in answer, answer[:200]
        assert answer == b"" or b"Error code" in answer, answer[:200]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    assert connection.getresponse().status == 200
    assert agent.alive()


def test_counts_are_exact_under_concurrent_predictions_and_snapshots(tmp_path, model_files):
    """Threads released together predict on two models while another takes snapshots: the
    final counts are exact, and the counts the snapshots saw on the way never went back."""
    from wire import add_array

    config = config_module.from_mapping({"edge_agent_state_dir": str(tmp_path / "state"),
                                         "edge_agent_allow_unsigned_models": True})
    service = AgentService(config)
    try:
        for name in ("add-1", "add-2"):
            service.load_model(pb.LoadModelRequest(name=name, url=str(model_files["add"])))
        workers, calls = 4, 300
        barrier = threading.Barrier(workers + 1)
        done = threading.Event()

        def predict(name):
            def work():
                request = pb.PredictRequest(name=name)
                for key, array in ADD_INPUTS.items():
                    add_array(request.tensors, key, array)
                barrier.wait()
                for _ in range(calls):
                    service.predict(request)
            return work

        def snapshots():
            seen = {"add-1": 0, "add-2": 0}
            barrier.wait()
            while not done.is_set():
                for model in service.get_metrics().models:
                    count = model.invoke_seconds.count
                    assert seen[model.name] <= count <= workers // 2 * calls  # never goes back
                    seen[model.name] = count

        def predictors():
            try:
                run_concurrently(*[predict(n) for n in ("add-1", "add-2") * (workers // 2)])
            finally:
                done.set()

        run_concurrently(predictors, snapshots)
        final = service.get_metrics()
        for model in final.models:
            assert by_code(model) == {"OK": workers // 2 * calls}
            assert model.predict_seconds.count == model.invoke_seconds.count == workers // 2 * calls
            assert model.input_bytes == workers // 2 * calls * 32
    finally:
        service.close()
