"""The model repository with a real agent (App in a thread) and real signed packages: models
served at start, new versions swapped in, restarts, rollbacks, pins, and the interplay with
applications' own LoadModel/UnLoadModel (docs/MODEL_LIFECYCLE.md)."""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from lifecycle_helpers import X, Lab, offset_of, states

from edge_agent.errors import AgentError, StatusCode
from edge_agent.shm_client import SysVSegment
from edge_agent.tools import model_builder


@pytest.fixture
def lab(tmp_path) -> Lab:
    return Lab(tmp_path / "lab")


def test_a_repository_model_serves_from_start(lab, start_agent, tmp_path):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        model = client.describe_model("m")
        assert (model.source, model.state, model.version) == ("repository", "serving", "1.0")
        listed = states(client)["m"]
        assert listed.key_id == json.loads(
            (lab.repository / "m" / os.listdir(lab.repository / "m")[0] / "manifest.sig")
            .read_text())["key_id"]
        assert [(v.version, v.state) for v in listed.versions] == [("1.0", "serving")]


def test_a_new_version_is_swapped_in_on_rescan_and_an_archive_works(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0", archive=True)
    lab.publish("m", "1.5")  # lower than 2.0: never served
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 2.0
        assert client.describe_model("m").version == "2.0"


def test_a_prerelease_serves_only_when_pinned(lab, start_agent):
    lab.publish("m", "1.0")
    lab.publish("m", "2.0.0-rc1", offset=7)
    agent = start_agent(**lab.settings(edge_agent_model_pins={}))
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0
    agent.stop()
    agent = start_agent(workdir=agent.workdir, **lab.settings(
        edge_agent_model_pins={"m": "2.0.0-rc1"}))
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 7.0
        assert states(client)["m"].pinned_version == "2.0.0-rc1"


def test_a_restart_restores_what_served_even_once_the_package_is_gone(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "3.0")
    with agent.client() as client:
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 3.0
    agent.stop()
    lab.clear("m")  # removing packages never downgrades: the agent serves its own copy
    agent = start_agent(workdir=agent.workdir, **lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 3.0
    # The restart proved nothing again: the same bytes' check is remembered.
    restarted = agent.log().split("stopped")[-1]
    assert "the same bytes were checked before" in restarted
    assert "checked in a separate process" not in restarted


def test_rollback_pins_across_a_restart_until_unpinned(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0")
    with agent.client() as client:
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 2.0
        model = client.rollback("m")
        assert (model.version, model.pinned_version) == ("1.0", "1.0")
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        client.rescan()  # a pin holds against the higher version
        assert offset_of(client.predict("m", {"x": X})) == 1.0
    agent.stop()
    agent = start_agent(workdir=agent.workdir, **lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        assert client.unpin("m").version == "2.0"
        assert offset_of(client.predict("m", {"x": X})) == 2.0
        assert client.rollback("m", "1").version == "1.0"
        with pytest.raises(AgentError) as refused:
            client.rollback("m", "9.9")
        assert refused.value.code == StatusCode.FAILED_PRECONDITION
        assert "not held" in refused.value.message


def test_applications_cannot_load_or_unload_a_repository_name(lab, start_agent, tmp_path):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    path = model_builder.offset_model(5).write(tmp_path / "other.tflite")
    with agent.client() as client:
        with pytest.raises(AgentError) as loaded:
            client.load_model("m", str(path))
        assert loaded.value.code == StatusCode.ALREADY_EXISTS
        assert "model repository" in loaded.value.message
        with pytest.raises(AgentError) as unloaded:
            client.unload_model("m")
        assert unloaded.value.code == StatusCode.FAILED_PRECONDITION
        assert "model repository" in unloaded.value.message
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        # An application's own model works as before, and is its own.
        client.load_model("app", str(path))
        assert client.describe_model("app").source == "application"


def test_a_name_an_application_loaded_first_is_blocked_until_it_unloads(lab, start_agent, tmp_path):
    agent = start_agent(**lab.settings())
    path = model_builder.offset_model(5).write(tmp_path / "own.tflite")
    with agent.client() as client:
        client.load_model("m", str(path))
        lab.publish("m", "1.0")
        client.rescan()
        listed = states(client)["m"]
        assert (listed.source, listed.state) == ("application", "serving")
        assert "an application loaded a model named 'm'" in listed.state_reason
        assert [v.version for v in listed.versions] == ["1.0"]
        assert offset_of(client.predict("m", {"x": X})) == 5.0
        client.unload_model("m")
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        assert states(client)["m"].state == "serving"


def test_a_folder_that_names_another_model_and_a_conflict_are_refused(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.move_in(lab.build("other", "2.0"), "m")
    with agent.client() as client:
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        reasons = [v.reason for v in states(client)["m"].versions if v.state == "failed"]
        assert any("names model 'other'" in r for r in reasons), reasons
        lab.publish("m", "1.0", offset=9)  # same version, other bytes
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        reasons = [v.reason for v in states(client)["m"].versions if v.state == "failed"]
        assert any("conflict" in r for r in reasons), reasons


def test_half_copied_and_temporary_entries_are_never_read(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    folder = lab.repository / "m"
    package = lab.build("m", "2.0", archive=True)
    data = package.read_bytes()
    (folder / ".m-2.0.tar.gz").write_bytes(data[: len(data) // 2])  # a copy in progress
    (folder / "m-2.0.tar.gz.partial-123").write_bytes(data[: len(data) // 3])
    with agent.client() as client:
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        assert [v.state for v in states(client)["m"].versions] == ["serving"]
        os.rename(folder / ".m-2.0.tar.gz", folder / "m-2.0.tar.gz.tmp")
        package.rename(folder / "m-2.0.tar.gz")  # the copy done, moved in whole
        client.rescan()
        assert offset_of(client.predict("m", {"x": X})) == 2.0


def test_the_repository_is_watched_without_a_rescan(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings(edge_agent_model_repository_poll_seconds=0.05))
    lab.publish("m", "2.0")
    with agent.client() as client:
        for _ in range(2000):
            if client.describe_model("m").version == "2.0":
                break
            threading.Event().wait(0.01)
        assert offset_of(client.predict("m", {"x": X})) == 2.0


def test_a_package_moved_in_is_noticed_without_polling(lab, start_agent):
    from edge_agent.models.lifecycle.watch import Waker

    probe = Waker()
    notified = probe.notified
    probe.close()
    if not notified:
        pytest.skip("no inotify on this machine")
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())  # polls once an hour
    lab.publish("n", "1.0", offset=4)  # a new folder
    lab.publish("m", "2.0")
    with agent.client() as client:
        for _ in range(3000):  # a bound for a broken watch, not a timing assumption
            listed = states(client)
            if listed["m"].version == "2.0" and "n" in listed and listed["n"].version == "1.0":
                break
            threading.Event().wait(0.01)
        assert offset_of(client.predict("m", {"x": X})) == 2.0
        assert offset_of(client.predict("n", {"x": X})) == 4.0


def test_state_is_recorded_in_the_state_directory(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    state = json.loads((agent.workdir / "state" / "models" / "state.json").read_text())
    assert state["serving"]["m"]["version"] == "1.0"
    copies = os.listdir(agent.workdir / "state" / "models" / "m")
    assert len(copies) == 1 and copies[0].startswith("1.0~")


def _predict_continuously(agent, stop: threading.Event, seen: list, errors: list, shm: bool):
    try:
        with agent.client() as client:
            if shm:
                segment = SysVSegment.create(64)
                try:
                    source, slot = segment.write(X), segment.slot(np.float32, (1, 4), offset=32)
                    while not stop.is_set():
                        client.predict("m", {"x": source}, outputs=[slot])
                        seen.append(offset_of({"y": segment.read(slot)}))
                finally:
                    segment.free()
            else:
                while not stop.is_set():
                    seen.append(offset_of(client.predict("m", {"x": X})))
    except BaseException as e:  # noqa: BLE001 (reported by the test)
        errors.append(e)


def swaps_under_load(lab, start_agent, versions: int) -> None:
    lab.publish("m", "1")
    agent = start_agent(**lab.settings())
    stop = threading.Event()
    seen_inline: list = []
    seen_shared: list = []
    errors: list = []
    threads = [threading.Thread(target=_predict_continuously,
                                args=(agent, stop, seen, errors, shm))
               for seen, shm in ((seen_inline, False), (seen_shared, True))]
    for t in threads:
        t.start()
    try:
        with agent.client() as client:
            for version in range(2, versions + 2):
                lab.publish("m", str(version))
                before = len(seen_inline) + len(seen_shared)
                client.rescan()
                assert client.describe_model("m").version == str(version)
                # Both clients answered across this swap (a bounded wait on their progress).
                for _ in range(10000):
                    if len(seen_inline) + len(seen_shared) > before + 2 or errors:
                        break
                    threading.Event().wait(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen_inline and seen_shared
    for seen in (seen_inline, seen_shared):
        assert set(seen) <= set(map(float, range(1, versions + 2)))
        assert seen == sorted(seen), "a reply from an older version after a newer one"
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == versions + 1
        assert len(states(client)["m"].versions) <= 2  # edge_agent_model_versions_kept


def test_swaps_under_load_lose_no_call(lab, start_agent):
    swaps_under_load(lab, start_agent, versions=5)


@pytest.mark.native_only
@pytest.mark.skipif(not os.environ.get("EDGE_AGENT_FULL_SCENARIOS"),
                    reason="the full scenario: make test-lifecycle-full")
def test_twenty_swaps_under_load_lose_no_call(lab, start_agent):
    swaps_under_load(lab, start_agent, versions=20)


def test_metrics_say_each_models_source_state_and_swaps(lab, start_agent, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from edge_agent.observe import metrics

    lab.publish("m", "1.0")
    textfile = tmp_path / "agent.prom"
    agent = start_agent(**lab.settings(edge_agent_metrics_textfile=str(textfile),
                                       edge_agent_metrics_textfile_period_seconds=3600))
    lab.publish("m", "2.0")
    lab.publish("m", "3.0", model=model_builder.offset_model(3, shape=(1, 8)))  # refused
    path = model_builder.offset_model(5).write(tmp_path / "own.tflite")
    with agent.client() as client:
        client.rescan()
        client.load_model("app", str(path))
        document = metrics.document(client.get_metrics())
    states_by_name = {s["name"]: s for s in document["model_states"]}
    assert states_by_name["m"]["state"] == "serving"
    assert states_by_name["m"]["version"] == "2.0"
    assert states_by_name["m"]["swaps"] == {"ok": 2, "failed": 1, "waiting": 0}
    assert states_by_name["app"]["source"] == "application"
    assert {m["name"]: m["source"] for m in document["models"]} == {
        "m": "repository", "app": "application"}
    agent.stop()  # the textfile gets the final figures
    found = {}
    for family in text_string_to_metric_families(textfile.read_text()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert found[("edge_agent_model_state", (("model", "m"), ("source", "repository"),
                                             ("state", "serving")))] == 1
    assert found[("edge_agent_model_state", (("model", "m"), ("source", "repository"),
                                             ("state", "failed")))] == 0
    assert found[("edge_agent_model_swaps_total", (("model", "m"), ("result", "ok")))] == 2
    assert found[("edge_agent_model_swaps_total", (("model", "m"), ("result", "failed")))] == 1
    info = [labels for (name, labels) in found if name == "edge_agent_model_info"]
    assert (("delegate", "xnnpack"), ("model", "m"), ("package", "m"), ("source", "repository"),
            ("version", "2.0")) in info, info


def test_systemd_hears_ready_only_after_the_models_loaded(lab, start_agent, notify_socket,
                                                           monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    lab.publish("m", "1.0")
    lab.publish("n", "1.0")
    start_agent(**lab.settings())
    messages = []
    while not any(m.startswith("READY=1") for m in messages):
        messages.append(sock.recv(4096).decode())
    extends = [m for m in messages if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert len(extends) == 2  # one per model, each before READY=1
    assert messages[-1].startswith("READY=1")


def test_rescan_and_rollback_over_grpc(lab, start_agent, tmp_path, public_dir):
    import grpc

    from edge_agent import agent_pb2 as pb
    from edge_agent.api.rpcs import GRPC_SERVICE

    lab.publish("m", "1.0")
    path = tmp_path / "grpc.sock"
    agent = start_agent(**lab.settings(edge_agent_grpc_socket_path=str(path)))
    lab.publish("m", "2.0")
    with grpc.insecure_channel(f"unix://{path}") as channel:
        def call(name, request, response):
            return channel.unary_unary(f"/{GRPC_SERVICE}/{name}",
                                       request_serializer=request.SerializeToString,
                                       response_deserializer=response.FromString)(request)
        rescanned = call("Rescan", pb.RescanRequest(), pb.RescanResponse)
        assert [(m.name, m.version) for m in rescanned.models] == [("m", "2.0")]
        rolled = call("Rollback", pb.RollbackRequest(name="m"), pb.RollbackResponse)
        assert (rolled.model.version, rolled.model.pinned_version) == ("1.0", "1.0")
        other = model_builder.offset_model(5).write(public_dir / "other.tflite")
        os.chmod(other, 0o644)
        with pytest.raises(grpc.RpcError) as refused:
            call("LoadModel", pb.LoadModelRequest(name="m", url=str(other)), pb.LoadModelResponse)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "model repository" in refused.value.details()
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0


def test_the_command_line_lists_rescans_rolls_back_and_unpins(lab, start_agent):
    import subprocess
    import sys

    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0")

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "edge_agent", "client", "--socket",
                               agent.socket_path, *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert cli("rescan").startswith("m  2.0  repository  serving  since ")
    assert "m: 1.0 serves, pinned until `edge-agent client unpin m`" in cli("rollback", "m")
    [model] = json.loads(cli("list", "--json"))["models"]
    assert (model["version"], model["pinned"], model["source"], model["state"]) == (
        "1.0", "1.0", "repository", "serving")
    assert [(v["version"], v["state"], v["pinned"]) for v in model["versions"]] == [
        ("2.0", "held", False), ("1.0", "serving", True)]
    assert "2.0 serves" in cli("unpin", "m")
    assert cli("rollback", "m", "--to", "1").startswith("m: 1.0 serves")
    listed = cli("list")
    assert "m  1.0 (pinned 1.0)  repository  serving" in listed
    assert "  2.0  held" in listed and "  1.0  serving pinned" in listed


def test_a_state_file_that_is_not_understood_starts_from_the_copies(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0")
    with agent.client() as client:
        client.rescan()
    agent.stop()
    state = agent.workdir / "state" / "models" / "state.json"
    state.write_text(json.dumps({"pins": ["not", "an", "object"], "serving": 7}))
    agent = start_agent(workdir=agent.workdir, **lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 2.0
    assert "state.json is not understood" in agent.log()


def test_state_is_written_only_when_it_changes(lab, start_agent):
    """A scan that changes nothing writes nothing: the poll runs every few seconds for the
    agent's whole life, and each write of state.json costs two fsyncs of a board's flash."""
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    state = agent.workdir / "state" / "models" / "state.json"
    os.utime(state, ns=(0, 0))  # a write would make a new file, with the time of now

    with agent.client() as client:
        client.rescan()
        client.rescan()
        assert os.stat(state).st_mtime_ns == 0
        lab.publish("m", "2.0")
        client.rescan()
        assert os.stat(state).st_mtime_ns != 0


def test_a_state_directory_that_cannot_be_written_does_not_stop_the_start(lab, start_agent,
                                                                          monkeypatch):
    """A full disk: what served still serves after a restart (from the copies held), the
    record of it is written once the disk has room again."""
    import errno

    from edge_agent.models.lifecycle.store import Store

    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    agent.stop()
    lab.publish("m", "2.0")

    def full(self, state):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Store, "write_state", full)
    agent = start_agent(workdir=agent.workdir, **lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 2.0
        copies = sorted(os.listdir(agent.workdir / "state" / "models" / "m"))
        assert [c.split("~")[0] for c in copies] == ["1.0", "2.0"]  # none deleted unrecorded
        monkeypatch.undo()
        client.rescan()
    state = json.loads((agent.workdir / "state" / "models" / "state.json").read_text())
    assert state["serving"]["m"]["version"] == "2.0"


def test_a_rollback_to_what_is_no_version_is_an_invalid_argument(lab, start_agent):
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    with agent.client() as client:
        with pytest.raises(AgentError) as refused:
            client.rollback("m", "v1.0")
        assert refused.value.code == StatusCode.INVALID_ARGUMENT
        assert "without the leading 'v'" in refused.value.message
        assert offset_of(client.predict("m", {"x": X})) == 1.0


def test_a_recorded_pin_that_is_no_version_is_forgotten(lab, start_agent):
    """A state.json edited by hand (or by another build) with a pin that names no version:
    the name serves its best version rather than nothing."""
    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    agent.stop()
    state_path = agent.workdir / "state" / "models" / "state.json"
    state = json.loads(state_path.read_text())
    state["pins"] = {"m": "the good one"}
    state_path.write_text(json.dumps(state))
    agent = start_agent(workdir=agent.workdir, **lab.settings())
    with agent.client() as client:
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        assert states(client)["m"].pinned_version == ""


def test_a_rollback_on_a_full_disk_serves_and_says_ok(lab, start_agent, monkeypatch):
    """The swap is done: the record that could not be written is logged (and written once
    it can), not answered as an internal error."""
    import errno

    from edge_agent.models.lifecycle.store import Store

    lab.publish("m", "1.0")
    agent = start_agent(**lab.settings())
    lab.publish("m", "2.0")
    with agent.client() as client:
        client.rescan()

        def full(self, state):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(Store, "write_state", full)
        assert client.rollback("m").version == "1.0"
        assert offset_of(client.predict("m", {"x": X})) == 1.0
        assert client.unpin("m").version == "2.0"
        monkeypatch.undo()
        client.rescan()
    state = json.loads((agent.workdir / "state" / "models" / "state.json").read_text())
    assert state["serving"]["m"]["version"] == "2.0"
