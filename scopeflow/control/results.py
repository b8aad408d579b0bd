"""The control side of the results stream: focus estimates in, policy *latest*.

Also watches inference-node heartbeats so the controller knows the results path is connected
before it starts (a PUB/SUB connection drops whatever is sent before it is established).
"""

from __future__ import annotations

import time

import zmq

from scopeflow.errors import PeerTimeout
from scopeflow.metrics import NodeMetrics
from scopeflow.schemas.codec import Message
from scopeflow.schemas.results import FocusEstimate
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LATEST_HWM, LatestReceiver


class ResultSubscriber:
    """Subscribes to an inference node's ``focus`` and ``status`` messages."""

    def __init__(self, ctx: zmq.Context, endpoint: str, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, LATEST_HWM)
        for topic in (b"focus", b"status"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        endpoints.connect(self.sock, endpoint)
        self.receiver = LatestReceiver(
            self.sock, metrics, data_kinds=("focus",), on_other=self._on_other
        )
        self.last_status_ns: int | None = None
        self.evaluator: str | None = None

    def close(self) -> None:
        self.sock.close()

    def _on_other(self, msg: Message) -> None:
        if msg.kind == "status":
            self.last_status_ns = time.monotonic_ns()

    def wait_connected(self, timeout_s: float) -> None:
        """Block until an inference-node heartbeat arrives; PeerTimeout after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.last_status_ns is None:
            if time.monotonic() > deadline:
                raise PeerTimeout(
                    f"no heartbeat from an inference node within {timeout_s:g} s; "
                    "check the results endpoint and that the inference node runs"
                )
            self.receiver.poll(50)

    def wait_for(
        self, image_id: int, min_command_seq: int, timeout_s: float, series: str | None = None
    ) -> FocusEstimate:
        """The estimate of frame ``image_id`` of ``series`` (or a newer frame), ignoring stale ones.

        A result is stale when its frame was taken before the last state-changing command
        (``command_seq < min_command_seq``); it is counted and skipped. Results of another
        series (a restarted acquisition node) are skipped too.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise PeerTimeout(
                    f"no focus estimate for image {image_id} within {timeout_s:g} s; "
                    "is the inference node running and subscribed to the frame stream?"
                )
            msg = self.receiver.poll(remaining_ms)
            if msg is None:
                continue
            est: FocusEstimate = msg.header
            if series is not None and est.series_unique_id != series:
                continue
            if est.command_seq < min_command_seq:
                self.metrics.inc("stale_results_ignored")
                continue
            if est.image_id >= image_id:
                return est
