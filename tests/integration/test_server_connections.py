"""Connection limits of the framed socket: idle connections, the total of incomplete frames,
what a request frame must carry, a frame cut short; each answered as docs/PROTOCOL.md says."""
from __future__ import annotations

import select
import socket
import time

import pytest
from wire import (_list_models_frame, assert_serving, closed_by_peer, raw_connection,
                  read_replies, wait_taken)

from edge_agent.config import ConfigError, from_mapping
from edge_agent.errors import AgentError, StatusCode
from edge_agent.protocol import HEADER, Kind, encode_request
from edge_agent.api.rpcs import Method

MIB = 1024 * 1024


def _end_and_wait_released(sock: socket.socket) -> None:
    """End a connection mid-frame and wait until the agent has given back what it held: it
    closes its side only after that."""
    sock.shutdown(socket.SHUT_WR)
    read_replies(sock)
    assert closed_by_peer(sock)
    sock.close()


# --- idle connections ---------------------------------------------------------------------------

def test_an_idle_connection_is_told_why_and_closed(start_agent):
    agent = start_agent(edge_agent_idle_timeout_seconds=0.3)
    idle = raw_connection(agent)
    idle.settimeout(60)
    [reply] = read_replies(idle)  # waits for the agent to give up on it, however long
    assert reply.kind == Kind.REPLY and reply.request_id == 0
    assert reply.status == StatusCode.UNAVAILABLE
    assert b"without a request (edge_agent_idle_timeout_seconds)" in reply.body
    assert closed_by_peer(idle)
    assert_serving(agent)


def _served_connection(agent) -> socket.socket:
    """A raw connection the agent has answered (so it holds a place); a connection that just
    closed may hold its place a moment longer, so a refusal is tried again."""
    deadline = time.monotonic() + 30
    while True:
        sock = raw_connection(agent)
        sock.settimeout(60)
        try:
            sock.sendall(encode_request(Method.LIST_MODELS, 1, b""))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once: the reason is still to be read
        [reply] = read_replies(sock)
        if reply.status == StatusCode.OK:
            return sock
        assert reply.status == StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
        sock.close()
        time.sleep(0.05)


def test_idle_clients_cannot_keep_others_out_for_ever(start_agent):
    """With every place held by an idle client, the next one gets in once they are closed."""
    agent = start_agent(edge_agent_max_connections=2, edge_agent_idle_timeout_seconds=0.5)
    idle = [_served_connection(agent), _served_connection(agent)]
    for sock in idle:  # then silent, until the agent closes it
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.UNAVAILABLE and closed_by_peer(sock)
    deadline = time.monotonic() + 30
    while True:  # the places are given back as the connection threads end
        try:
            with agent.client() as client:
                assert client.list_models() == []
            break
        except AgentError as e:
            assert e.code == StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, e
            time.sleep(0.05)


def test_the_python_client_reconnects_after_an_idle_close(start_agent):
    """The agent closed the connection before reading the next request, so nothing ran: the
    client sends it again on a new connection, once, and the application sees nothing."""
    agent = start_agent(edge_agent_idle_timeout_seconds=0.3)
    with agent.client(timeout=60) as client:
        client.list_models()
        first = client.transport.sock
        readable, _, _ = select.select([first], [], [], 120)  # the agent's idle notice
        assert readable
        assert client.list_models() == []
        assert client.transport.sock is not first  # a new connection
    assert "idle for 0.3 s" in agent.log()


def test_idle_timeout_zero_means_never(tmp_path):
    assert from_mapping({"edge_agent_idle_timeout_seconds": 0}).edge_agent_idle_timeout_seconds == 0
    assert from_mapping({}).edge_agent_idle_timeout_seconds == 600
    with pytest.raises(ConfigError, match="edge_agent_idle_timeout_seconds"):
        from_mapping({"edge_agent_idle_timeout_seconds": -1})


# --- the budget of incomplete frames -------------------------------------------------------------

def test_pending_budget_defaults_to_two_largest_frames_and_must_hold_one():
    config = from_mapping({"edge_agent_max_frame_bytes": 8 * MIB})
    assert config.pending_budget_bytes == 2 * (8 * MIB + 16)
    assert from_mapping({"edge_agent_max_pending_bytes": 5 * MIB,
                         "edge_agent_max_frame_bytes": 4 * MIB}).pending_budget_bytes == 5 * MIB
    with pytest.raises(ConfigError, match="edge_agent_max_pending_bytes: must hold at least one"):
        from_mapping({"edge_agent_max_pending_bytes": 4 * MIB,
                      "edge_agent_max_frame_bytes": 4 * MIB})


def test_half_frames_of_many_clients_stay_within_the_total_budget(start_agent):
    """Two clients each hold most of a 16 MiB frame (plus the 4 MiB the agent sets aside for
    the rest of each body): a third one's frame would take the total past 20 MiB, so it gets
    RESOURCE_EXHAUSTED and is closed; the others' frames complete and are answered."""
    frame_body = 16 * MIB
    agent = start_agent(edge_agent_max_frame_bytes=frame_body,
                        edge_agent_max_pending_bytes=20 * MIB,
                        edge_agent_connection_reserve_bytes=0,  # the shared budget alone
                        edge_agent_frame_timeout_seconds=300.0)
    frames = {i: _list_models_frame(i, frame_body) for i in (1, 2, 3)}
    sent = 16 + 6 * MIB
    first, second, third = (raw_connection(agent) for _ in range(3))
    for sock, request_id in ((first, 1), (second, 2)):
        sock.settimeout(120)
        sock.sendall(frames[request_id][:sent])
        wait_taken(sock)  # the agent holds these bytes now
    third.settimeout(120)
    try:
        third.sendall(frames[3][:sent])
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused while sending: the reply is still there to read
    [refused] = read_replies(third)
    assert refused.status == StatusCode.RESOURCE_EXHAUSTED, refused.body
    assert b"edge_agent_max_pending_bytes" in refused.body
    assert closed_by_peer(third)
    with agent.client() as other:  # small requests need no budget to speak of
        assert other.list_models() == []
    _end_and_wait_released(second)  # its share is given back: a whole frame now fits
    first.sendall(frames[1][sent:])
    [reply] = read_replies(first)
    assert reply.status == StatusCode.OK and reply.request_id == 1
    first.sendall(encode_request(Method.LIST_MODELS, 4, b""))  # the connection goes on
    [reply] = read_replies(first)
    assert reply.status == StatusCode.OK and reply.request_id == 4
    assert_serving(agent)


def test_a_header_alone_sets_no_large_buffer_aside(start_agent):
    """The buffer for a large body grows with what arrived (at most doubling it), so clients
    that send only a header hold next to nothing of the budget: with room for two 4 MiB
    buffers, three such clients are all kept, and each frame then completes."""
    agent = start_agent(edge_agent_max_frame_bytes=8 * MIB,
                        edge_agent_max_pending_bytes=9 * MIB,
                        edge_agent_connection_reserve_bytes=0,  # the shared budget alone
                        edge_agent_frame_timeout_seconds=300.0)
    frames = {i: _list_models_frame(i, 8 * MIB) for i in (1, 2, 3)}
    holders = {}
    for request_id in (1, 2, 3):
        sock = raw_connection(agent)
        sock.settimeout(120)
        sock.sendall(frames[request_id][:16])
        wait_taken(sock)
        holders[sock] = request_id
    for sock, request_id in holders.items():
        sock.sendall(frames[request_id][16:])
        [reply] = read_replies(sock)
        assert reply.status == StatusCode.OK and reply.request_id == request_id
    assert_serving(agent)


# --- what a request frame carries -----------------------------------------------------------

def test_a_request_with_a_non_zero_status_is_refused_and_the_connection_stays(agent):
    sock = raw_connection(agent)
    sock.sendall(HEADER.pack(b"EA", 1, Kind.REQUEST, Method.LIST_MODELS, 5, 77, 0))
    [reply] = read_replies(sock)
    assert reply.status == StatusCode.INVALID_ARGUMENT and reply.request_id == 77
    assert reply.method == Method.LIST_MODELS
    assert b"a request frame carries status 0, got 5" in reply.body
    sock.sendall(encode_request(Method.LIST_MODELS, 78, b""))
    [reply] = read_replies(sock)
    assert reply.status == StatusCode.OK and reply.request_id == 78


def test_a_frame_cut_short_is_answered_invalid_argument(agent):
    sock = raw_connection(agent)
    sock.sendall(encode_request(Method.LIST_MODELS, 9, b"\0" * 100)[:40])
    sock.shutdown(socket.SHUT_WR)  # end of stream, still reading
    [reply] = read_replies(sock)
    assert reply.status == StatusCode.INVALID_ARGUMENT and reply.request_id == 0
    assert b"connection closed in the middle of a frame (40 bytes pending)" in reply.body
    assert closed_by_peer(sock)
    assert_serving(agent)
