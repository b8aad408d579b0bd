"""A camera at any frame rate: a simulator's frames rendered once, then replayed.

Recording and delivery are tested at rates (300 fps at 512², 100 fps at 1k²) that the physics
simulators cannot render on two cores. What those tests need of the pixels is that they are
realistic to compress (the simulator's own frames) and that every frame is distinct, so a
frame recorded twice or out of order is caught: each replayed frame carries its serial number
in its first four pixels (16 bits each, little end first; :func:`serial_of`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from scopeflow.devices.protocols import Frame

SERIAL_PIXELS = 4


def stamp(pixels: np.ndarray, serial: int) -> np.ndarray:
    """A copy of ``pixels`` (2-D, integer) with ``serial`` in its first four pixels."""
    out = pixels.copy()
    flat = out.reshape(-1)
    for k in range(SERIAL_PIXELS):
        flat[k] = (serial >> (16 * k)) & 0xFFFF
    return out


def serial_of(pixels: np.ndarray) -> int:
    """The serial number :func:`stamp` wrote into a frame."""
    flat = np.asarray(pixels).reshape(-1)
    return sum(int(flat[k]) << (16 * k) for k in range(SERIAL_PIXELS))


class PooledCamera:
    """Wraps a simulated microscope: ``pool`` frames rendered at construction, replayed in
    turn with fresh timestamps and serial numbers. Everything else goes to the simulator."""

    def __init__(self, inner: Any, pool: int = 32) -> None:
        self.inner = inner
        self.name = f"pooled-{getattr(inner, 'name', 'camera')}"
        self.pool = [inner.acquire() for _ in range(pool)]
        if self.pool[0].pixels.dtype.kind not in "ui":
            raise ValueError("a pooled camera stamps integer frames only")
        self.produced = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def original(self, serial: int) -> np.ndarray:
        """The pixels frame ``serial`` was made from (before its stamp)."""
        return self.pool[serial % len(self.pool)].pixels

    def expected(self, serial: int) -> np.ndarray:
        """Frame ``serial`` exactly as this camera produced it."""
        return stamp(self.original(serial), serial)

    def acquire(self) -> Frame:
        serial = self.produced
        base = self.pool[serial % len(self.pool)]
        now_ns, mono = time.time_ns(), time.monotonic_ns()
        exposure_ns = int((base.state.exposure_s or 0.0) * 1e9)  # as configured, not as rendered
        self.produced += 1
        return replace(
            base,
            pixels=stamp(base.pixels, serial),
            start_time_ns=now_ns - exposure_ns,
            stop_time_ns=now_ns,
            monotonic_ns=mono,
            truth=None,
        )
