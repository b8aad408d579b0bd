"""Autofocus by golden-section search on a classical sharpness score: the baseline.

A transport-free state machine in ask/tell form: :meth:`GoldenSectionAutofocus.next_wd` says
where the next frame should be taken (None when done) and :meth:`tell` takes the score of that
frame. The runner (``control/runner.py``) moves the microscope and fetches the scores.

Phases: *start* (score the frame where we are) → *search* (golden section over
start ± search range, clipped to the limits, until the bracket is narrower than twice the
tolerance) → *verify* (a frame at the chosen WD) → done with a stop reason:

- ``converged``: the bracket shrank to the tolerance inside the limits;
- ``no_signal``: the first frame had no usable signal, or the score did not vary over the search;
- ``limit``: the best score lies at a WD limit (focus is probably beyond it);
- ``timeout``: the frame budget ran out (the runner also uses it when a peer stops answering).

Safety: the final WD is never one whose frame scored worse than the starting frame; if the
verification frame is worse than the start, the machine returns to the start WD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from scopeflow.schemas.results import Signal
from scopeflow.schemas.state import Limits

StopReason = Literal["converged", "no_signal", "limit", "timeout"]
INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618…


@dataclass(frozen=True)
class AutofocusConfig:
    """Search parameters, in depth-of-field (DoF) units where possible."""

    search_range_dof: float = 30.0
    tolerance_dof: float = 0.5
    max_frames: int = 40
    # The score must vary by at least this fraction of its maximum over the search, or the
    # frames carry no focus information and we stop with no_signal.
    min_relative_contrast: float = 0.02


@dataclass
class Probe:
    """One frame taken during the search."""

    wd_um: float
    score: float
    signal: Signal
    phase: str


@dataclass
class GoldenSectionAutofocus:
    """The search state machine; construct with the start WD, the limits and the DoF."""

    start_wd_um: float
    limits: Limits
    dof_um: float
    config: AutofocusConfig = field(default_factory=AutofocusConfig)

    phase: Literal["start", "search", "verify", "done"] = "start"
    stop_reason: StopReason | None = None
    final_wd_um: float | None = None
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.dof_um > 0 and math.isfinite(self.dof_um)):
            raise ValueError(f"dof_um must be positive and finite, got {self.dof_um}")
        rng = self.config.search_range_dof * self.dof_um
        self._a = max(self.start_wd_um - rng, self.limits.wd_min_um)
        self._b = min(self.start_wd_um + rng, self.limits.wd_max_um)
        self._c = self._b - INV_PHI * (self._b - self._a)
        self._d = self._a + INV_PHI * (self._b - self._a)
        self._fc: float | None = None
        self._fd: float | None = None
        self._pending: float | None = self.start_wd_um
        self._verify_wd: float | None = None

    # -- ask / tell -------------------------------------------------------------------------------
    def next_wd(self) -> float | None:
        """WD (µm) for the next frame, or None when finished (see ``stop_reason``)."""
        if self.phase == "done":
            return None
        if len(self.probes) >= self.config.max_frames:
            self._finish("timeout", self._best_safe_wd())
            return None
        return self._pending

    def tell(self, wd_um: float, score: float, signal: Signal = "ok") -> None:
        """Record the score of the frame taken at ``wd_um`` (the WD reported with the frame)."""
        if self.phase == "done":
            raise RuntimeError("autofocus already finished")
        self.probes.append(Probe(wd_um, score, signal, self.phase))
        if self.phase == "start":
            self._after_start(signal)
        elif self.phase == "search":
            self._after_search_probe(score)
        elif self.phase == "verify":
            self._after_verify(score)

    # -- phases -----------------------------------------------------------------------------------
    def _after_start(self, signal: Signal) -> None:
        if signal != "ok":
            self._finish("no_signal", self.start_wd_um)
            return
        self.phase = "search"
        self._pending = self._c

    def _after_search_probe(self, score: float) -> None:
        if self._fc is None:
            self._fc = score
            self._pending = self._d
            return
        if self._fd is None:
            self._fd = score
        elif self._pending == self._c:
            self._fc = score
        else:
            self._fd = score
        if self._b - self._a <= 2.0 * self.config.tolerance_dof * self.dof_um:
            self._end_search()
            return
        # Maximise: keep the side of the better inner point.
        if self._fc >= self._fd:
            self._b, self._d, self._fd = self._d, self._c, self._fc
            self._c = self._b - INV_PHI * (self._b - self._a)
            self._pending = self._c
        else:
            self._a, self._c, self._fc = self._c, self._d, self._fd
            self._d = self._a + INV_PHI * (self._b - self._a)
            self._pending = self._d

    def _end_search(self) -> None:
        scores = [p.score for p in self.probes if p.signal == "ok"]
        top = max(scores)
        if top <= 0 or (top - min(scores)) < self.config.min_relative_contrast * top:
            self._finish("no_signal", self.start_wd_um)
            return
        best = self._refined_peak()
        self._verify_wd = best
        self.phase = "verify"
        self._pending = best

    def _after_verify(self, score: float) -> None:
        assert self._verify_wd is not None
        start_score = self.probes[0].score
        wd = self._verify_wd if score >= start_score else self.start_wd_um
        tol = self.config.tolerance_dof * self.dof_um
        at_limit = (wd - self.limits.wd_min_um < tol and self._a <= self.limits.wd_min_um) or (
            self.limits.wd_max_um - wd < tol and self._b >= self.limits.wd_max_um
        )
        self._finish("limit" if at_limit else "converged", wd)

    def _finish(self, reason: StopReason, wd_um: float) -> None:
        self.phase = "done"
        self.stop_reason = reason
        self.final_wd_um = wd_um
        self._pending = None

    # -- helpers ----------------------------------------------------------------------------------
    def _refined_peak(self) -> float:
        """Vertex of a parabola through the best probe and its neighbours, kept in the bracket."""
        ok = sorted((p for p in self.probes if p.signal == "ok"), key=lambda p: p.wd_um)
        i = max(range(len(ok)), key=lambda k: ok[k].score)
        if 0 < i < len(ok) - 1:
            xs = np.array([p.wd_um for p in ok[i - 1 : i + 2]])
            ys = np.array([p.score for p in ok[i - 1 : i + 2]])
            if np.ptp(xs) > 0 and len(set(xs)) == 3:
                curv, slope, _ = np.polyfit(xs - xs[1], ys, 2)
                if curv < 0:  # a maximum: take its vertex, kept between the neighbours
                    return float(np.clip(xs[1] - slope / (2 * curv), xs[0], xs[2]))
        return ok[i].wd_um

    def _best_safe_wd(self) -> float:
        """The best-scoring WD seen so far, or the start when nothing beat it."""
        ok = [p for p in self.probes if p.signal == "ok"]
        if not ok:
            return self.start_wd_um
        return max(ok, key=lambda p: p.score).wd_um
