"""AgentClient's transport against a scripted agent on a real UNIX socket: what a broken,
late or hostile agent does to a call. The agent's side here is raw frames written by hand;
the rules themselves are tested without sockets in tests/unit/test_protocol_connection.py."""
from __future__ import annotations

import socket
import threading

import pytest
from wire import encode_reply, split_frames

from edge_agent import agent_pb2 as pb
from edge_agent.client import AgentClient
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import FrameSplitter, encode_error
from edge_agent.api.rpcs import Method

REPLY = pb.ListModelsResponse(models=[pb.Model(name="m", url="/m")]).SerializeToString()


class ScriptedAgent:
    """Accepts one connection and runs `script(conn, requests)`, where requests() yields the
    request frames as they arrive."""

    def __init__(self, path: str, script):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                splitter = FrameSplitter(1 << 20)

                def requests():
                    while data := conn.recv(65536):
                        yield from split_frames(splitter, data)
                script(conn, requests())
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self) -> None:
        self.thread.join(30)
        self.listener.close()
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "agent.sock")


def test_a_late_reply_to_a_call_given_up_on_is_not_taken_for_the_next(path):
    def script(conn, requests):
        first = next(requests)  # not answered until the client has given up on it
        second = next(requests)
        conn.sendall(encode_reply(first.method, first.request_id, b"")  # late
                     + encode_reply(second.method, second.request_id, REPLY))
    agent = ScriptedAgent(path, script)
    with AgentClient(path, timeout=0.2) as client:
        with pytest.raises(AgentError) as info:
            client.list_models()
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        client.transport.sock.settimeout(30)  # the second call waits as long as it takes
        assert [m.name for m in client.list_models()] == ["m"]
    agent.join()


@pytest.mark.parametrize("reply, message", [
    (lambda r: b"HTTP/1.1 200 OK\r\n\r\n", "the agent's reply stream is broken"),
    (lambda r: encode_reply(Method.PREDICT, r.request_id, b""), "is for method 1"),
    (lambda r: encode_reply(r.method, r.request_id + 1, b""), "which is not awaiting a reply"),
])
def test_a_reply_that_breaks_the_protocol_fails_the_call_with_internal(path, reply, message):
    def script(conn, requests):
        conn.sendall(reply(next(requests)))
    agent = ScriptedAgent(path, script)
    with AgentClient(path, timeout=30) as client:
        with pytest.raises(AgentError) as info:
            client.list_models()
        assert info.value.code == StatusCode.INTERNAL and message in info.value.message
        with pytest.raises(AgentError) as info:  # the connection is over
            client.list_models()
        assert info.value.code == StatusCode.UNAVAILABLE
    agent.join()


def test_an_agent_that_closes_mid_reply_fails_the_call_unavailable(path):
    def script(conn, requests):
        request = next(requests)
        conn.sendall(encode_reply(request.method, request.request_id, REPLY)[:20])
    agent = ScriptedAgent(path, script)
    with AgentClient(path, timeout=30) as client:
        with pytest.raises(AgentError) as info:
            client.list_models()
    assert info.value.code == StatusCode.UNAVAILABLE
    assert "in the middle of a frame (20 bytes pending)" in info.value.message
    agent.join()


def test_an_error_reply_carries_the_agents_code_and_message(path):
    def script(conn, requests):
        request = next(requests)
        conn.sendall(encode_error(StatusCode.NOT_FOUND, request.request_id, "no model named x",
                                  request.method))
    agent = ScriptedAgent(path, script)
    with AgentClient(path, timeout=30) as client:
        with pytest.raises(AgentError) as info:
            client.describe_model("x")
    assert (info.value.code, info.value.message) == (StatusCode.NOT_FOUND, "no model named x")
    agent.join()
