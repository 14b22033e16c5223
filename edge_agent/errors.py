"""Status codes and the one exception type every layer of the agent raises.

The codes are gRPC's, by name and number, so the framed socket protocol and the gRPC front
report the same thing and clients written for the original agent recognise them.
"""
from __future__ import annotations

import enum


class StatusCode(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def from_wire(cls, value: int) -> "StatusCode":
        """A code read off the wire; one this version does not know is UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


# Client input quoted in an error message is cut to this many characters: a name or url
# echoed whole would make every error as long as the input (and a gRPC header of it, too
# large for clients to accept).
SHOWN_INPUT_CHARS = 128


def shown(text: str, limit: int = SHOWN_INPUT_CHARS) -> str:
    """`text` as an error message quotes it: at most `limit` characters, then "..."."""
    return text if len(text) <= limit else text[:limit] + "..."


class AgentError(Exception):
    """A failed call: `code` says what kind of failure, `message` what to do about it."""

    def __init__(self, code: StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = StatusCode(code)
        self.message = message


class FramingError(Exception):
    """The stream cannot be split any further: the connection must be closed after replying.

    `code` is the status to reply with, `request_id` the id the bad frame carried (0 when the
    header itself is unreadable). Raised by both frame splitters (the compiled
    edge_agent.protocol._framing and its pure-Python twin edge_agent.protocol._framing_py) and by the fronts.
    """

    def __init__(self, code: int, message: str, request_id: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def invalid_argument(message: str) -> AgentError:
    return AgentError(StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> AgentError:
    return AgentError(StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> AgentError:
    return AgentError(StatusCode.FAILED_PRECONDITION, message)


def resource_exhausted(message: str) -> AgentError:
    return AgentError(StatusCode.RESOURCE_EXHAUSTED, message)
