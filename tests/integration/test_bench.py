"""`edge-agent bench`: every figure is there with sane types (never judged by value: a benchmark
prints figures, tests do not time), and a section whose dependency is missing is skipped with
its reason, the rest still measured.

The tool starts agents of its own (processes: the C client and the grpcio server need a real
socket to another process); 20 calls a round keep it short.
"""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from edge_agent.app.cli import main
from edge_agent.tools import bench, model_builder

ALWAYS = {"agent_client_tiny_us", "idle_rss_mb", "idle_pss_mb", "idle_uss_mb",
          "peak_16mib_x_frame"}
NEEDS_C = {"server_cost_tiny_us", "server_cost_image_us", "requests_per_s_one_client_tiny",
           "requests_per_s_4_clients_tiny", "requests_per_s_one_client_compute",
           "requests_per_s_2_clients_compute"}
NEEDS_GRPCIO = {"grpcio_tiny_us"}


def run_bench(capsys, *args: str) -> str:
    assert main(["bench", "--iterations", "20", "--rounds", "1", *args]) == 0
    return capsys.readouterr().out


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_row(key: str, row: dict) -> None:
    assert set(row) == {"value", "unit", "floor", "ratio", "target", "met"}, key
    assert is_number(row["value"]) and row["value"] > 0, (key, row)
    assert row["unit"] in {"us", "req/s", "MB", "x"}, (key, row)
    for part in ("floor", "ratio"):
        assert row[part] is None or (is_number(row[part]) and row[part] > 0), (key, row)
    assert (row["floor"] is None) == (row["ratio"] is None), (key, row)
    if row["target"] is None:
        assert row["met"] is None, (key, row)
    else:
        assert row["target"].split()[0] in {"<=", ">="} and isinstance(row["met"], bool), (key, row)


@pytest.mark.native_only
def test_every_figure_is_there_with_its_floor_and_target(capsys):
    report = json.loads(run_bench(capsys, "--json"))
    if "all" in report["skipped"]:
        pytest.skip(report["skipped"]["all"])
    expected = set(ALWAYS)
    if "server_cost" not in report["skipped"]:
        expected |= NEEDS_C
    if "grpcio" not in report["skipped"]:
        expected |= NEEDS_GRPCIO
    assert set(report["figures"]) == expected
    for key, row in report["figures"].items():
        check_row(key, row)
    for key in ("load_average_start", "load_average_end"):
        assert len(report[key]) == 3 and all(is_number(x) for x in report[key])
    assert isinstance(report["runtime"], str)
    assert report["iterations"] == 20 and report["rounds"] == 1
    floors = report["floors"]
    for name in ("tiny", "image"):
        assert is_number(floors[f"in_process_{name}_us"])
        request, reply = floors[f"frame_bytes_{name}"]
        assert request > 16 and reply > 16
        assert ("server_cost" in report["skipped"]) != is_number(floors.get(f"c_pingpong_{name}_us"))
    for key, values in report["round_samples"].items():
        assert len(values) == 1 and all(is_number(v) for v in values), key
    assert is_number(floors["parallel_ceiling_compute"]) and floors["parallel_ceiling_compute"] > 0
    # The image frame carries the 602112-byte input each way.
    assert min(floors["frame_bytes_image"]) > 602112
    if "server_cost" not in report["skipped"]:
        for key in ("server_cost_tiny_us", "server_cost_image_us", "agent_client_tiny_us"):
            assert report["figures"][key]["target"] is not None
            assert report["figures"][key]["floor"] is not None


@pytest.mark.native_only
def test_without_the_c_program_its_sections_are_skipped_with_the_reason(capsys, tmp_path):
    missing = str(tmp_path / "no-frame-bench")
    report = json.loads(run_bench(capsys, "--json", "--c-bench", missing))
    if "all" in report["skipped"]:
        pytest.skip(report["skipped"]["all"])
    for section in ("server_cost", "c_floor", "throughput"):
        assert report["skipped"][section] == f"{missing} is not executable"
    assert not NEEDS_C & set(report["figures"])
    assert ALWAYS <= set(report["figures"])
    # Without the C floor the end-to-end figure stands alone: no floor, no ratio, no verdict.
    row = report["figures"]["agent_client_tiny_us"]
    assert row["floor"] is None and row["ratio"] is None and row["met"] is None


@pytest.mark.native_only
def test_the_table_names_each_skipped_section(capsys, tmp_path):
    out = run_bench(capsys, "--c-bench", str(tmp_path / "none"))
    if out.startswith("skipped: "):
        pytest.skip(out)
    assert "load average" in out
    assert f"skipped server_cost: {tmp_path / 'none'} is not executable" in out
    assert "end to end, AgentClient.predict tiny" in out


def test_a_ratio_is_held_to_its_target_in_the_right_direction():
    cost = bench.figure(30.0, "us", 20.0, target="server_cost_tiny")
    assert cost["ratio"] == 1.5 and cost["target"] == "<= 1.3" and cost["met"] is False
    gain = bench.figure(3000.0, "req/s", 1000.0, target="throughput_four_clients_tiny")
    assert gain["ratio"] == 3.0 and gain["target"] == ">= 1.5" and gain["met"] is True
    # A figure without a floor is held to the target by its value (megabytes, multiples).
    assert bench.figure(40.0, "MB", target="idle_rss_mb")["met"] is True
    assert bench.figure(50.0, "MB", target="idle_rss_mb")["met"] is False


def built_frame_bench(tmp_path) -> str:
    program, missing = bench.frame_bench(str(tmp_path), None)
    if program is None:
        pytest.skip(missing)
    return program


def test_frame_bench_stops_at_an_error_reply_with_the_agents_message(tmp_path):
    """A replayed frame the agent refuses is no figure: frame_bench exits 1 with the status and
    message, and the bench reports that rather than a time."""
    program = built_frame_bench(tmp_path)
    frame = tmp_path / "nope.frame"
    frame.write_bytes(bench.request_frame("nope", model_builder.tiny_model().sample_inputs())[1])
    agent, path = bench.start_agent(str(tmp_path), 1)
    try:
        with pytest.raises(RuntimeError, match=r"status 5: .*nope"):
            bench.run_c(program, "replay", path, 5, str(frame))
    finally:
        agent.terminate()
        agent.wait(10)


def test_frame_bench_refuses_bad_arguments_and_a_missing_agent(tmp_path):
    program = built_frame_bench(tmp_path)
    for args in (["pingpong", "0", "10", "5"], ["replay", "x", "5"], ["nothing"]):
        run = subprocess.run([program, *args], capture_output=True, text=True)
        assert run.returncode == 2 and "usage:" in run.stderr, args
    frame = tmp_path / "f.frame"
    frame.write_bytes(b"EA")
    with pytest.raises(RuntimeError, match="connect"):
        bench.run_c(program, "replay", str(tmp_path / "no-agent.sock"), 5, str(frame))
    with pytest.raises(RuntimeError, match="cannot read"):
        bench.run_c(program, "replay", str(tmp_path / "no-agent.sock"), 5, str(tmp_path / "none"))
    # The floor itself: the sizes it was given, each way, every round trip.
    figures = bench.run_c(program, "pingpong", 100, 5000, 50)
    assert figures["calls"] == 50 and 0 < figures["p50_us"] <= figures["p99_us"]
