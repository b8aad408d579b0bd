"""The one exception hierarchy of scopeflow.

Every error a caller may want to handle derives from :class:`ScopeflowError`. Errors that cross
the wire carry a stable ``code`` (see ``docs/protocol.md`` §7.2) and a human-readable
``reason`` that names the cause and, where there is one, the fix. Each class has its own
``exit_code`` for the command line (``docs/cli.md``); 1 is kept for a job that ended without
reaching its goal.
"""

from __future__ import annotations


class ScopeflowError(Exception):
    """Base class; ``code`` is the stable machine-readable error code used on the wire."""

    code = "internal"
    exit_code = 70  # EX_SOFTWARE: a failure with no more specific class

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class ProtocolError(ScopeflowError):
    """A message that does not follow ``docs/protocol.md`` (bad JSON, version, fields, buffers)."""

    code = "invalid_message"
    exit_code = 6


class LimitError(ScopeflowError):
    """A requested position lies outside the device limits."""

    code = "limit"
    exit_code = 4


class DeviceError(ScopeflowError):
    """The microscope (or its simulator) failed to carry out a valid request."""

    code = "device_error"
    exit_code = 5


class RateLimitError(ScopeflowError):
    """Commands arrive faster than the configured maximum rate."""

    code = "rate_limited"
    exit_code = 4


class OverrunError(ScopeflowError):
    """A lossless stream could not deliver a message within its backpressure timeout."""

    code = "overrun"
    exit_code = 9


class EndpointError(ScopeflowError):
    """An endpoint string is malformed or not allowed (e.g. a non-loopback command port)."""

    code = "bad_endpoint"
    exit_code = 7


class PeerTimeout(ScopeflowError):
    """A peer (microscope, inference node) did not answer in time."""

    code = "timeout"
    exit_code = 3


class UsageError(ScopeflowError):
    """A command line, scope spec or job option that cannot be used as given."""

    code = "usage"
    exit_code = 2


class ModelUnavailable(ScopeflowError):
    """A model or inference backend cannot run here (not shipped, not installed, no GPU)."""

    code = "model_unavailable"
    exit_code = 8


#: Exit status of a job outcome that did not reach its goal, by the outcome's reason.
EXIT_BY_REASON = {
    "usage": 2,
    "timeout": 3,
    "limit": 4,
    "device_error": 5,
    "model_unavailable": 8,
    "interrupted": 130,  # as a shell reports a Ctrl-C
}


def exit_code_for(reached_goal: bool, reason: str) -> int:
    """0 when the job reached its goal; else the failure's code, or 1 (goal not reached)."""
    return 0 if reached_goal else EXIT_BY_REASON.get(reason, 1)
