"""Fuzz harness: any byte stream, fed in pieces to the ServerConnection the socket loop drives
and answered by an agent core with a small loaded model, as the framed socket serves a
connection.

    make fuzz                     (long run; new inputs go to fuzz/out/frames)
    python fuzz/frames.py -runs=30000 OUT_DIR fuzz/corpus/frames

What must hold for every input (an AssertionError is a finding):
- no exception escapes the connection object; its protocol errors carry a documented code
  (INVALID_ARGUMENT or RESOURCE_EXHAUSTED), and all but a refused request frame close it;
- every request frame gets exactly one reply frame with its request id and method, whose
  status is a documented code and never INTERNAL (nor UNKNOWN), and whose body parses as the
  method's response when the status is OK.
Known defects still open (issue 10, item 3: INTERNAL for a url with a NUL byte and for
model bytes the runtime cannot describe) are counted and printed, not failed, unless
EDGE_AGENT_FUZZ_STRICT=1: see fuzz/common.py KNOWN_INTERNAL, to be emptied when they are fixed.
The caller is another user (nobody) who passed one memfd, so permission checks and fd_index
handles are exercised; frames that the connection refuses (kind not request, status not 0)
never reach the service.
"""
from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MAX_FRAME_BYTES, agent_config, known_internal, write_models  # noqa: E402

with atheris.instrument_imports(include=["edge_agent"]):
    from edge_agent import agent_pb2 as pb
    from edge_agent.errors import StatusCode
    from edge_agent.api.rpcs import BY_METHOD
    from edge_agent.transport.pending import PendingBudget
    from edge_agent.protocol import (FrameSplitter, NeedData, ProtocolError, Request,
                                     ServerConnection, Kind)
    from edge_agent.transport.framed_front import SocketServer
    from edge_agent.api.service import AgentService
    from edge_agent.api.caller import Caller

NOBODY = 65534
FRAMING_CODES = {StatusCode.INVALID_ARGUMENT, StatusCode.RESOURCE_EXHAUSTED}
NEVER = {StatusCode.INTERNAL, StatusCode.UNKNOWN}


class Harness:
    def __init__(self):
        write_models()
        from common import MODEL_PATH

        self.service = AgentService(agent_config())
        self.service.load_model(pb.LoadModelRequest(name="add", url=str(MODEL_PATH)))
        self.server = SocketServer(self.service, self.service.config)
        memfd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
        os.ftruncate(memfd, 4096)
        self.caller = Caller(os.getpid(), NOBODY, NOBODY, frozenset(), fds=(memfd,))

    def run(self, data: bytes) -> None:
        step = data[0] + 1 if data else 1  # the input also decides how the stream is cut
        stream = memoryview(data[1:])
        # The connection object the socket loop drives, driven the same way (no socket):
        # requests answered as the framed front answers them.
        conn = ServerConnection(MAX_FRAME_BYTES, PendingBudget(1 << 30), frame_timeout=60,
                                idle_timeout=0)
        offset = 0
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, Request):
                    code, reply = self.server.serve(event.method, event.body, self.caller)
                    self.check(event, b"".join(conn.reply_parts(event.request_id, event.method,
                                                                code, reply)))
                elif isinstance(event, NeedData):
                    if offset == len(stream):
                        conn.receive_eof()
                        continue
                    view = conn.get_buffer()
                    n = min(step, len(stream) - offset, len(view))
                    view[:n] = stream[offset:offset + n]
                    offset += n
                    conn.buffer_updated(n, 0.0)
                elif isinstance(event, ProtocolError):
                    # A refused frame (a non-zero status) leaves the connection open; anything
                    # else closes it, with a documented code.
                    assert event.code in FRAMING_CODES, (event.code, event.message)
                    if event.closing:
                        break
                else:
                    break
        finally:
            conn.close()
            self.unload_extra_models()

    @staticmethod
    def check(request, reply: bytes) -> None:
        splitter = FrameSplitter(1 << 31)
        splitter.get_buffer(len(reply))[:] = reply
        splitter.buffer_updated(len(reply))
        frame = splitter.next_view()
        assert frame is not None and splitter.next_view() is None and not splitter.pending, \
            "one whole reply frame"
        kind, method, status, request_id, body = frame
        assert kind == Kind.REPLY and request_id == request.request_id
        assert method == request.method
        code = StatusCode.from_wire(status)
        message = bytes(body).decode(errors="replace")
        if code in NEVER and known_internal(message):
            return
        assert code not in NEVER, f"{code.name}: {message}"
        if code == StatusCode.OK:
            response_type = BY_METHOD[request.method].response_type
            response_type.FromString(bytes(body))
        else:
            bytes(body).decode("utf-8")  # error messages are text

    def unload_extra_models(self) -> None:
        """Models the input loaded under new names: unloaded, so memory stays flat."""
        for model in self.service.list_models().models:
            if model.name != "add":
                self.service.unload_model(pb.UnLoadModelRequest(name=model.name))


def main() -> None:
    harness = Harness()
    atheris.Setup(sys.argv, harness.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
