"""The inference node serving each shipped model over real ipc sockets.

Each test runs a real acquisition node (simulated microscope, continuous mode) and an inference
node with a learned model on ONNX Runtime, and reads the typed results off the node's PUB socket
as any consumer would. The frames' own ground truth (``header.truth``, or the simulator it came
from) is what the answers are checked against.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from scopeflow.inference.models.denoiser import noise_level
from scopeflow.inference.node import InferConfig, InferNode
from scopeflow.schemas.codec import Message, decode
from scopeflow.schemas.results import DetectionsResult, FocusEstimate
from scopeflow.schemas.series import DenoisedHeader
from scopeflow.transport.streams import send
from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera
from scopeflow_lab.sim.optical import OpticalConfig, SimulatedOpticalMicroscope
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

from children import header_for
from harness import pipeline, running


class Listener:
    """A SUB on an endpoint that collects decoded messages of the kinds it subscribes to."""

    def __init__(self, ctx: zmq.Context, endpoint: str, kinds: tuple[str, ...]) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for kind in kinds:
            self.sock.setsockopt(zmq.SUBSCRIBE, kind.encode())
        self.sock.connect(endpoint)

    def next(self, timeout_s: float = 30.0) -> Message:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                return decode(self.sock.recv_multipart(copy=False))
        raise AssertionError(f"no message within {timeout_s} s")

    def close(self) -> None:
        self.sock.close()


@contextmanager
def listening(ctx: zmq.Context, endpoint: str, *kinds: str) -> Iterator[Listener]:
    """A :class:`Listener`, closed before its context is terminated."""
    listener = Listener(ctx, endpoint, kinds)
    try:
        yield listener
    finally:
        listener.close()


def test_aenet_node_scores_sem_frames_and_its_defocus_tracks_the_truth(ipc_dir):
    sem = SimulatedSEM(
        SEMConfig(
            frame_shape=(384, 384), settle_s=0.0, seed=5, start_wd_um=SEMConfig().focus_wd_um + 25.0
        )
    )
    with (
        pipeline(ipc_dir, sem, evaluator="aenet", mode="continuous", frame_rate_hz=20.0) as p,
        listening(p.ctx, p.results, "focus") as results,
    ):
        est = results.next().header
    assert isinstance(est, FocusEstimate) and est.evaluator == "aenet" and est.signal == "ok"
    assert 0.0 <= est.score <= 9.0 and est.quality_level == int(np.floor(est.score))
    true_dof = abs(est.truth.defocus_um) / est.truth.dof_um
    # 25 µm at this DoF is well out of focus; AENet's |Δz| estimate is within a factor 2.
    assert true_dof > 3
    assert true_dof / 2 <= est.abs_defocus_dof <= true_dof * 2


def test_denoiser_node_publishes_a_cleaner_frame_of_the_same_image(ipc_dir):
    sem = SimulatedSEM(SEMConfig(frame_shape=(256, 256), settle_s=0.0, seed=2, dose_e_per_px=15.0))
    with (
        pipeline(ipc_dir, sem, evaluator="denoiser", mode="continuous", frame_rate_hz=10.0) as p,
        listening(p.ctx, p.frames, "image") as frames,
        listening(p.ctx, p.results, "denoised") as results,
    ):
        out = results.next()
        seen: dict[int, np.ndarray] = {}
        while out.header.image_id not in seen:
            msg = frames.next()
            seen[msg.header.image_id] = msg.array().copy()
            if msg.header.image_id > out.header.image_id:
                out = results.next()
    assert isinstance(out.header, DenoisedHeader) and out.header.model == "denoiser"
    noisy = seen[out.header.image_id].astype(np.float64)
    clean = out.array()
    assert clean.shape == noisy.shape and clean.dtype == np.float32
    # Same picture (high correlation), far less noise by the content-blind Haar estimate.
    assert np.corrcoef(clean.ravel(), noisy.ravel())[0, 1] > 0.5
    assert noise_level(clean) < 0.5 * noise_level(noisy.astype(np.float32))


def test_flake_detector_node_reports_flakes_with_masks(ipc_dir):
    scope = SimulatedOpticalMicroscope(OpticalConfig(seed=3))
    with (
        pipeline(
            ipc_dir, scope, evaluator="flake_detector", mode="continuous", frame_rate_hz=2.0
        ) as p,
        listening(p.ctx, p.results, "detections") as results,
    ):
        msg = results.next(60.0)
    res = msg.header
    assert isinstance(res, DetectionsResult) and res.model == "flake_detector"
    assert res.detections, "a default chip tile holds flakes"
    for det in res.detections:
        assert det.category not in ("residue", "dirt")  # decoys are left out by default
        assert 0.0 < det.score <= 1.0 and det.area_px > 0 and det.mask is not None
        assert tuple(det.mask.size) == (1200, 1920)


def test_particle_detector_node_finds_the_particles_of_an_insitu_frame(ipc_dir):
    camera = SimulatedInSituCamera(InSituConfig(frame_shape=(512, 512), fps=5.0, seed=4))
    with (
        pipeline(
            ipc_dir, camera, evaluator="particle_detector", mode="continuous", frame_rate_hz=5.0
        ) as p,
        listening(p.ctx, p.results, "detections") as results,
    ):
        res = results.next(60.0).header
    assert isinstance(res, DetectionsResult) and res.model == "particle_detector"
    assert res.detections and all(d.category == "particle" for d in res.detections)
    for det in res.detections:
        x, y, w, h = det.bbox_xywh_px
        cx, cy = det.centroid_xy_px
        assert x <= cx <= x + w and y <= cy <= y + h


@pytest.mark.parametrize("model", ["aenet", "denoiser", "particle_detector"])
def test_a_frame_the_model_cannot_take_is_counted_and_the_node_keeps_serving(ipc_dir, model):
    ctx = zmq.Context()
    frames = f"ipc://{ipc_dir}/f"
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(frames)
    node = InferNode(
        InferConfig(
            frames_endpoint=frames,
            results_endpoint=f"ipc://{ipc_dir}/r",
            model=model,
            backend="onnxruntime",
        ),
        ctx=ctx,
    )
    rng = np.random.default_rng(0)
    good = rng.poisson(200.0, (128, 128)).astype(np.uint16)
    two_channels = np.stack([good, good], axis=-1)  # neither grey nor RGB
    try:
        with (
            listening(ctx, f"ipc://{ipc_dir}/r", "focus", "denoised", "detections") as results,
            running(node),
        ):
            time.sleep(0.5)  # let both subscriptions reach their PUBs
            send(pub, header_for(1, two_channels.shape), [two_channels])
            time.sleep(0.3)  # 'latest' would merge the two frames if they arrived together
            send(pub, header_for(2, good.shape), [good])
            msg = results.next()
            assert msg.header.image_id == 2
            assert node.metrics.value("frames_failed", model=model) == 1
            assert node.processor.backend == "onnxruntime"
    finally:
        pub.close()
        ctx.term()
