"""Simulated cameras streaming over real sockets to consumers."""

from __future__ import annotations

import numpy as np
import zmq

from scopeflow.metrics import NodeMetrics
from scopeflow.transport.streams import LosslessReceiver
from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera

from harness import pipeline


def test_insitu_camera_streams_100_frames_to_a_lossless_consumer(ipc_dir):
    camera = SimulatedInSituCamera(InSituConfig(frame_shape=(256, 256), fps=100.0, seed=2))
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(f"ipc://{ipc_dir}/rec")
    metrics = NodeMetrics("recorder")
    receiver = LosslessReceiver(pull, metrics)
    frames = []
    try:
        with pipeline(
            ipc_dir,
            camera,
            with_infer=False,
            mode="continuous",
            frame_rate_hz=100.0,
            lossless_endpoint=f"ipc://{ipc_dir}/rec",
        ) as p:
            while len(frames) < 100:
                msg = receiver.poll(10_000)
                assert msg is not None, f"stream stalled after {len(frames)} frames"
                if msg.kind == "image":
                    frames.append((msg.header, msg.array().copy()))
            assert p.acquire.metrics.value("overruns") == 0
    finally:
        pull.close()
        ctx.term()
    ids = [h.image_id for h, _ in frames]
    assert ids == list(range(100))
    assert metrics.value("frames_lost") == 0
    for header, pixels in frames:
        assert pixels.shape == (256, 256) and pixels.dtype == np.uint16
        assert header.state.exposure_s == 0.01
    # Frames are stamped in order on the camera's clock and the scene moves between them.
    stamps = [h.monotonic_ns for h, _ in frames]
    assert stamps == sorted(stamps)
    assert not np.array_equal(frames[0][1], frames[-1][1])
