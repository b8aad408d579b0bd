"""The one exception hierarchy of scopeflow.

Every error a caller may want to handle derives from :class:`ScopeflowError`. Errors that cross
the wire carry a stable ``code`` (see ``docs/protocol.md`` §7.2) and a human-readable
``reason`` that names the cause and, where there is one, the fix.
"""

from __future__ import annotations


class ScopeflowError(Exception):
    """Base class; ``code`` is the stable machine-readable error code used on the wire."""

    code = "internal"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class ProtocolError(ScopeflowError):
    """A message that does not follow ``docs/protocol.md`` (bad JSON, version, fields, buffers)."""

    code = "invalid_message"


class LimitError(ScopeflowError):
    """A requested position lies outside the device limits."""

    code = "limit"


class DeviceError(ScopeflowError):
    """The microscope (or its simulator) failed to carry out a valid request."""

    code = "device_error"


class RateLimitError(ScopeflowError):
    """Commands arrive faster than the configured maximum rate."""

    code = "rate_limited"


class OverrunError(ScopeflowError):
    """A lossless stream could not deliver a message within its backpressure timeout."""

    code = "overrun"


class EndpointError(ScopeflowError):
    """An endpoint string is malformed or not allowed (e.g. a non-loopback command port)."""

    code = "bad_endpoint"


class PeerTimeout(ScopeflowError):
    """A peer (microscope, inference node) did not answer in time."""

    code = "timeout"
