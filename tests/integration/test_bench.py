"""`edge-agent bench`: every figure is there with sane types (never judged by value: a benchmark
prints figures, tests do not time), and a section whose dependency is missing is skipped with
its reason, the rest still measured.

The tool starts agents of its own (processes: the C client and the grpcio server need a real
socket to another process); 20 calls a round keep it short.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess

import pytest

from edge_agent.app.cli import main
from edge_agent.client import AgentClient
from edge_agent.tools import bench, model_builder
from edge_agent.tools.launch import agent_command

ALWAYS = {"agent_client_tiny_us", "idle_rss_mb", "idle_pss_mb", "idle_uss_mb",
          "peak_16mib_x_frame"}
# The agent's model-check helper (a pre-forked child), measured apart.
HELPER = {"helper_idle_rss_mb", "helper_idle_pss_mb", "helper_idle_uss_mb"}
# Rows timed against the agent (or the grpcio server): what each request cost it is beside them.
TIMED = {"us", "req/s"}
LATENCY = {"server_cost_tiny_us", "server_cost_image_us", "agent_client_tiny_us",
           "grpcio_tiny_us"}
NEEDS_C = {"server_cost_tiny_us", "server_cost_image_us", "requests_per_s_one_client_tiny",
           "requests_per_s_4_clients_tiny", "requests_per_s_one_client_compute",
           "requests_per_s_2_clients_compute"}
NEEDS_GRPCIO = {"grpcio_tiny_us"}


def run_bench(capsys, *args: str) -> str:
    assert main(["bench", "--iterations", "20", "--rounds", "1", *args]) == 0
    return capsys.readouterr().out


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_spread(cell: dict) -> None:
    assert set(cell) == {"min", "median", "max"} and all(is_number(v) for v in cell.values())
    assert cell["min"] <= cell["median"] <= cell["max"]


def check_row(key: str, row: dict) -> None:
    assert set(row) == set(bench.ROW_DEFAULTS), key
    assert is_number(row["value"]) and row["value"] > 0, (key, row)
    assert row["unit"] in {"us", "req/s", "MB", "x"}, (key, row)
    for part in ("floor", "ratio"):
        assert row[part] is None or (is_number(row[part]) and row[part] > 0), (key, row)
    # A ratio to a floor that moved too far is not reported: then only the floor is there.
    assert (row["floor"] is None) == (row["ratio"] is None) or row["unreliable"], (key, row)
    assert isinstance(row["unreliable"], bool) and isinstance(row["pinned"], bool), (key, row)
    if row["target"] is None or row["unreliable"]:
        assert row["met"] is None, (key, row)
    else:
        assert row["target"].split()[0] in {"<=", ">="} and isinstance(row["met"], bool), (key, row)
    if row["unit"] in TIMED:
        check_spread(row["spread"])
        # Per request: CPU in microseconds and context switches, never negative (a clock tick
        # of CPU is 10 ms, so a short round may well read 0).
        for part in ("agent_cpu_us", "voluntary_switches", "involuntary_switches"):
            assert is_number(row[part]) and row[part] >= 0, (key, part, row)
        threads = row["agent_threads_cpu_us"]  # None on a kernel without the sched files
        assert threads is None or (is_number(threads) and threads >= 0), (key, row)
    else:
        assert row["spread"] is None and row["agent_cpu_us"] is None, (key, row)
    if row["floor_moved"] is not None:
        assert is_number(row["floor_moved"]) and row["floor_moved"] >= 0, (key, row)
        check_spread(row["floor_spread"])
        assert row["unreliable"] == (row["floor_moved"] > bench.FLOOR_MOVE_LIMIT), (key, row)


@pytest.mark.native_only
def test_every_figure_is_there_with_its_floor_and_target(capsys, tmp_path):
    out = run_bench(capsys, "--json", str(tmp_path / "run.json"), "--label", "this tree")
    report = json.loads((tmp_path / "run.json").read_text())
    if "all" in report["skipped"]:
        pytest.skip(report["skipped"]["all"])
    # The table is printed too, with the agent's cost per request beside the figures.
    assert "edge-agent bench [this tree]" in out and "cpu/req" in out and "vcs/req" in out
    assert "model-check helper idle RSS" in out
    assert report["label"] == "this tree"
    expected = set(ALWAYS) | HELPER
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
    for key, costs in report["round_costs"].items():
        assert len(costs) == 1 and set(costs[0]) == set(bench.COST_PARTS), key
    agent = report["agent"]
    assert agent["source"].startswith("started by the bench") and agent["pid"] > 0
    assert len(agent["helper_pids"]) == 1 and agent["helper_pids"][0] != agent["pid"]
    assert "/proc/PID/stat" in agent["cpu"] and "/proc/PID/task" in agent["context_switches"]
    assert "/proc/PID/task/*/sched" in agent["threads_cpu"]
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    for key, row in report["figures"].items():
        assert row["pinned"] == (two_cpus and key in LATENCY), key
    if two_cpus:
        assert agent["latency_pinning"]["client_cpu"] != agent["latency_pinning"]["agent_cpu"]
    for key in ("in_process_tiny_us", "parallel_ceiling_compute"):
        check_spread(floors["spread"][key])
    assert is_number(floors["parallel_ceiling_compute"]) and floors["parallel_ceiling_compute"] > 0
    # The image frame carries the 602112-byte input each way.
    assert min(floors["frame_bytes_image"]) > 602112
    if "server_cost" not in report["skipped"]:
        for key in ("server_cost_tiny_us", "server_cost_image_us", "agent_client_tiny_us"):
            assert report["figures"][key]["target"] is not None
            assert report["figures"][key]["floor"] is not None


@pytest.mark.native_only
def test_without_the_c_program_its_sections_are_skipped_with_the_reason(capsys, tmp_path):
    """Also against an agent already running (--agent-socket): the bench finds its pid from
    the socket, measures it, and leaves it running with none of the bench's models; and beside
    it a second agent the bench starts (--compare-command), measured in the same rounds."""
    missing = str(tmp_path / "no-frame-bench")
    agent, path = bench.start_agent(str(tmp_path), 1)
    try:
        report = json.loads(run_bench(
            capsys, "--json", "--c-bench", missing, "--agent-socket", path,
            "--compare-command", shlex.join(agent_command()), "--compare-label", "B",
            "--no-pin"))
        assert agent.poll() is None
        if "all" in report["skipped"]:
            pytest.skip(report["skipped"]["all"])
        assert report["agent"]["pid"] == agent.pid
        assert report["agent"]["source"] == f"already running on {path}"
        assert report["agent"]["latency_pinning"].startswith("none: ")
        assert not any(row["pinned"] for row in report["figures"].values())
        compared = report["compared_agent"]
        assert compared["source"].startswith("started by the bench") and report["compared_label"] == "B"
        assert compared["pid"] not in (agent.pid, report["agent"]["pid"])
        assert set(report["compared_figures"]) == (ALWAYS | HELPER) - {"peak_16mib_x_frame"}
        for key, row in report["compared_figures"].items():
            check_row(key, row)
        assert len(report["round_samples"]["compared_agent_client_tiny_us"]) == 1
        for key, cell in report["side_by_side"].items():
            assert key in report["figures"] and is_number(cell["value_x"]), key
            assert cell["cpu_x"] is None or is_number(cell["cpu_x"]), key
        assert "agent_client_tiny_us" in report["side_by_side"]
        with AgentClient(path) as client:
            assert client.list_models() == []
    finally:
        agent.terminate()
        agent.wait(10)
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


def measured_run(floors: list[float]) -> bench.Run:
    """A Run holding one figure's rounds and its floor's, as agent_figures leaves them."""
    run = object.__new__(bench.Run)
    run.cpus = ({0}, {1})
    run.unpinned_servers = set()
    run.samples = {"server_cost_tiny_us": [30.0, 31.0, 29.0]}
    run.costs = {"server_cost_tiny_us": [
        {"agent_cpu_us": 20.0, "agent_threads_cpu_us": 18.0, "voluntary_switches": 1.0,
         "involuntary_switches": 0.0},
        {"agent_cpu_us": 10.0, "agent_threads_cpu_us": None, "voluntary_switches": 2.0,
         "involuntary_switches": 0.5},
        {"agent_cpu_us": 30.0, "agent_threads_cpu_us": 22.0, "voluntary_switches": 1.0,
         "involuntary_switches": 0.0}]}
    return run.row("server_cost_tiny_us", "us", floors, target="server_cost_tiny",
                   pinned=True)


def test_a_ratio_to_a_floor_that_moved_is_marked_unreliable_not_reported():
    steady = measured_run([20.0, 22.0, 25.0])  # moved 25%: the ratio stands
    assert steady["ratio"] == 30.0 / 22.0 and steady["met"] is False
    assert steady["unreliable"] is False and steady["floor_moved"] == 0.25
    assert steady["spread"] == {"min": 29.0, "median": 30.0, "max": 31.0}
    assert steady["floor_spread"] == {"min": 20.0, "median": 22.0, "max": 25.0}
    assert steady["agent_cpu_us"] == 20.0 and steady["voluntary_switches"] == 1.0
    assert steady["involuntary_switches"] == 0.0 and steady["pinned"] is True
    assert steady["agent_threads_cpu_us"] == 20.0  # of the rounds that could read it
    moved = measured_run([20.0, 22.0, 26.5])  # moved 32.5%
    assert moved["unreliable"] is True and moved["ratio"] is None and moved["met"] is None
    assert moved["floor"] == 22.0 and moved["value"] == 30.0
    check_row("server_cost_tiny_us", steady)
    check_row("server_cost_tiny_us", moved)


def test_the_agents_cost_is_read_from_proc(tmp_path):
    """usage() of a process that spends CPU grows (never shrinks); per_request divides the
    difference."""
    import sys
    spinner = subprocess.Popen([sys.executable, "-c", "import sys\nfor line in sys.stdin: "
                                "sum(range(200000)); print(line, end='', flush=True)"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        before = bench.usage(spinner.pid)
        for _ in range(20):  # each line answered: the work done, a wait on the next line
            spinner.stdin.write("x\n")
            spinner.stdin.flush()
            assert spinner.stdout.readline() == "x\n"
        after = bench.usage(spinner.pid)
    finally:
        spinner.kill()
        spinner.wait()
    assert after.cpu_s >= before.cpu_s and after.voluntary >= before.voluntary
    assert after.involuntary >= before.involuntary
    if after.threads_cpu_s is not None:  # the sums of real work, in nanoseconds
        assert before.threads_cpu_s is not None and after.threads_cpu_s > before.threads_cpu_s
    cost = bench.per_request(before, after, 20)
    assert cost["voluntary_switches"] == (after.voluntary - before.voluntary) / 20
    assert cost["agent_cpu_us"] >= 0 and cost["involuntary_switches"] >= 0


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
    # Pinned: both sides on a CPU this process may use.
    cpu = min(os.sched_getaffinity(0))
    figures = bench.run_c(program, "pingpong", 100, 5000, 50, cpu, cpu)
    assert figures["calls"] == 50
    with pytest.raises(RuntimeError, match="pingpong failed"):
        bench.run_c(program, "pingpong", 100, 100, 5, 100000, 0)


def test_replay_sync_reads_the_agent_around_the_timed_calls_only(tmp_path):
    program = built_frame_bench(tmp_path)
    model = model_builder.tiny_model()
    frame = tmp_path / "tiny.frame"
    frame.write_bytes(bench.request_frame("tiny", model.sample_inputs())[1])
    agent, path = bench.start_agent(str(tmp_path), 1)
    try:
        # The agent found by its socket (how --agent-socket finds it); its children (the
        # model-check helper, where it pre-forked one) are other processes.
        assert bench.socket_owner(path) == agent.pid
        assert agent.pid not in bench.children(agent.pid)
        with AgentClient(path) as client:
            client.load_model("tiny", str(model.write(tmp_path / "tiny.tflite")))
        figures = bench.replay_with_usage(program, [agent.pid], path, 30, [str(frame)] * 2,
                                          {min(os.sched_getaffinity(0))})
    finally:
        agent.terminate()
        agent.wait(10)
    assert figures["calls"] == 60
    # Both connections served; the agent's cost read over their timed calls.
    assert set(figures) >= {"p50_us", "requests_per_s", "agent_cpu_us", "voluntary_switches",
                            "involuntary_switches"}
    assert figures["voluntary_switches"] >= 0 and figures["agent_cpu_us"] >= 0
