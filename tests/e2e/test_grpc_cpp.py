"""The original agent.proto's C++ client, built here against Debian's gRPC++ as an
application of the original agent was, run unchanged against the gRPC front."""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from test_grpc_original import SUM, start_original_agent

ORIGINAL = Path(__file__).resolve().parent.parent / "original"
TOOLS = ("g++", "pkg-config", "protoc", "grpc_cpp_plugin")


@pytest.fixture(scope="session")
def cpp_client(tmp_path_factory) -> Path:
    """The client, compiled once per session (gRPC++ headers take a while)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the C++ gRPC client needs {', '.join(missing)} "
                    "(install/test-packages.txt: libgrpc++-dev, protobuf-compiler-grpc)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++", "protobuf"],
                           capture_output=True, text=True)
    if flags.returncode != 0:
        pytest.skip(f"pkg-config finds no grpc++/protobuf: {flags.stderr.strip()}")
    build = tmp_path_factory.mktemp("cpp-client")
    subprocess.run(["protoc", f"-I{ORIGINAL}", f"--cpp_out={build}", f"--grpc_out={build}",
                    f"--plugin=protoc-gen-grpc={shutil.which('grpc_cpp_plugin')}", "agent.proto"],
                   check=True)
    binary = build / "original_client"
    subprocess.run(["g++", "-std=c++17", "-O1", f"-I{build}", "-o", str(binary),
                    str(ORIGINAL / "original_client.cc"), str(build / "agent.pb.cc"),
                    str(build / "agent.grpc.pb.cc"), *flags.stdout.split()], check=True)
    return binary


def test_the_original_cpp_client_runs_unchanged(cpp_client, tmp_path, model_files):
    agent = start_original_agent(tmp_path / "agent")
    try:
        capture_id = str(uuid.uuid4())
        result = subprocess.run([str(cpp_client), agent.grpc_path, str(model_files["add"]),
                                 capture_id], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        calls = {}
        for line in result.stdout.splitlines():
            call, code, rest = (line.split(" ", 2) + [""])[:3]
            calls[call] = (int(code), rest)
        expected_sum = "sum=" + ",".join(f"{v:g}" for v in SUM["sum"]) + ";"
        assert calls["LoadModel"] == (0, "add inputs=2")
        assert calls["ListModels"] == (0, "add;")
        assert calls["DescribeModel"] == (0, str(model_files["add"]))
        assert calls["Predict"] == calls["PredictShm"] == (0, expected_sum)  # 0400 segment
        assert calls["CaptureData"][0] == 0
        assert calls["GetCaptureDataStatus"][0] == 0
        assert calls["GetCaptureDataStatus"][1] in ("IN_PROGRESS", "SUCCESS")
        assert calls["DescribeMissing"] == (5, "no model named 'nope' is loaded (loaded: add)")
        assert calls["PredictBad"][0] == 3  # INVALID_ARGUMENT, with the framed socket's message
        assert "takes 2 input(s)" in calls["PredictBad"][1]
        assert calls["UnLoadModel"][0] == 0
        assert agent.alive(), agent.log()
    finally:
        agent.stop()
