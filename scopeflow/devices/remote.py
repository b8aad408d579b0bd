"""The ``remote`` device adapter: a microscope behind an acquisition node's command server.

:class:`MicroscopeClient` speaks the wire protocol (DEALER socket) and returns the server's
replies; :class:`RemoteMicroscope` is the same client as a device (state, limits, focus drive,
XY stage), so jobs and contract tests treat a remote microscope like a local one. Frames taken
by a remote microscope travel on the frame stream, not back through the client (see
:class:`~scopeflow.scopes.remote.RemoteScope`).

Every request carries an increasing ``seq``; a reply or error with another ``seq`` (a late answer
to a request that timed out) is discarded. A microscope that does not answer within the timeout
raises :class:`~scopeflow.errors.PeerTimeout` instead of hanging.
"""

from __future__ import annotations

import itertools
import logging
import time

import zmq

from scopeflow.errors import PeerTimeout, ProtocolError, ScopeflowError
from scopeflow.schemas.commands import Acquire, GetState, MoveStage, Reply, SetBeamShift, SetWD
from scopeflow.schemas.results import ErrorMessage
from scopeflow.schemas.state import Limits, MicroscopeState
from scopeflow.transport import endpoints
from scopeflow.transport.streams import recv, send

log = logging.getLogger(__name__)


class CommandRejected(ScopeflowError):
    """The command server answered with an error; ``code`` is the wire error code."""


class MicroscopeClient:
    """Sends commands and waits for their replies."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        *,
        timeout_s: float = 5.0,
        curve: endpoints.CurveClientKeys | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # A DEALER blocks on send while no connection is up (e.g. a CURVE handshake refused);
        # bound that wait so a silent server can never hang the controller.
        self.sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
        endpoints.connect(self.sock, endpoint, curve=curve)
        self._seq = itertools.count(1)
        self.last_sent_ns = 0  # host monotonic time the last command left this client

    def close(self) -> None:
        self.sock.close()

    def set_wd(self, wd_um: float, *, wait: bool = True) -> Reply:
        return self._request(SetWD(seq=next(self._seq), wd_um=wd_um, wait=wait))

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> Reply:
        return self._request(MoveStage(seq=next(self._seq), x_um=x_um, y_um=y_um, wait=wait))

    def acquire(self) -> Reply:
        return self._request(Acquire(seq=next(self._seq)))

    def get_state(self) -> Reply:
        return self._request(GetState(seq=next(self._seq)))

    def set_beam_shift(self, x_um: float, y_um: float) -> Reply:
        """Shift the field electronically to (x, y) µm (protocol 1.4; an older server answers
        ``unknown_command``)."""
        return self._request(SetBeamShift(seq=next(self._seq), x_um=x_um, y_um=y_um))

    def _request(self, cmd: SetWD | MoveStage | SetBeamShift | Acquire | GetState) -> Reply:
        self.last_sent_ns = time.monotonic_ns()
        try:
            send(self.sock, cmd)
        except zmq.Again:
            raise PeerTimeout(
                f"could not send {cmd.command} (seq {cmd.seq}) within {self.timeout_s:g} s: no "
                "connection to the command server (wrong endpoint, server down, or CURVE keys "
                "refused)"
            ) from None
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self.sock.poll(remaining_ms, zmq.POLLIN):
                raise PeerTimeout(
                    f"the microscope did not answer {cmd.command} (seq {cmd.seq}) within "
                    f"{self.timeout_s:g} s; is the acquisition node running and reachable?"
                )
            try:
                msg = recv(self.sock)
            except ProtocolError as exc:
                log.warning("discarding malformed answer (%s): %s", exc.code, exc.reason)
                continue
            header = msg.header
            if isinstance(header, ErrorMessage) and header.seq is None:
                # The server could not even read our seq: the error is about this request.
                raise CommandRejected(f"{cmd.command} refused: {header.reason}", code=header.code)
            if getattr(header, "seq", None) != cmd.seq:
                log.debug("discarding late answer to seq %s", getattr(header, "seq", None))
                continue
            if isinstance(header, ErrorMessage):
                raise CommandRejected(f"{cmd.command} refused: {header.reason}", code=header.code)
            if isinstance(header, Reply):
                return header


class RemoteMicroscope:
    """A microscope behind a command server, as a device: focus drive, XY stage, state.

    ``last_reply`` is the server's answer to the last command (its ``command_seq`` and series
    are what a remote scope needs to recognise stale results).
    """

    def __init__(
        self, client: MicroscopeClient, name: str = "remote", *, ctx: zmq.Context | None = None
    ) -> None:
        self.client = client
        self.name = name
        self.last_reply: Reply | None = None
        self._own_ctx = ctx  # terminated on close: the context was made for this device

    def _ask(self, reply: Reply) -> Reply:
        self.last_reply = reply
        return reply

    def state(self) -> MicroscopeState:
        return self._ask(self.client.get_state()).state

    def limits(self) -> Limits:
        return self._ask(self.client.get_state()).limits

    def set_wd(self, wd_um: float, *, wait: bool = True) -> MicroscopeState:
        return self._ask(self.client.set_wd(wd_um, wait=wait)).state

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> MicroscopeState:
        return self._ask(self.client.move_stage(x_um, y_um, wait=wait)).state

    def close(self) -> None:
        self.client.close()
        if self._own_ctx is not None:
            self._own_ctx.term()


def open_remote(endpoint: str, timeout_s: float = 5.0) -> RemoteMicroscope:
    """Entry point of the ``remote`` adapter: the command server at ``endpoint``."""
    ctx = zmq.Context()
    client = MicroscopeClient(ctx, endpoint, timeout_s=timeout_s)
    return RemoteMicroscope(client, name=endpoint, ctx=ctx)
