"""The acquisition node: a microscope behind a command server and a frame publisher.

Sockets (see ``docs/protocol.md``):

- *frames*: XPUB, bound; publishes ``series_start``, ``image``, ``series_end`` and ``status``.
  XPUB (not PUB) so the node knows how many subscribers it has and can report readiness.
- *commands*: ROUTER, bound to loopback unless CURVE keys are configured; answers every message
  with ``reply`` or ``error``. Accepts DEALER clients and REQ clients (empty delimiter).
- *lossless* (optional): PUSH for consumers that must see every frame (recorders). It never
  slows the camera: frames a slow or absent consumer cannot take yet wait in a bounded buffer
  (``lossless_buffer_mb``); past it a frame is not delivered, logged and counted as an overrun
  (the consumer sees the gap). ``series_start``/``series_end`` are always delivered, to a
  consumer that connects late too; at shutdown the node waits up to ``lossless_linger_s`` for
  the consumer to take what is buffered.

Modes: *triggered* (a frame per ``acquire`` command, what autofocus uses) or *continuous* (frames
at a fixed rate, like a camera, with commands served in between).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import zmq

from scopeflow.acquisition.command_server import CommandServer
from scopeflow.devices.frames import frame_header
from scopeflow.devices.protocols import Frame, Microscope
from scopeflow.errors import ProtocolError, ScopeflowError
from scopeflow.runtime import POLL_MS, NodeRuntime
from scopeflow.schemas.codec import decode, encode, parse_header_json
from scopeflow.schemas.commands import Reply
from scopeflow.schemas.results import ErrorMessage
from scopeflow.schemas.series import SeriesEnd, SeriesStart
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LATEST_HWM, BufferedLosslessSender, send

log = logging.getLogger(__name__)

LOSSLESS_FLUSH_MS = 5  # poll interval while frames wait for the lossless consumer


@dataclass(frozen=True)
class AcquireConfig:
    """Endpoints and behaviour of an acquisition node."""

    frames_endpoint: str = "tcp://127.0.0.1:5550"
    commands_endpoint: str = "tcp://127.0.0.1:5551"
    lossless_endpoint: str | None = None
    #: a second lossless stream, for analysis workers (each frame to one of those connected);
    #: apart from ``lossless`` so a recorder and the workers each get every frame (the tee)
    work_endpoint: str | None = None
    lossless_capacity: int = 64
    lossless_buffer_mb: float = 512.0
    lossless_linger_s: float = 10.0
    mode: Literal["triggered", "continuous"] = "triggered"
    frame_rate_hz: float = 10.0
    max_commands_per_s: float = 1000.0
    series_id: int = 0
    curve: endpoints.CurveServerKeys | None = None
    name: str = "acquire"


class AcquireNode:
    """Runs a microscope as a node until :meth:`stop`."""

    def __init__(
        self,
        microscope: Microscope,
        config: AcquireConfig,
        ctx: zmq.Context | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.microscope = microscope
        self.config = config
        self.rt = NodeRuntime(config.name, "acquire", ctx, metrics_port)
        self.series_unique_id = f"{config.name}-{uuid.uuid4().hex[:12]}"
        self._next_image_id = 0
        self._subscribers = 0
        self._failing = 0  # consecutive failed frames in continuous mode
        self.server = CommandServer(
            microscope,
            self._publish,
            series_unique_id=self.series_unique_id,
            max_commands_per_s=config.max_commands_per_s,
            frame_subscribers=lambda: self._subscribers,
        )
        self._auth = None
        self.frames = self.rt.socket(zmq.XPUB)
        self.frames.setsockopt(zmq.SNDHWM, LATEST_HWM)
        self.frames.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription
        self.commands = self.rt.socket(zmq.ROUTER)
        # Endpoints actually bound (tcp port '*' resolved), available once the node is built.
        self.frames_endpoint = endpoints.bind(self.frames, config.frames_endpoint)
        if config.curve is not None:
            self._auth = endpoints.start_authenticator(self.rt.ctx, config.curve)
        self.commands_endpoint = endpoints.bind(
            self.commands, config.commands_endpoint, loopback_only=True, curve=config.curve
        )
        # Two lossless streams, each every frame: the recorder's and the analysis workers'.
        self.lossless, self.lossless_endpoint = self._lossless_stream(config.lossless_endpoint)
        self.work, self.work_endpoint = self._lossless_stream(config.work_endpoint)

    def _lossless_stream(
        self, endpoint: str | None
    ) -> tuple[BufferedLosslessSender | None, str | None]:
        """A bound lossless PUSH with the node's buffer policy, and its resolved endpoint."""
        if not endpoint:
            return None, None
        cfg = self.config
        push = self.rt.socket(zmq.PUSH, linger_ms=int(cfg.lossless_linger_s * 1000))
        sender = BufferedLosslessSender(
            push,
            self.rt.metrics,
            capacity=cfg.lossless_capacity,
            buffer_bytes=int(cfg.lossless_buffer_mb * 2**20),
        )
        return sender, endpoints.bind(push, endpoint)

    @property
    def metrics(self):
        return self.rt.metrics

    def stop(self) -> None:
        self.rt.stop()

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve commands (and stream frames in continuous mode) until stopped, then clean up."""
        cfg = self.config
        poller = zmq.Poller()
        poller.register(self.commands, zmq.POLLIN)
        poller.register(self.frames, zmq.POLLIN)
        period = 1.0 / cfg.frame_rate_hz if cfg.mode == "continuous" else None
        next_frame = time.monotonic()
        self._send_all(
            SeriesStart(
                series_id=cfg.series_id,
                series_unique_id=self.series_unique_id,
                source=getattr(self.microscope, "name", "microscope"),
                start_time_ns=time.time_ns(),
                state=self.microscope.state(),
            )
        )
        reason: Literal["completed", "stopped", "error"] = "stopped"
        try:
            while not self.rt.stopping:
                timeout = POLL_MS
                if period is not None:
                    timeout = max(0, min(POLL_MS, int((next_frame - time.monotonic()) * 1000)))
                if any(sender.flush() for sender in self._lossless_senders()):
                    timeout = min(timeout, LOSSLESS_FLUSH_MS)  # hand the buffer on soon
                events = dict(poller.poll(timeout))
                if self.frames in events:
                    self._read_subscriptions()
                if self.commands in events:
                    self._serve_commands()
                if period is not None and time.monotonic() >= next_frame:
                    self._acquire_continuous()
                    # Keep the cadence; if we fell behind, restart it rather than burst.
                    next_frame = max(next_frame + period, time.monotonic() - period)
                beat = self.rt.heartbeat_due(series_unique_id=self.series_unique_id)
                if beat is not None:
                    send(self.frames, beat)
        except Exception:
            reason = "error"
            log.exception("acquisition node failed")
            raise
        finally:
            self._send_all(
                SeriesEnd(
                    series_id=cfg.series_id,
                    series_unique_id=self.series_unique_id,
                    images=self._next_image_id,
                    stop_time_ns=time.time_ns(),
                    reason=reason,
                )
            )
            for sender in self._lossless_senders():
                left = sender.drain(cfg.lossless_linger_s)
                if left:
                    log.error(
                        "the lossless consumer did not take the end of the series: %d "
                        "message(s) not delivered (counted as overruns)",
                        left,
                    )
            if self._auth is not None:
                self._auth.stop()
            self.rt.close()

    # -- frames -----------------------------------------------------------------------------------
    def _acquire_continuous(self) -> None:
        """One frame of the continuous stream; a device fault is logged and counted, and the
        stream goes on (as in triggered mode, where it is answered with device_error)."""
        try:
            self._publish(self.microscope.acquire())
        except Exception:
            self.rt.metrics.inc("acquire_failures")
            if self._failing == 0:  # the first of a run with its traceback, not every frame
                log.exception("acquisition failed; the stream continues")
            self._failing += 1
            return
        if self._failing:
            log.warning("acquisition recovered after %d failed frame(s)", self._failing)
            self._failing = 0

    def _publish(self, frame: Frame) -> int:
        image_id = self._next_image_id
        header, pixels = frame_header(
            frame,
            series_id=self.config.series_id,
            series_unique_id=self.series_unique_id,
            image_id=image_id,
            command_seq=self.server.command_seq,
        )
        self._send_all(header, pixels)
        self._next_image_id += 1  # only once sent: image_ids have no gaps from failed frames
        self.rt.metrics.inc("frames_sent")
        return image_id

    def _send_all(self, header: Any, pixels: Any = None) -> None:
        """Publish on the frame stream, and on the lossless stream when there is one."""
        buffers = () if pixels is None else (pixels,)
        send(self.frames, header, buffers)
        for sender in self._lossless_senders():
            sender.send(header, buffers)  # never blocks; an overrun is counted there

    def _lossless_senders(self) -> list[BufferedLosslessSender]:
        return [s for s in (self.lossless, self.work) if s is not None]

    def _read_subscriptions(self) -> None:
        while True:
            try:
                event = self.frames.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01" and b"status".startswith(event[1:]):
                # A new reader of heartbeats (an inference node proving its connection): tell it
                # the series now rather than up to a second later.
                self.rt.beat_now()
            # Count subscriptions that receive images (topic a prefix of b"image").
            if not b"image".startswith(event[1:]):
                continue
            if event[:1] == b"\x01":
                self._subscribers += 1
            elif event[:1] == b"\x00":
                self._subscribers = max(0, self._subscribers - 1)

    # -- commands ---------------------------------------------------------------------------------
    def _serve_commands(self) -> None:
        for _ in range(64):  # bounded, so a flood cannot starve frame acquisition
            try:
                parts = self.commands.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            envelope, body = _split_envelope(parts)
            try:
                answer = self._answer(body)
            except Exception as exc:  # never let one message take the node down
                log.exception("internal error answering a command")
                answer = ErrorMessage.about("internal", f"internal error: {exc}", _peek_seq(body))
            self.commands.send_multipart([*envelope, *encode(answer)])

    def _answer(self, body: list[Any]) -> Reply | ErrorMessage:
        metrics = self.rt.metrics
        try:
            msg = decode(body)
            if msg.kind != "command":
                raise ProtocolError(
                    f"the command channel accepts 'command' messages, got {msg.kind!r}",
                    code="unknown_kind",
                )
        except ProtocolError as exc:
            error = ErrorMessage.about(exc.code, exc.reason, _peek_seq(body))
            metrics.inc("messages_rejected", code=error.code)
            log.warning("rejected command message (%s): %s", error.code, error.reason)
            return error
        cmd = msg.header
        try:
            reply = self.server.execute(cmd)
        except ScopeflowError as exc:
            error = ErrorMessage.about(exc.code, exc.reason, cmd.seq)
            metrics.inc("commands_rejected", code=error.code)
            log.warning("refused %s seq=%d (%s): %s", cmd.command, cmd.seq, error.code, exc.reason)
            return error
        metrics.inc("commands_ok", command=cmd.command)
        return reply


def _split_envelope(parts: list[Any]) -> tuple[list[Any], list[Any]]:
    """ROUTER parts → (routing envelope incl. REQ's empty delimiter, message body)."""
    identity, rest = parts[:1], parts[1:]
    if rest and len(rest[0]) == 0:  # REQ client: keep the delimiter for the reply
        return [*identity, rest[0]], rest[1:]
    return identity, rest


def _peek_seq(body: list[Any]) -> int | None:
    """The seq of a rejected command when its header is valid JSON with a valid seq, so the
    client can match the error; None otherwise."""
    try:
        seq = parse_header_json(bytes(body[1])).get("seq")
    except (ProtocolError, IndexError, TypeError):
        return None
    return seq if type(seq) is int and 1 <= seq < 2**63 else None
