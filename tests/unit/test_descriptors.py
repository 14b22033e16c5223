"""Descriptors a caller passed (edge_agent/platform/passed_fds.py) where none can come: the
gRPC front and in-process callers. (Passing them through a real agent: tests/e2e/test_fd_passing.py.)"""
from __future__ import annotations

import os

import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.service import AgentService
from edge_agent.api.caller import Caller

def test_without_a_socket_there_are_no_descriptors(tmp_path, model_files):
    """The gRPC front and in-process callers pass none: fd_index is refused, not guessed."""
    from edge_agent.config import from_mapping
    service = AgentService(from_mapping({"edge_agent_allow_unsigned_models": True,
                                         "edge_agent_state_dir": str(tmp_path)}))
    try:
        service.load_model(pb.LoadModelRequest(name="add", url=str(model_files["add"])))
        request = pb.PredictRequest(name="add")
        request.tensors.add().shared_memory_handle.fd_index = 0
        request.tensors.add().byte_data = bytes(16)
        caller = Caller(os.getpid(), os.getuid(), os.getgid())
        with pytest.raises(AgentError) as info:
            service.predict(request, caller)
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        with pytest.raises(AgentError) as info:
            service.load_model(pb.LoadModelRequest(name="x", url="fd:0"), caller)
        assert info.value.code == StatusCode.INVALID_ARGUMENT
    finally:
        service.close()
