"""The inference node: frames in, results out, from any model (or chain) on any backend.

Sockets: *frames* SUB, connected to an acquisition node's frame stream (subscribes to ``image``;
policy *latest*: the newest frame, what a controller wants); or, with ``work_endpoint``, a PULL
connected to the acquisition node's *work* stream (policy *lossless*: every frame, in order —
per-frame analysis; N workers connected to one stream share its frames, each frame to one);
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
from scopeflow.transport.streams import LATEST_HWM, LatestReceiver, LosslessReceiver, send

log = logging.getLogger(__name__)

WORK_CAPACITY = 4  # frames a worker queues: few, so a killed worker takes few frames with it
RESULTS_HWM = 10_000  # every-frame results (detections are small) must not meet the HWM


class _EveryFrame:
    """A lossless receiver with the latest receiver's ``poll``: images only, every one."""

    def __init__(self, receiver: LosslessReceiver) -> None:
        self.receiver = receiver

    def poll(self, timeout_ms: int):
        msg = self.receiver.poll(timeout_ms)
        return msg if msg is not None and msg.kind == "image" else None


#: a rate-capped node subscribes to frames again this long before the next one is due
RESUBSCRIBE_LEAD_S = 0.1


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
    detect_pixel_nm: float | None = None  # particle detector: analyse finer frames binned to this
    #: every frame from this lossless endpoint (connect) instead of the newest from frames
    work_endpoint: str | None = None
    #: latest-only: analyse at most this many frames a second (a display path that leaves the
    #: cores to the every-frame workers); None: as fast as the model goes
    max_rate_hz: float | None = None
    max_side: int | None = None  # denoiser: bin larger frames to fit this side (display path)


class InferNode:
    """Runs its model on the newest frame and publishes the results, until :meth:`stop`."""

    def __init__(
        self, config: InferConfig, ctx: zmq.Context | None = None, metrics_port: int | None = None
    ) -> None:
        self.config = config
        if config.max_rate_hz is not None:
            if config.work_endpoint is not None:
                raise ValueError("--max-rate applies to the latest-only path, not to --work")
            if not config.max_rate_hz > 0:
                raise ValueError(f"--max-rate must be positive, got {config.max_rate_hz:g}")
        self.processor: Processor = make_processor(
            config.model,
            config.backend,
            config.acnet,
            config.calibration,
            config.materials,
            config.oxide,
            config.detect_pixel_nm,
            config.max_side,
        )
        self.rt = NodeRuntime(config.name, "infer", ctx, metrics_port)
        self.receiver: LatestReceiver | _EveryFrame
        if config.work_endpoint is None:
            self.frames = self.rt.socket(zmq.SUB)
            self.frames.setsockopt(zmq.RCVHWM, LATEST_HWM)
            self.frames.setsockopt(zmq.SUBSCRIBE, b"image")
            self.frames.setsockopt(zmq.SUBSCRIBE, b"status")  # the acquisition's heartbeats
            endpoints.connect(self.frames, config.frames_endpoint)
            self.receiver = LatestReceiver(
                self.frames, self.rt.metrics, data_kinds=("image",), on_other=self._on_upstream
            )
        else:
            self.frames = self.rt.socket(zmq.PULL)
            # Gaps are the other workers' frames, not losses (protocol §8.3): the sender
            # counts overruns, the results' consumer sees what is missing.
            every = LosslessReceiver(
                self.frames, self.rt.metrics, capacity=WORK_CAPACITY, count_gaps=False
            )
            self.receiver = _EveryFrame(every)
            endpoints.connect(self.frames, config.work_endpoint)
        self.results = self.rt.socket(zmq.PUB)
        self.results.setsockopt(zmq.SNDHWM, RESULTS_HWM)
        self.results_endpoint = endpoints.bind(self.results, config.results_endpoint)
        self._upstream: dict[str, float] = {}  # series heard on the frame stream → when

    @property
    def metrics(self):
        return self.rt.metrics

    def stop(self) -> None:
        self.rt.stop()

    def run(self) -> None:
        """Serve until stopped, then close the sockets."""
        rate = self.config.max_rate_hz
        next_at = 0.0  # with a rate cap: no frame taken before this
        pending = None  # the newest frame that came before then
        subscribed = True
        try:
            while not self.rt.stopping:
                if not subscribed and time.monotonic() >= next_at - RESUBSCRIBE_LEAD_S:
                    # Frames from before the pause are stale: only those from now on count.
                    self.frames.setsockopt(zmq.SUBSCRIBE, b"image")
                    subscribed, pending = True, None
                # Keep draining while capped: a full subscriber queue drops the *new* frames,
                # so sleeping instead would hand over stale ones.
                wait_ms = (next_at - time.monotonic()) * 1000
                msg = self.receiver.poll(
                    POLL_MS if wait_ms <= 0 else int(min(POLL_MS, wait_ms) + 1)
                )
                if msg is not None:
                    self._heard(msg.header.series_unique_id)
                    if pending is not None:
                        self.rt.metrics.inc("frames_skipped")
                    pending = msg
                if pending is not None and time.monotonic() >= next_at:
                    if rate is not None:
                        next_at = time.monotonic() + 1.0 / rate
                        if next_at - time.monotonic() > 2 * RESUBSCRIBE_LEAD_S:
                            # Capped: stop the camera's frames until shortly before the next
                            # one is due (at 1024² and 30 fps, 60 MB/s not sent for nothing).
                            self.frames.setsockopt(zmq.UNSUBSCRIBE, b"image")
                            subscribed = False
                    msg, pending = pending, None
                    self._handle(msg)
                beat = self.rt.heartbeat_due(
                    model=self.processor.name,
                    serves=list(getattr(self.processor, "kinds", [self.processor.kind])),
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
