"""The inference node: frames in (policy *latest*), focus estimates out.

Sockets: *frames* SUB, connected to an acquisition node's frame stream (subscribes to ``image``);
*results* PUB, bound; publishes ``focus`` and ``status``. A malformed frame is rejected and
counted; the node keeps serving.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq

from scopeflow.inference.evaluators import Evaluator, get_evaluator, signal_check
from scopeflow.runtime import POLL_MS, NodeRuntime
from scopeflow.schemas.codec import Message
from scopeflow.schemas.results import FocusEstimate
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LATEST_HWM, LatestReceiver, send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferConfig:
    """Endpoints and evaluator of an inference node."""

    frames_endpoint: str = "tcp://127.0.0.1:5550"
    results_endpoint: str = "tcp://127.0.0.1:5552"
    evaluator: str = "normalized_variance"
    name: str = "infer"


class InferNode:
    """Evaluates the newest frame and publishes its focus estimate, until :meth:`stop`."""

    def __init__(
        self, config: InferConfig, ctx: zmq.Context | None = None, metrics_port: int | None = None
    ) -> None:
        self.config = config
        self.evaluator: Evaluator = get_evaluator(config.evaluator)
        self.rt = NodeRuntime(config.name, "infer", ctx, metrics_port)
        self.frames = self.rt.socket(zmq.SUB)
        self.frames.setsockopt(zmq.RCVHWM, LATEST_HWM)
        self.frames.setsockopt(zmq.SUBSCRIBE, b"image")
        endpoints.connect(self.frames, config.frames_endpoint)
        self.results = self.rt.socket(zmq.PUB)
        self.results_endpoint = endpoints.bind(self.results, config.results_endpoint)
        self.receiver = LatestReceiver(self.frames, self.rt.metrics, data_kinds=("image",))

    @property
    def metrics(self):
        return self.rt.metrics

    def stop(self) -> None:
        self.rt.stop()

    def run(self) -> None:
        """Serve until stopped, then close the sockets."""
        try:
            while not self.rt.stopping:
                msg = self.receiver.poll(POLL_MS)
                if msg is not None:
                    send(self.results, self.evaluate(msg))
                    self.rt.metrics.inc("results_published")
                beat = self.rt.heartbeat_due()
                if beat is not None:
                    send(self.results, beat)
        finally:
            self.rt.close()

    def evaluate(self, msg: Message) -> FocusEstimate:
        """The focus estimate of one image message."""
        header = msg.header
        pixels = msg.array()
        signal = signal_check(pixels, header.state.dose_e_per_px)
        score = self.evaluator(pixels) if signal == "ok" else 0.0
        return FocusEstimate(
            series_unique_id=header.series_unique_id,
            image_id=header.image_id,
            command_seq=header.command_seq,
            evaluator=self.evaluator.name,
            score=score,
            signal=signal,
            monotonic_ns=header.monotonic_ns,
            computed_monotonic_ns=time.monotonic_ns(),
            state=header.state,
            truth=header.truth,
        )
