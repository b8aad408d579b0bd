"""Focus tracking during a continuous acquisition: keep the specimen in focus against drift.

After an autofocus, focus drifts (thermal drift of the column, a tilted specimen moving under
the beam). The tracker sets the WD of each live frame to its prediction of focus,
``f̂ + v̂·(t − t_last)``, and re-measures focus only now and then, with two extra frames:

- **Refocus.** Probe frames at the predicted focus ± ``probe_dof``; with the live frame between
  them, the three log-sharpness values fit the V that sharpness makes near focus (DESIGN §5:
  blur grows linearly with |Δz|) and give focus to a fraction of a DoF. Each refocus adds a
  point to a least-squares line through the measured foci: the drift velocity ``v̂``.
- **When.** After ``interval`` live frames (doubled after a refocus that found the prediction
  within ``good_offset_dof``, halved otherwise, between ``min_interval`` and ``max_interval``),
  or at once when a live frame's sharpness falls below the post-refocus reference by what
  ``drop_dof`` of defocus would cost on the last fitted V (the score dropped).

The tracker uses a classical sharpness of the frame (sent with AENet's estimates), which is
stable from frame to frame on the same field; a field that changes (a tile scan moving to new
specimen) resets the reference at each refocus, and the drop trigger compares within a field
only. ``next_frame`` and ``tell`` are transport-free (ask/tell), like the autofocus machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from scopeflow.control.learned_autofocus import FrameReading
from scopeflow.schemas.state import Limits

FrameKind = Literal["live", "probe"]


@dataclass(frozen=True)
class TrackerConfig:
    """Refocus geometry and schedule, in DoF units and live frames."""

    probe_dof: float = 1.0
    first_interval: int = 30
    min_interval: int = 15
    max_interval: int = 400
    good_offset_dof: float = 0.15
    drop_dof: float = 0.35
    history: int = 6  # refocus results used for the drift velocity


class FocusTracker:
    """Tracks focus from ``wd_um`` (in focus at time 0); time is in the caller's units."""

    def __init__(
        self, wd_um: float, dof_um: float, limits: Limits, config: TrackerConfig | None = None
    ) -> None:
        if not (dof_um > 0 and math.isfinite(dof_um)):
            raise ValueError(f"dof_um must be positive and finite, got {dof_um}")
        self.dof_um = dof_um
        self.limits = limits
        self.config = cfg = config or TrackerConfig()
        self.fits: list[tuple[float, float]] = [(0.0, wd_um)]  # (time, measured focus WD)
        self.velocity_um = 0.0  # per time unit
        self.interval = cfg.first_interval
        self.live_since_refocus = 0
        self.extra_frames = 0
        self.refocus_count = 0
        self.slope_per_dof: float | None = None  # of log sharpness, from the last V fit
        self._reference: float | None = None  # log sharpness of the first live frame after
        # the last refocus: the drop trigger's reference
        self._probes: list[FrameReading] = []
        self._pending: list[float] = []  # probe WDs still to take
        self._live: FrameReading | None = None
        self._live_t = 0.0

    def predicted_wd(self, t: float) -> float:
        """Where the tracker thinks focus is at time ``t``."""
        t_last, wd_last = self.fits[-1]
        wd = wd_last + self.velocity_um * (t - t_last)
        return min(max(wd, self.limits.wd_min_um), self.limits.wd_max_um)

    def next_frame(self, t: float) -> tuple[float, FrameKind]:
        """(WD, kind) of the next frame, to be taken at time ``t``."""
        if self._pending:
            return self._pending[0], "probe"
        return self.predicted_wd(t), "live"

    def tell(self, reading: FrameReading, kind: FrameKind, t: float) -> None:
        """The reading of the frame ``next_frame`` asked for."""
        if kind == "probe":
            self.extra_frames += 1
            self._pending.pop(0)
            if reading.signal == "ok" and reading.sharpness:
                self._probes.append(reading)
            if not self._pending:
                self._refit(t)
            return
        if reading.signal != "ok" or not reading.sharpness:
            return  # a frame without signal says nothing about focus; keep the prediction
        self.live_since_refocus += 1
        log_s = math.log(reading.sharpness)
        if self._reference is None:
            self._reference = log_s
        dropped = (
            self.slope_per_dof is not None
            and self._reference - log_s > self.slope_per_dof * self.config.drop_dof
        )
        if dropped or self.live_since_refocus >= self.interval:
            self._start_refocus(reading, t)

    # -- refocus ---------------------------------------------------------------------------------
    def _start_refocus(self, live: FrameReading, t: float) -> None:
        h = self.config.probe_dof * self.dof_um
        self._live, self._live_t = live, t
        self._probes = []
        self._pending = [
            min(max(live.wd_um + s * h, self.limits.wd_min_um), self.limits.wd_max_um)
            for s in (-1.0, 1.0)
        ]

    def _refit(self, t: float) -> None:
        live = self._live
        assert live is not None and live.sharpness
        self.refocus_count += 1
        self.live_since_refocus = 0
        self._reference = None
        points = sorted([live, *self._probes], key=lambda r: r.wd_um)
        if len(points) < 3:
            return
        focus = self._v_apex(points)
        if focus is None:
            return
        predicted = self.predicted_wd(self._live_t)
        offset = abs(focus - predicted) / self.dof_um
        cfg = self.config
        self.interval = (
            min(2 * self.interval, cfg.max_interval)
            if offset < cfg.good_offset_dof
            else max(self.interval // 2, cfg.min_interval)
        )
        self.fits.append((self._live_t, focus))
        recent = self.fits[-cfg.history :]
        if len(recent) >= 2:
            ts = np.array([p[0] for p in recent])
            ws = np.array([p[1] for p in recent])
            if np.ptp(ts) > 0:
                self.velocity_um = float(np.polyfit(ts, ws, 1)[0])

    def _v_apex(self, points: list[FrameReading]) -> float | None:
        """Focus WD from three frames at x − h, x, x + h: the apex of the sharpness V."""
        x = np.array([p.wd_um for p in points])
        y = np.log(np.array([p.sharpness for p in points], dtype=float))
        h = (x[2] - x[0]) / 2.0
        if h <= 0:
            return None
        best = int(np.argmax(y))
        if best == 1:
            if y[0] <= y[2]:  # focus in the upper half: the lower pair is on one branch
                b = (y[1] - y[0]) / h
                apex = x[1] + h / 2.0 - (y[1] - y[2]) / (2.0 * b) if b > 0 else x[1]
            else:
                b = (y[1] - y[2]) / h
                apex = x[1] - h / 2.0 + (y[1] - y[0]) / (2.0 * b) if b > 0 else x[1]
            apex = float(np.clip(apex, x[0], x[2]))
        else:  # focus beyond an end: go to that end and let the next refocus look further
            b = abs(y[2] - y[0]) / (2.0 * h)
            apex = float(x[best])
        if b > 0:
            self.slope_per_dof = b * self.dof_um
        return apex
