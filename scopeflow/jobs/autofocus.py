"""The ``autofocus`` job: focus the microscope once, and stop with a reason.

The first frame (at the start WD) decides the state machine: estimates carrying AENet's |Δz|
drive :class:`~scopeflow.control.learned_autofocus.LearnedAutofocus` (with ACNet when its
weights are shipped), classical scores drive the golden-section baseline. The job records every
frame (with the simulator's ground truth when present, for scoring only).

Safety: every target is inside the WD limits (the machines clip); the runner splits moves larger
than the maximum step, and results of frames taken before the last move never reach the job.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field, replace

from scopeflow.control.autofocus import AutofocusConfig, GoldenSectionAutofocus
from scopeflow.control.learned_autofocus import (
    FrameReading,
    LearnedAutofocus,
    LearnedAutofocusConfig,
)
from scopeflow.errors import ScopeflowError
from scopeflow.inference.sharpness import METRICS
from scopeflow.jobs.base import JobOutcome, JobPlan, MoveFocus, Snap, failure_reason
from scopeflow.schemas.results import FocusEstimate
from scopeflow.schemas.state import Limits
from scopeflow.scopes.base import ScopeStatus

log = logging.getLogger(__name__)


@dataclass
class FrameRecord:
    """One frame of an autofocus run."""

    image_id: int
    phase: str
    wd_um: float
    wd_target_um: float
    score: float
    signal: str
    true_defocus_um: float | None
    true_focus_wd_um: float | None


@dataclass
class AutofocusRecord:
    """Everything one autofocus run did; the job outcome's ``details``."""

    evaluator: str | None = None
    stop_reason: str = "timeout"
    message: str = ""
    frames: int = 0
    start_wd_um: float | None = None
    final_wd_um: float | None = None
    dof_um: float | None = None
    initial_error_um: float | None = None
    final_error_um: float | None = None
    records: list[FrameRecord] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)  # learned autofocus: why, per frame

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AutofocusJobConfig:
    """Parameters of both state machines (``learned.use_acnet``: follow ACNet's proposals)."""

    search: AutofocusConfig = field(default_factory=AutofocusConfig)
    learned: LearnedAutofocusConfig = field(default_factory=LearnedAutofocusConfig)


def reading_from_estimate(est: FocusEstimate) -> FrameReading:
    """What the learned autofocus and the tracker read from a focus estimate. ``sharpness`` is
    the one sent with AENet's results, or the score itself from a classical evaluator."""
    sharpness = est.sharpness
    if sharpness is None and est.evaluator in METRICS:
        sharpness = est.score
    return FrameReading(
        wd_um=est.state.wd_um,
        signal=est.signal,
        abs_defocus_dof=est.abs_defocus_dof,
        features=tuple(est.aenet_features) if est.aenet_features is not None else None,
        sharpness=sharpness,
        dose_e_per_px=est.state.dose_e_per_px,
        proposal=(
            (est.acnet_correction_dof, est.acnet_confidence)
            if est.acnet_correction_dof is not None and est.acnet_confidence is not None
            else None
        ),
    )


class _Machine:
    """One interface over the two state machines: where next, take an estimate, the phase."""

    def __init__(
        self,
        first: FocusEstimate,
        start_wd_um: float,
        limits: Limits,
        dof_um: float,
        cfg: AutofocusJobConfig,
    ) -> None:
        self.learned = first.abs_defocus_dof is not None or first.aenet_features is not None
        if self.learned:
            with_acnet = cfg.learned.use_acnet and first.acnet_correction_dof is not None
            self.evaluator = "aenet+acnet" if with_acnet else "aenet"
            self.af = LearnedAutofocus(start_wd_um, limits, dof_um, cfg.learned)
        else:
            self.evaluator = first.evaluator
            self.af = GoldenSectionAutofocus(start_wd_um, limits, dof_um, cfg.search)

    def next_wd(self) -> float | None:
        return self.af.next_wd()

    def tell(self, est: FocusEstimate) -> str:
        """Feed the estimate; the phase the frame was taken in."""
        if self.learned:
            self.af.tell(reading_from_estimate(est))
            return self.af.steps[-1].phase
        self.af.tell(est.state.wd_um, est.score, est.signal)
        return self.af.probes[-1].phase


class AutofocusJob:
    """Focus once: AENet/ACNet with a focus posterior, or a golden-section search."""

    name = "autofocus"
    needs = ("focus",)

    def __init__(self, config: AutofocusJobConfig | None = None) -> None:
        self.config = config or AutofocusJobConfig()
        self.record = AutofocusRecord()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--search-range-dof", type=float, default=30.0)
        parser.add_argument("--tolerance-dof", type=float, default=0.5)
        parser.add_argument("--max-frames", type=int, default=40)
        parser.add_argument(
            "--no-acnet",
            action="store_true",
            help="ignore ACNet's proposals (AENet's focus posterior alone steers)",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace) -> AutofocusJobConfig:
        return AutofocusJobConfig(
            search=AutofocusConfig(
                search_range_dof=args.search_range_dof,
                tolerance_dof=args.tolerance_dof,
                max_frames=args.max_frames,
            ),
            learned=replace(
                LearnedAutofocusConfig(),
                tolerance_dof=args.tolerance_dof,
                max_frames=args.max_frames,
                use_acnet=not args.no_acnet,
            ),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AutofocusJob:
        return cls(cls.config_from_args(args))

    def plan(self, status: ScopeStatus) -> JobPlan:
        out = self.record = AutofocusRecord()
        state = status.state
        dof = state.depth_of_field_um()
        if dof is None:
            out.stop_reason = "device_error"
            out.message = "the microscope reports no beam semi-angle or NA: DoF unknown"
            return self._outcome()
        out.start_wd_um, out.dof_um = state.wd_target_um, dof
        target = state.wd_target_um
        machine: _Machine | None = None
        try:
            obs = yield Snap(self.needs)
            while True:
                est: FocusEstimate = obs.results["focus"]
                if machine is None:
                    machine = _Machine(est, target, status.limits, dof, self.config)
                    out.evaluator = machine.evaluator
                    machine.next_wd()  # the start WD, where this frame was taken
                out.records.append(_record(est, machine.tell(est)))
                wd = machine.next_wd()
                if wd is None:
                    break
                if wd != target:
                    yield MoveFocus(wd)
                    target = wd
                obs = yield Snap(self.needs)
            out.stop_reason = machine.af.stop_reason or "timeout"
            out.final_wd_um = machine.af.final_wd_um
            if machine.learned:
                out.decisions = [s.decision for s in machine.af.steps]
            if out.final_wd_um is not None and out.final_wd_um != target:
                yield MoveFocus(out.final_wd_um)
            out.message = f"stopped: {out.stop_reason}"
        except ScopeflowError as exc:  # thrown in by the runner: a peer or device failed
            out.stop_reason, out.message = failure_reason(exc), exc.reason
        return self._outcome()

    def _outcome(self) -> JobOutcome:
        out = self.record
        out.frames = len(out.records)
        _score_against_truth(out)
        log.debug("autofocus %s after %d frames: %s", out.stop_reason, out.frames, out.message)
        error_dof = (
            out.final_error_um / out.dof_um
            if out.final_error_um is not None and out.dof_um
            else None
        )
        return JobOutcome(
            job=self.name,
            reason=out.stop_reason,
            reached_goal=out.stop_reason == "converged",
            message=out.message,
            figures={
                "frames": out.frames,
                "evaluator": out.evaluator,
                "final_wd_um": out.final_wd_um,
                "dof_um": out.dof_um,
                "final_error_dof": error_dof,
            },
            details=out.to_dict(),
        )


def _record(est: FocusEstimate, phase: str) -> FrameRecord:
    truth = est.truth
    return FrameRecord(
        image_id=est.image_id,
        phase=phase,
        wd_um=est.state.wd_um,
        wd_target_um=est.state.wd_target_um,
        score=est.score,
        signal=est.signal,
        true_defocus_um=truth.defocus_um if truth else None,
        true_focus_wd_um=truth.focus_wd_um if truth else None,
    )


def _score_against_truth(out: AutofocusRecord) -> None:
    """Initial/final |WD − true focus| from the frames' ground truth, when the source has it."""
    recs = [r for r in out.records if r.true_focus_wd_um is not None]
    if not recs:
        return
    out.initial_error_um = abs(recs[0].true_defocus_um or 0.0)
    final_wd = out.final_wd_um if out.final_wd_um is not None else recs[-1].wd_target_um
    # The truth of the newest frame taken at the final WD (the verification frame, or the start).
    at_final = [r for r in recs if abs(r.wd_target_um - final_wd) < 1e-9]
    ref = at_final[-1] if at_final else recs[-1]
    out.final_error_um = abs(final_wd - (ref.true_focus_wd_um or 0.0))
