"""Calls and checks the agent tests share, whichever way they reach the agent (a client over
the socket, or the in-process client of tests/unit)."""
from __future__ import annotations

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.api.rpcs import Method


def expect_error(code: StatusCode, call, *args, match: str | None = None) -> AgentError:
    with pytest.raises(AgentError) as info:
        call(*args)
    assert info.value.code == code, info.value
    if match:
        assert match in info.value.message, info.value.message
    return info.value


def assert_outputs_match(built, inputs, outputs):
    expected = built.reference(inputs)
    assert list(outputs) == [spec.name for spec in built.outputs]
    for name, array in expected.items():
        if np.issubdtype(array.dtype, np.floating):
            np.testing.assert_allclose(outputs[name], array, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(outputs[name], array)
        assert outputs[name].dtype == array.dtype


def raw_predict(client, name, tensors):
    request = pb.PredictRequest(name=name, tensors=tensors)
    return client.call(Method.PREDICT, request, pb.PredictResponse)
