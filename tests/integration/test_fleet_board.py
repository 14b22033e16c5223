"""Boards of a fleet (agents in threads, distinct device names) following signed deployment
documents in a real SeaweedFS: the baseline reaches every board, a stage updates exactly the
boards it selects, refused documents are reported and change nothing (docs/FLEET.md)."""
from __future__ import annotations

import pytest
from capture_helpers import wait_for
from fleet_helpers import Fleet
from lifecycle_helpers import X, offset_of

from edge_agent.fleet import document as d

pytestmark = pytest.mark.native_only


@pytest.fixture
def fleet(tmp_path, s3, s3_prefix, start_agent):
    # After start_agent: closed before it checks that the agents left no descriptor open.
    fleet = Fleet(tmp_path / "fleet", s3, s3_prefix)
    yield fleet
    fleet.client.close()


def serving(agent, name="m"):
    with agent.client() as client:
        try:
            return offset_of(client.predict(name, {"x": X}))
        except Exception:
            return None


def status_is(fleet, device, sequence, state, name="m"):
    status = fleet.status(device)
    return status is not None and status["sequence"] == sequence and \
        status["models"].get(name, {}).get("state") == state and status


def test_a_baseline_then_a_two_device_stage(fleet, start_agent):
    v1, v2 = fleet.upload("m", "1.0"), fleet.upload("m", "2.0")
    fleet.put(fleet.document({"m": v1}))
    devices = ["b-1", "b-2", "b-3"]
    agents = {n: start_agent(**fleet.settings(n)) for n in devices}
    for name, agent in agents.items():
        wait_for(lambda agent=agent: serving(agent) == 1.0, 60, 0.1, f"{name} serving 1.0")
        assert wait_for(lambda name=name: status_is(fleet, name, 1, "serving"), 30, 0.1, "status")
    fleet.put(fleet.document({"m": v1}, [d.Stage({"m": v2}, devices=("b-2",))]))
    wait_for(lambda: serving(agents["b-2"]) == 2.0, 60, 0.1, "b-2 serving 2.0")
    for name in ("b-1", "b-3"):  # read sequence 2 and kept the baseline
        wait_for(lambda name=name: status_is(fleet, name, 2, "serving"), 30, 0.1, f"{name} at 2")
        assert serving(agents[name]) == 1.0
    status = wait_for(lambda: status_is(fleet, "b-2", 2, "serving"), 30, 0.1, "b-2 status")
    assert status["models"]["m"]["version"] == "2.0"


def test_refused_documents_are_reported_and_change_nothing(fleet, start_agent):
    v1, v2 = fleet.upload("m", "1.0"), fleet.upload("m", "2.0")
    fleet.sequence = 4
    applied = fleet.document({"m": v1})
    fleet.put(applied)
    agent = start_agent(**fleet.settings("b-1"))
    wait_for(lambda: status_is(fleet, "b-1", 5, "serving"), 60, 0.1, "sequence 5 applied")
    cases = []
    # another key, the same sequence with other bytes, a replayed lower sequence, another fleet
    fleet.sequence = 5
    cases.append((fleet.put(fleet.document({"m": v2}), key=fleet.lab.signer.stranger), "not in"))
    fleet.sequence = 4
    cases.append((fleet.put(fleet.document({"m": v2})), "other contents"))
    fleet.sequence = 2
    cases.append((fleet.put(fleet.document({"m": v2})), "lower than the applied 5"))
    cases.append((d.sign(fleet.document({"m": v2}, fleet="yard", sequence=8), fleet.key),
                  "fleet 'yard'"))
    # each in turn: the status reports the refusal, the board keeps 1.0
    for data, reason in cases:
        fleet.client.put_object(f"{fleet.prefix}/fleets/plant/deployment.json", data)
        status = wait_for(lambda reason=reason: (s := fleet.status("b-1")) and s["refused"] and
                          reason in s["refused"][0]["reason"] and s, 30, 0.1, reason)
        assert status["sequence"] == 5
        assert serving(agent) == 1.0
    # a device document of another device, put under this device's name
    other = fleet.document({"m": v2}, device="b-9")
    fleet.client.put_object(f"{fleet.prefix}/devices/b-1/deployment.json", d.sign(other, fleet.key))
    wait_for(lambda: any("device 'b-9'" in r["reason"] for r in fleet.status("b-1")["refused"]),
             30, 0.1, "another device's document refused")
    # a deleted document is not a command
    fleet.client.send("DELETE", f"{fleet.prefix}/devices/b-1/deployment.json")
    fleet.client.put_object(f"{fleet.prefix}/fleets/plant/deployment.json", d.sign(applied, fleet.key))
    wait_for(lambda: fleet.status("b-1")["refused"] == [], 30, 0.1, "no refusal left")
    assert serving(agent) == 1.0


def test_a_model_no_longer_named_is_unloaded_once_the_others_serve(fleet, start_agent):
    m1, m2, n1 = fleet.upload("m", "1.0"), fleet.upload("m", "2.0"), fleet.upload("n", "1.0")
    fleet.put(fleet.document({"m": m1, "n": n1}))
    agent = start_agent(**fleet.settings("b-1"))
    wait_for(lambda: serving(agent, "n") == 1.0 and serving(agent) == 1.0, 60, 0.1, "m and n")
    fleet.put(fleet.document({"m": m2}))
    wait_for(lambda: serving(agent) == 2.0, 60, 0.1, "m 2.0")
    wait_for(lambda: serving(agent, "n") is None, 30, 0.1, "n unloaded")
    status = wait_for(lambda: status_is(fleet, "b-1", 2, "serving"), 30, 0.1, "status")
    assert set(status["models"]) == {"m"}
    with agent.client() as client:  # the name is free for applications again
        assert "n" not in {m.name for m in client.model_states()}


def test_an_expired_document_is_reported_stale_and_changes_nothing(fleet, start_agent):
    import time

    v1, v2 = fleet.upload("m", "1.0"), fleet.upload("m", "2.0")
    fleet.put(fleet.document({"m": v1}))
    agent = start_agent(**fleet.settings("b-1"))
    wait_for(lambda: status_is(fleet, "b-1", 1, "serving"), 60, 0.1, "sequence 1")
    fleet.put(fleet.document({"m": v2}, expires=int(time.time()) - 1))
    status = wait_for(lambda: (s := fleet.status("b-1")) and s["stale"] and s, 30, 0.1, "stale")
    assert status["sequence"] == 1 and "expired" in status["stale"]
    assert status["models"]["m"]["state"] == "stale"
    assert serving(agent) == 1.0



@pytest.mark.parametrize("change, message", [
    ({"edge_agent_deployment_trust": "/nonexistent"}, "edge_agent_deployment_trust '/nonexistent'"),
    ({"edge_agent_s3_access_key_id": ""}, "needs credentials for the bucket"),
])
def test_a_deployment_that_cannot_work_stops_start_up(fleet, start_agent, monkeypatch, change,
                                                      message):
    from edge_agent.app.root import StartError

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(StartError) as info:
        start_agent(**fleet.settings("b-1", **change))
    assert info.value.status == 2 and message in str(info.value)
