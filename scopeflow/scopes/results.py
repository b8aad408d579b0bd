"""One typed subscriber for the results stream: the kinds a job needs, policy *latest*.

It subscribes to the result kinds asked for (``focus``, ``detections``, ``denoised``) and to
inference-node heartbeats (so a job knows the results path is connected before it starts: a
PUB/SUB connection drops whatever is sent before it is established). The newest result of each
kind is kept, and a short history of each (``HISTORY`` results), so waiting for one kind never
loses another that arrived meanwhile, and a job may collect a frame's result after it has taken
the next frame (flake search reads detections of a tile while the stage moves on).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import zmq

from scopeflow.errors import PeerTimeout
from scopeflow.metrics import NodeMetrics
from scopeflow.schemas.codec import Message
from scopeflow.schemas.results import NodeStatus
from scopeflow.scopes.base import check_kinds
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LATEST_HWM, LatestReceiver

HISTORY = 32  # results kept per kind


class ResultSubscriber:
    """Subscribes to ``kinds`` results and ``status`` heartbeats on one results endpoint."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        metrics: NodeMetrics,
        kinds: tuple[str, ...] = ("focus",),
    ) -> None:
        check_kinds(kinds)
        self.metrics = metrics
        self.kinds = kinds
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, LATEST_HWM)
        for topic in (*kinds, "status"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        endpoints.connect(self.sock, endpoint)
        self.receiver = LatestReceiver(
            self.sock, metrics, data_kinds=kinds, on_other=self._on_other
        )
        self.last_status_ns: int | None = None
        self.nodes: dict[str, NodeStatus] = {}  # the newest heartbeat of each node, by name
        self._recent: dict[str, deque[Message]] = {k: deque(maxlen=HISTORY) for k in kinds}

    def close(self) -> None:
        self.sock.close()

    def _on_other(self, msg: Message) -> None:
        if msg.kind == "status":
            self.last_status_ns = time.monotonic_ns()
            self.nodes[msg.header.node] = msg.header

    def unserved(self, kinds: tuple[str, ...], series: str) -> list[str]:
        """The ``kinds`` no inference node reports serving from the frames of ``series``
        (1.3 heartbeats: ``serves`` and ``frames_from``); empty when every kind is served."""
        served = {
            kind
            for beat in self.nodes.values()
            if beat.role == "infer" and series in (beat.frames_from or ())
            for kind in beat.serves or ()
        }
        return [k for k in kinds if k not in served]

    def poll(self, timeout_ms: int) -> None:
        """Take in what arrived within ``timeout_ms`` (heartbeats and results)."""
        for kind, msg in self.receiver.poll_each(timeout_ms).items():
            self._recent[kind].append(msg)

    def wait_connected(self, timeout_s: float) -> None:
        """Block until an inference-node heartbeat arrives; PeerTimeout after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.last_status_ns is None:
            if time.monotonic() > deadline:
                raise PeerTimeout(
                    f"no heartbeat from an inference node within {timeout_s:g} s; "
                    "check the results endpoint and that the inference node runs"
                )
            self.poll(50)

    def wait_for(
        self,
        image_id: int,
        min_command_seq: int,
        timeout_s: float,
        series: str | None = None,
        kind: str = "focus",
    ) -> Any:
        """The ``kind`` result of frame ``image_id`` of ``series`` (or of a newer frame),
        ignoring stale ones: the header for ``focus`` and ``detections``, the message for
        ``denoised``.

        A result is stale when its frame was taken before the last state-changing command
        (``command_seq < min_command_seq``); it is counted and skipped. Results of another
        series (a restarted acquisition node) are skipped too.
        """
        if kind not in self.kinds:
            raise ValueError(f"this subscriber reads {self.kinds}, not {kind!r}")
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._take(kind, image_id, min_command_seq, series)
            if found is not None:
                return found if kind == "denoised" else found.header
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise PeerTimeout(
                    f"no {kind} result for image {image_id} within {timeout_s:g} s; "
                    "is an inference node serving it and subscribed to the frame stream?"
                )
            self.poll(remaining_ms)

    def _take(
        self, kind: str, image_id: int, min_command_seq: int, series: str | None
    ) -> Message | None:
        """The result of ``image_id`` from the history, else the oldest one of a newer frame;
        results of another series and stale ones are dropped (stale ones counted), the rest
        kept for later waits."""
        usable: list[Message] = []
        for msg in self._recent[kind]:
            header = msg.header
            if series is not None and header.series_unique_id != series:
                continue
            if header.command_seq < min_command_seq:
                self.metrics.inc("stale_results_ignored")
                continue
            usable.append(msg)
        exact = [m for m in usable if m.header.image_id == image_id]
        newer = [m for m in usable if m.header.image_id > image_id]
        chosen = exact[0] if exact else min(newer, key=lambda m: m.header.image_id, default=None)
        self._recent[kind] = deque((m for m in usable if m is not chosen), maxlen=HISTORY)
        return chosen
