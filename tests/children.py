"""Child-process entry points for tests (spawned, so they import this module by name)."""

from __future__ import annotations

import time

import numpy as np
import zmq

from scopeflow.metrics import NodeMetrics
from scopeflow.schemas.series import ImageHeader
from scopeflow.schemas.state import MicroscopeState
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LosslessSender, send

STATE = MicroscopeState(
    wd_um=5000.0,
    wd_target_um=5000.0,
    settled=True,
    stage_x_um=0.0,
    stage_y_um=0.0,
    magnification=1000.0,
    pixel_size_nm=10.0,
)


def frame_pixels(seed: int, image_id: int, shape=(256, 256)) -> np.ndarray:
    """Deterministic content per frame, so the receiver can check every byte."""
    return np.random.default_rng([seed, image_id]).integers(0, 65535, shape, dtype=np.uint16)


def header_for(image_id: int, shape=(256, 256), monotonic_ns: int | None = None) -> ImageHeader:
    now = time.time_ns()
    return ImageHeader(
        series_id=1,
        series_unique_id="test-series",
        image_id=image_id,
        shape=shape,
        dtype="uint16",
        start_time_ns=now,
        stop_time_ns=now,
        monotonic_ns=monotonic_ns if monotonic_ns is not None else time.monotonic_ns(),
        command_seq=0,
        state=STATE,
    )


def push_frames(endpoint: str, n: int, seed: int) -> None:
    """Connect a lossless PUSH to ``endpoint`` and send ``n`` frames."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    endpoints.connect(sock, endpoint)
    sender = LosslessSender(sock, NodeMetrics("child"), capacity=8, timeout_s=10.0)
    for i in range(n):
        sender.send(header_for(i), [frame_pixels(seed, i)])
    sock.close()
    ctx.term()


def publish_frames(endpoint: str, n: int, rate_hz: float, seed: int) -> None:
    """Bind a PUB at ``endpoint``, wait for a subscriber to settle, publish ``n`` frames."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 2)
    endpoints.bind(sock, endpoint)
    time.sleep(0.5)  # PUB/SUB slow joiner: let the subscription arrive
    for i in range(n):
        send(sock, header_for(i, (64, 64)), [frame_pixels(seed, i, (64, 64))])
        time.sleep(1.0 / rate_hz)
    sock.close()
    ctx.term()
