"""The inference node: frames in (policy *latest*), results out, from any model on any backend.

Sockets: *frames* SUB, connected to an acquisition node's frame stream (subscribes to ``image``);
*results* PUB, bound; publishes ``focus`` (classical metrics, AENet), ``denoised`` (denoiser),
``detections`` (detectors) and ``status``. A malformed message is rejected and counted; a frame
the model cannot take (wrong channels, non-finite pixels…) is counted as ``frames_failed`` with
its reason logged; either way the node keeps serving.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq

from scopeflow.inference.processors import Processor, make_processor
from scopeflow.runtime import POLL_MS, NodeRuntime
from scopeflow.schemas.results import FRAMES_FROM_WINDOW_S
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LATEST_HWM, LatestReceiver, send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferConfig:
    """Endpoints, model and backend of an inference node."""

    frames_endpoint: str = "tcp://127.0.0.1:5550"
    results_endpoint: str = "tcp://127.0.0.1:5552"
    model: str = "normalized_variance"
    backend: str = "auto"
    name: str = "infer"
    acnet: bool = True  # with AENet: ACNet's proposal in every focus result
    calibration: str | None = None  # flake detector: a setup calibration folder
    materials: tuple[str, ...] | None = None  # flake detector: the chip's materials
    oxide: str | None = None  # flake detector: SiO₂ nm, LO-HI or "auto" (physics prior)


class InferNode:
    """Runs its model on the newest frame and publishes the results, until :meth:`stop`."""

    def __init__(
        self, config: InferConfig, ctx: zmq.Context | None = None, metrics_port: int | None = None
    ) -> None:
        self.config = config
        self.processor: Processor = make_processor(
            config.model,
            config.backend,
            config.acnet,
            config.calibration,
            config.materials,
            config.oxide,
        )
        self.rt = NodeRuntime(config.name, "infer", ctx, metrics_port)
        self.frames = self.rt.socket(zmq.SUB)
        self.frames.setsockopt(zmq.RCVHWM, LATEST_HWM)
        self.frames.setsockopt(zmq.SUBSCRIBE, b"image")
        self.frames.setsockopt(zmq.SUBSCRIBE, b"status")  # the acquisition node's heartbeats
        endpoints.connect(self.frames, config.frames_endpoint)
        self.results = self.rt.socket(zmq.PUB)
        self.results_endpoint = endpoints.bind(self.results, config.results_endpoint)
        self.receiver = LatestReceiver(
            self.frames, self.rt.metrics, data_kinds=("image",), on_other=self._on_upstream
        )
        self._upstream: dict[str, float] = {}  # series heard on the frame stream → when

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
                    self._heard(msg.header.series_unique_id)
                    self._handle(msg)
                beat = self.rt.heartbeat_due(
                    model=self.processor.name,
                    serves=[self.processor.kind],
                    frames_from=self._frames_from(),
                )
                if beat is not None:
                    send(self.results, beat)
        finally:
            self.rt.close()

    def _on_upstream(self, msg) -> None:
        """Heartbeats of acquisition nodes (1.3 name their series) prove the frames path."""
        series = getattr(msg.header, "series_unique_id", None)
        if msg.kind == "status" and series is not None:
            self._heard(series)

    def _heard(self, series: str) -> None:
        if series not in self._upstream:
            self.rt.beat_now()  # a job may be waiting for exactly this
        self._upstream[series] = time.monotonic()

    def _frames_from(self) -> list[str]:
        """The series heard recently, newest first (at most 16, as the schema allows)."""
        cutoff = time.monotonic() - FRAMES_FROM_WINDOW_S
        for series in [s for s, t in self._upstream.items() if t < cutoff]:
            del self._upstream[series]
        return sorted(self._upstream, key=self._upstream.__getitem__, reverse=True)[:16]

    def _handle(self, msg) -> None:
        try:
            results = self.processor.process(msg)
        except ValueError as exc:  # this frame does not suit the model; the next one may
            self.rt.metrics.inc("frames_failed", model=self.processor.name)
            log.warning(
                "%s could not process image %d: %s", self.processor.name, msg.header.image_id, exc
            )
            return
        for header, buffers in results:
            send(self.results, header, buffers)
            self.rt.metrics.inc("results_published")
