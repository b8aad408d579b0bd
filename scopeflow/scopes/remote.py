"""A scope whose devices sit behind an acquisition node's command server and whose results
come from inference nodes, over ZeroMQ.

Moves and frames go through :class:`~scopeflow.devices.remote.MicroscopeClient` (the command
server validates and counts moves); results arrive on the results stream through one
:class:`~scopeflow.scopes.results.ResultSubscriber`. A result of a frame taken before the last
move is stale and skipped (``command_seq``); a new series (the acquisition node restarted)
during a job is refused, since its positions and counters are not the ones the job started from.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import numpy as np
import zmq

from scopeflow.devices.remote import CommandRejected, MicroscopeClient
from scopeflow.errors import PeerTimeout, ProtocolError
from scopeflow.metrics import NodeMetrics
from scopeflow.schemas.base import minor_of
from scopeflow.schemas.commands import Reply
from scopeflow.scopes.base import ScopeStatus, Shot, check_kinds
from scopeflow.scopes.results import ResultSubscriber
from scopeflow.transport import endpoints
from scopeflow.transport.endpoints import CurveClientKeys
from scopeflow.transport.streams import recv

T = TypeVar("T")


class RemoteScope:
    """Commands to ``commands_endpoint``, results from ``results_endpoint``."""

    def __init__(
        self,
        commands_endpoint: str,
        results_endpoint: str,
        *,
        ctx: zmq.Context | None = None,
        timeout_s: float = 5.0,
        curve: CurveClientKeys | None = None,
        frames_endpoint: str | None = None,
    ) -> None:
        self.name = f"remote:{commands_endpoint}"
        self.results_endpoint = results_endpoint
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else zmq.Context()
        self.metrics = NodeMetrics("job")
        self.client = MicroscopeClient(
            self.ctx, commands_endpoint, timeout_s=timeout_s, curve=curve
        )
        self.results: ResultSubscriber | None = None
        self.frames: zmq.Socket | None = None
        if frames_endpoint is not None:  # jobs that keep pixels (thumbnails) read the frames
            self.frames = self.ctx.socket(zmq.SUB)
            self.frames.setsockopt(zmq.LINGER, 0)
            self.frames.setsockopt(zmq.SUBSCRIBE, b"image")
            endpoints.connect(self.frames, frames_endpoint)
        self._series: str | None = None
        self._moved_seq = 0  # command_seq after the last move: older frames are stale

    def wait_ready(self, kinds: tuple[str, ...], timeout_s: float) -> ScopeStatus:
        """Wait until the results a job needs can flow from this microscope's frames.

        From a 1.3 acquisition node: until, for each kind, an inference node's heartbeat says it
        serves that kind *and* receives this series' frames (which a viewer or a stray socket
        cannot fake). From an older microscope, whose heartbeats name no series: until an
        inference heartbeat arrives and the microscope reports an image subscriber (1.2 rule).
        """
        check_kinds(kinds)
        if self.results is None or self.results.kinds != kinds:
            if self.results is not None:
                self.results.close()
            self.results = ResultSubscriber(self.ctx, self.results_endpoint, self.metrics, kinds)
        deadline = time.monotonic() + timeout_s
        reply = self.client.get_state()
        series = reply.series_unique_id
        names_series = minor_of(reply.protocol_version) >= 3
        while True:
            self.results.poll(50)
            if names_series:
                missing = self.results.unserved(kinds, series)
                if not missing:
                    return self._status(reply)
            else:
                reply = self.client.get_state()
                if self.results.last_status_ns is not None and (reply.frame_subscribers or 0):
                    return self._status(reply)
            if time.monotonic() > deadline:
                raise PeerTimeout(self._not_ready(kinds, series, names_series, timeout_s))

    def _not_ready(self, kinds: tuple[str, ...], series: str, names: bool, timeout_s: float) -> str:
        assert self.results is not None
        if self.results.last_status_ns is None:
            return (
                f"no heartbeat from an inference node within {timeout_s:g} s; check the results "
                f"endpoint {self.results_endpoint} and that the inference node runs"
            )
        if names:
            missing = ", ".join(self.results.unserved(kinds, series))
            return (
                f"no inference node serves {missing} from the frames of series {series} within "
                f"{timeout_s:g} s; start one connected to the acquisition node's frames endpoint"
            )
        return (
            f"no subscriber on the frame stream within {timeout_s:g} s; start an inference "
            "node connected to the acquisition node's frames endpoint"
        )

    def _status(self, reply: Reply) -> ScopeStatus:
        if self._series is None:
            self._series = reply.series_unique_id
        elif reply.series_unique_id != self._series:
            raise CommandRejected(
                f"the acquisition node restarted during the job (series {self._series} became "
                f"{reply.series_unique_id}); start again",
                code="device_error",
            )
        return ScopeStatus(reply.state, reply.limits, reply.command_seq, reply.series_unique_id)

    def status(self) -> ScopeStatus:
        status = self._status(self.client.get_state())
        self._moved_seq = max(self._moved_seq, status.command_seq)
        return status

    def set_focus(self, wd_um: float) -> ScopeStatus:
        status = self._status(self.client.set_wd(wd_um))
        self._moved_seq = status.command_seq
        return status

    def move_stage(self, x_um: float, y_um: float) -> ScopeStatus:
        status = self._status(self.client.move_stage(x_um, y_um))
        self._moved_seq = status.command_seq
        return status

    def snap(self) -> Shot:
        reply = self.client.acquire()
        self._status(reply)
        assert reply.image_id is not None  # the server names the frame of every acquire
        return Shot(reply.image_id, reply.series_unique_id, self._moved_seq)

    def result(self, shot: Shot, kind: str, timeout_s: float) -> Any:
        if self.results is None:
            raise RuntimeError("call wait_ready with the result kinds first")
        return self.results.wait_for(
            shot.image_id, shot.command_seq, timeout_s, series=shot.series_unique_id, kind=kind
        )

    def compute_later(self, shot: Shot, kinds: tuple[str, ...]) -> None:
        """Inference nodes compute every frame's results as they come: nothing to start."""

    def pixels(self, shot: Shot, timeout_s: float) -> Any:
        """The frame of ``shot`` from the frame stream; None without a frames endpoint."""
        if self.frames is None:
            return None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self.frames.poll(remaining_ms, zmq.POLLIN):
                raise PeerTimeout(f"image {shot.image_id} did not arrive within {timeout_s:g} s")
            try:
                msg = recv(self.frames)
            except ProtocolError as exc:
                self.metrics.inc("messages_rejected", code=exc.code)
                continue
            header = msg.header
            if (
                header.series_unique_id == shot.series_unique_id
                and header.image_id == shot.image_id
            ):
                return np.array(msg.array())  # a copy: the buffer belongs to the message

    def device(self, kind: type[T]) -> T | None:
        """Optional devices are not served over the wire protocol (yet): always None."""
        return None

    @property
    def last_sent_ns(self) -> int:
        """When the last command left (host monotonic ns), for loop latency."""
        return self.client.last_sent_ns

    def close(self) -> None:
        self.client.close()
        if self.results is not None:
            self.results.close()
        if self.frames is not None:
            self.frames.close()
        if self._own_ctx:
            self.ctx.term()
