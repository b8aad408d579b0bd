"""Autofocus driven by AENet and ACNet, with a bracketing search to fall back on.

A transport-free state machine in the same ask/tell form as the golden-section baseline
(:mod:`scopeflow.control.autofocus`): :meth:`LearnedAutofocus.next_wd` says where the next
frame goes (None when done), :meth:`tell` takes that frame's reading. Every frame counts, the
first included.

Each frame: AENet's |Δz| reading goes into a posterior over the focus WD
(:mod:`scopeflow.control.focus_model`), and ACNet proposes the next signed correction from the
last frames and the moves between them. Then, in order:

1. *no signal* (blank or saturated frame): stop with ``no_signal`` at the best WD seen so far
   (the start when nothing else was read) instead of wandering.
2. *converged*: the best target holds at least ``stop_probability`` of the posterior within
   the tolerance, at least ``min_near_frames`` near frames took part, and the target lies inside
   their span (frames on both sides of focus). The controller moves there and stops; that last
   move is not imaged by the autofocus.
3. *conflict* (no single focus position explains the readings, e.g. a specimen AENet misreads),
   *unsure* (after three frames no target holds ``min_target_probability``) or too many learned
   frames: fall back to a golden-section search on the frames' classical sharpness, over a
   bracket from the posterior (the whole search range when the readings conflict). A frame
   already taken at the bracket's centre is the search's first probe.
4. Otherwise move:
   - *far* (no frame reads near yet): towards ACNet's proposal on the first move (after one
     frame the posterior has two equal modes, the sign is unknown, and ACNet picks one), later
     towards the posterior's best target or ACNet's when it is confident and agrees; but aim
     short, at the ``approach_quantile`` of the posterior on that side. AENet's gain varies
     by ±20 % between specimens, so a jump aimed at the mode lands on either side of focus;
     one aimed short leaves focus ahead, on a known side;
   - *near*: image where the posterior most probably leaves focus between the near frames
     (inside the margin), so that their sharpness V has frames on both sides of it.

Safety: the final WD is never one whose frame read blurrier than the first frame (when it did,
the run returns to the start); targets stay inside the WD limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from scopeflow.control.autofocus import AutofocusConfig, GoldenSectionAutofocus, StopReason
from scopeflow.control.focus_model import FocusModelConfig, FocusPosterior, Reading
from scopeflow.schemas.results import Signal
from scopeflow.schemas.state import Limits

Phase = Literal["start", "acnet", "model", "probe", "search", "done"]


@dataclass(frozen=True)
class FrameReading:
    """What the controller needs from one frame's focus estimate.

    ``abs_defocus_dof`` and ``features`` come from AENet (``features``: its frame-level vector,
    see ``aenet.FEATURE_NAMES``); ``sharpness`` is a classical score of the same frame (higher
    is sharper), used by the fallback search.
    """

    wd_um: float
    signal: Signal
    abs_defocus_dof: float | None
    features: tuple[float, ...] | None
    sharpness: float | None
    dose_e_per_px: float | None = None
    proposal: tuple[float, float] | None = None  # ACNet's (correction DoF, confidence)


@dataclass(frozen=True)
class LearnedAutofocusConfig:
    """Decision thresholds (tuned on tuning seeds, not the benchmark's; docs/autofocus.md)."""

    tolerance_dof: float = 0.5
    stop_probability: float = 0.9
    min_near_frames: int = 2  # near frames (AENet ≤ near_dof) before it may stop
    min_target_probability: float = 0.05
    # Far from focus, aim short: at this quantile of the focus posterior ahead of the frame.
    approach_quantile: float = 0.15
    probe_step_dof: float = 1.0  # a probe beside a frame already taken, for the sharpness V
    straddle_margin_dof: float = 0.25  # the target must lie this far inside the near frames
    near_reach_dof: float = 3.0  # a frame this close to focus still informs the sharpness V
    min_frame_spacing_dof: float = 0.3  # no second frame this close to one already taken
    straddle_distance_cost: float = 0.02  # per DoF of expected distance from focus
    use_acnet: bool = True  # follow ACNet's proposals (when the readings carry them)
    acnet_min_confidence: float = 0.9  # after the first move, ACNet steers only when this sure
    acnet_agreement: float = 0.8
    conflict_residual: float = 6.0  # standardised log residual beyond which readings conflict
    max_learned_frames: int = 8  # frames before the search takes over
    max_frames: int = 40
    search_range_dof: float = 30.0
    min_bracket_dof: float = 3.0
    model: FocusModelConfig = field(default_factory=FocusModelConfig)


@dataclass
class Step:
    """One frame of the run and what the controller decided after it."""

    wd_um: float
    phase: str
    signal: Signal
    abs_defocus_dof: float | None
    sharpness: float | None
    decision: str = ""


class LearnedAutofocus:
    """The state machine. ACNet's proposals come with the readings (the inference node runs
    ACNet after AENet); without them, or with ``use_acnet`` off, the posterior alone steers."""

    def __init__(
        self,
        start_wd_um: float,
        limits: Limits,
        dof_um: float,
        config: LearnedAutofocusConfig | None = None,
    ) -> None:
        if not (dof_um > 0 and math.isfinite(dof_um)):
            raise ValueError(f"dof_um must be positive and finite, got {dof_um}")
        self.start_wd_um = start_wd_um
        self.limits = limits
        self.dof_um = dof_um
        self.config = cfg = config or LearnedAutofocusConfig()
        self.phase: Phase = "start"
        self.stop_reason: StopReason | None = None
        self.final_wd_um: float | None = None
        self.steps: list[Step] = []
        self.fallback_reason: str | None = None
        lo = max(self._x(limits.wd_min_um), -cfg.model.half_width_dof)
        hi = min(self._x(limits.wd_max_um), cfg.model.half_width_dof)
        self.posterior = FocusPosterior(lo, hi, cfg.model)
        self._pending: float | None = start_wd_um
        self._readings: list[FrameReading] = []
        self._search: GoldenSectionAutofocus | None = None

    # -- ask / tell -------------------------------------------------------------------------------
    def next_wd(self) -> float | None:
        """WD (µm) for the next frame, or None when finished (see ``stop_reason``)."""
        if self.phase == "done":
            return None
        if len(self.steps) >= self.config.max_frames:
            self._finish("timeout", self._best_safe_wd(), "frame budget spent")
            return None
        if self._search is not None:
            wd = self._search.next_wd()
            if wd is None:
                self._end_search()
                return None
            return wd
        return self._pending

    def tell(self, reading: FrameReading) -> None:
        """Record the reading of the frame taken at ``reading.wd_um`` (the WD reported with it)."""
        if self.phase == "done":
            raise RuntimeError("autofocus already finished")
        self._readings.append(reading)
        self.steps.append(
            Step(
                reading.wd_um,
                self.phase,
                reading.signal,
                reading.abs_defocus_dof,
                reading.sharpness,
            )
        )
        if reading.signal != "ok":
            self._finish(
                "no_signal",
                self._best_safe_wd(),
                f"frame at WD {reading.wd_um:.2f} µm has no usable signal ({reading.signal})",
            )
            return
        if self._search is not None:
            self._search.tell(reading.wd_um, self._search_score(reading), reading.signal)
            return
        if reading.abs_defocus_dof is None:
            self._fall_back(
                "the focus estimates carry no AENet |Δz| (classical evaluator?)", whole_range=True
            )
            return
        sigma = float(reading.features[1]) if reading.features else 0.0
        self.posterior.add(
            Reading(
                self._x(reading.wd_um),
                reading.abs_defocus_dof,
                sigma,
                reading.sharpness,
                reading.dose_e_per_px,
            )
        )
        self._decide()

    # -- decisions --------------------------------------------------------------------------------
    def _decide(self) -> None:
        cfg, post = self.config, self.posterior
        n = len(self.steps)
        target, p_target = post.best_target(cfg.tolerance_dof)
        # AENet has a dead zone near focus: stopping needs near frames, whose sharpness V takes
        # part, on both sides of the target (frames on one side fit a line whatever lies
        # beyond them).
        near_x = [r.x_dof for r in post.near_readings()]
        margin = cfg.straddle_margin_dof
        straddled = bool(near_x) and min(near_x) + margin < target < max(near_x) - margin
        if p_target >= cfg.stop_probability and len(near_x) >= cfg.min_near_frames and straddled:
            # Focus is known to within the tolerance: go there. The last move is not imaged
            # (the acquisition that follows is); the benchmark scores the truth at that WD.
            wd = self._clip(self._wd(target))
            self._note(f"focus at {wd:.2f} µm (p={p_target:.2f})")
            self._finish("converged", wd, "focus located by AENet and sharpness")
            return
        if n >= 2 and post.worst_residual() > cfg.conflict_residual:
            self._fall_back("AENet readings conflict", whole_range=True)
            return
        if n >= cfg.max_learned_frames:
            self._fall_back(f"focus not located after {n} frames")
            return
        if n >= 3 and p_target < cfg.min_target_probability:
            self._fall_back(
                f"unsure where focus is (best target p={p_target:.2f})", whole_range=True
            )
            return
        phase: Phase = "model"
        proposal = self._acnet_target()
        if proposal is not None:
            t_acnet, confidence = proposal
            p_acnet = post.mass_within(t_acnet, cfg.tolerance_dof)
            if (
                confidence >= cfg.acnet_min_confidence or n == 1
            ) and p_acnet >= cfg.acnet_agreement * p_target:
                target, p_target, phase = t_acnet, p_acnet, "acnet"
        taken = [self._x(r.wd_um) for r in self._readings]
        if not near_x:
            # Far from focus: aim short, so that focus lies on a known side of the next frame.
            target = self._approach_target(target)
        elif phase != "acnet":
            # Near focus: image where the sharpness V most likely gets frames on both sides.
            target, phase = self._straddle_target(near_x, taken), "probe"
        elif min(abs(target - x) for x in taken) < cfg.probe_step_dof / 2:
            # A frame there already: step past it, away from the other near frames, so the
            # sharpness V gets frames on both sides of focus.
            side = 1.0 if target >= float(np.mean(near_x)) else -1.0
            target += side * cfg.probe_step_dof
            phase = "probe"
        wd = self._clip(self._wd(target))
        self._note(f"{phase} → {wd:.2f} µm (p={p_target:.2f})")
        self.phase = phase
        self._pending = wd

    def _approach_target(self, target: float) -> float:
        """Short of ``target``: the ``approach_quantile`` of the focus posterior on its side
        of the last frame, counted from that frame. Landing short on purpose leaves focus on a
        known side of the next frame, so the frame after it need not guess the sign again."""
        q = self.config.approach_quantile
        if q >= 0.5:
            return target
        here = self._x(self._readings[-1].wd_um)
        p, f = self.posterior.density(), self.posterior.f
        side = 1.0 if target >= here else -1.0
        ahead = (f - here) * side > 0
        if not ahead.any() or p[ahead].sum() <= 0:
            return target
        fa, pa = f[ahead], p[ahead]
        order = np.argsort(np.abs(fa - here))
        cdf = np.cumsum(pa[order]) / pa.sum()
        return float(fa[order][min(int(np.searchsorted(cdf, q)), len(cdf) - 1)])

    def _straddle_target(self, near_x: list[float], taken: list[float]) -> float:
        """The WD (DoF units) whose frame most likely leaves focus between the near frames,
        inside the margin, while itself near enough to focus for the sharpness V; ties go to
        the WD closest to focus on average. WDs already imaged are skipped."""
        cfg, post = self.config, self.posterior
        p, f = post.density(), post.f
        keep = p > 1e-6 * p.max()
        p, f = p[keep] / p[keep].sum(), f[keep]
        cands = np.arange(
            f.min() - cfg.near_reach_dof, f.max() + cfg.near_reach_dof, cfg.model.grid_step_dof
        )
        fresh = np.min(np.abs(cands[:, None] - np.asarray(taken)[None, :]), axis=1)
        cands = cands[fresh >= cfg.min_frame_spacing_dof]
        if cands.size == 0:
            return post.best_target(cfg.tolerance_dof)[0]
        m = cfg.straddle_margin_dof
        lo = np.minimum(min(near_x), cands)[:, None]
        hi = np.maximum(max(near_x), cands)[:, None]
        dist = np.abs(cands[:, None] - f[None, :])
        inside = (f[None, :] > lo + m) & (f[None, :] < hi - m) & (dist <= cfg.near_reach_dof)
        score = (inside * p).sum(axis=1) - cfg.straddle_distance_cost * (dist * p).sum(axis=1)
        return float(cands[int(np.argmax(score))])

    def _acnet_target(self) -> tuple[float, float] | None:
        """(target in DoF units, ACNet confidence) from the current frame's proposal, or None
        when there is none or ACNet is not to be followed."""
        here = self._readings[-1]
        if not self.config.use_acnet or here.proposal is None:
            return None
        correction_dof, confidence = here.proposal
        return self._x(here.wd_um) + correction_dof, confidence

    def _fall_back(self, why: str, whole_range: bool = False) -> None:
        cfg = self.config
        if whole_range:
            # The readings are not to be trusted: the baseline's search around the start, whose
            # first probe (the start frame) is already taken.
            half = cfg.search_range_dof
            here_wd = self._readings[0].wd_um
        else:  # the posterior is sound but not sharp: search its 98 % interval
            lo, hi = self.posterior.interval(0.98)
            here_wd = self._clip(self._wd((lo + hi) / 2.0))
            half = min(max((hi - lo) / 2.0, cfg.min_bracket_dof), cfg.search_range_dof)
        self.fallback_reason = why
        self._note(f"fallback: {why}; golden section over ±{half:.1f} DoF")
        self.phase = "search"
        budget = max(cfg.max_frames - len(self.steps) + 1, 2)
        self._search = GoldenSectionAutofocus(
            here_wd,
            self.limits,
            self.dof_um,
            AutofocusConfig(
                search_range_dof=half, tolerance_dof=cfg.tolerance_dof, max_frames=budget
            ),
        )
        # A frame already taken there is the search's start probe: no extra frame.
        taken = [r for r in self._readings if r.wd_um == here_wd]
        if taken:
            self._search.tell(here_wd, self._search_score(taken[-1]), "ok")

    def _end_search(self) -> None:
        s = self._search
        assert s is not None and s.final_wd_um is not None
        reason = s.stop_reason or "timeout"
        wd = s.final_wd_um
        # Never blurrier than the very first frame (the search only guards its own start).
        first = self._readings[0]
        at_final = [r for r in self._readings if abs(r.wd_um - wd) < 1e-9]
        if at_final and self._search_score(at_final[-1]) < self._search_score(first):
            wd = first.wd_um
        self._finish(reason, wd, f"search: {reason}")

    # -- helpers ----------------------------------------------------------------------------------
    def _finish(self, reason: StopReason, wd_um: float, why: str) -> None:
        self.phase = "done"
        self.stop_reason = reason
        self.final_wd_um = wd_um
        self._pending = None
        self._note(f"stop: {reason} ({why})")

    def _note(self, text: str) -> None:
        if self.steps:
            step = self.steps[-1]
            step.decision = f"{step.decision}; {text}" if step.decision else text

    def _x(self, wd_um: float) -> float:
        return (wd_um - self.start_wd_um) / self.dof_um

    def _wd(self, x_dof: float) -> float:
        return self.start_wd_um + x_dof * self.dof_um

    def _clip(self, wd_um: float) -> float:
        return min(max(wd_um, self.limits.wd_min_um), self.limits.wd_max_um)

    @staticmethod
    def _search_score(r: FrameReading) -> float:
        """The score the fallback search maximises: classical sharpness when the node sends
        it, else AENet's (higher is sharper either way)."""
        if r.sharpness is not None:
            return r.sharpness
        if r.abs_defocus_dof is not None:
            return -math.log(r.abs_defocus_dof + 0.25)
        return 0.0

    def _best_safe_wd(self) -> float:
        """The WD of the sharpest usable frame so far (by AENet), or the start."""
        ok = [r for r in self._readings if r.signal == "ok" and r.abs_defocus_dof is not None]
        if not ok:
            return self.start_wd_um
        return min(ok, key=lambda r: r.abs_defocus_dof).wd_um
