"""edge_agent.protocol.tensors: the one place a wire tensor's bytes become a checked array."""
from __future__ import annotations

import numpy as np
import pytest

from edge_agent import agent_pb2 as pb
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol.tensors import byte_length, checked_array


def test_bytes_become_a_view_of_the_shape():
    data = np.arange(6, dtype=np.float32).tobytes()
    array = checked_array(data, "input 'x'", pb.FLOAT32, np.dtype(np.float32), (2, 3), 24)
    np.testing.assert_array_equal(array, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_a_length_that_is_not_the_shape_is_invalid_argument():
    with pytest.raises(AgentError) as info:
        checked_array(b"\0" * 20, "input 'x'", pb.FLOAT32, np.dtype(np.float32), (2, 3), 24)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert info.value.message.startswith("input 'x': expected")


# More dimensions than NumPy has (32 in NumPy 1, 64 in NumPy 2), or a size that overflows.
@pytest.mark.parametrize("shape", [(0,) + (1,) * 70, (0, 2**31 - 1, 2**31 - 1, 2**31 - 1)],
                         ids=["71 dimensions", "empty but huge"])
def test_a_shape_numpy_cannot_make_is_invalid_argument_not_internal(shape):
    dtype = np.dtype(np.float32)
    assert byte_length(dtype, shape) == 0  # the length check alone would pass
    with pytest.raises(AgentError) as info:
        checked_array(b"", "input 'x'", pb.FLOAT32, dtype, shape, 0)
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert "cannot be an array" in info.value.message
