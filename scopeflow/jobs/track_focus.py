"""The ``track-focus`` job: autofocus, then keep focus for a number of live frames.

Live frames are taken at the tracker's predicted focus; probe frames refocus when the tracker
asks (:class:`~scopeflow.control.tracking.FocusTracker`). Time is the frames' acquisition time
(``monotonic_ns``, seconds), so a drift in µm per second is followed whatever the frame rate,
and two hosts' clocks are never mixed.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field

from scopeflow.control.tracking import FocusTracker, TrackerConfig
from scopeflow.errors import ScopeflowError
from scopeflow.jobs.autofocus import AutofocusJob, AutofocusJobConfig, reading_from_estimate
from scopeflow.jobs.base import JobOutcome, JobPlan, MoveFocus, Progress, Snap, failure_reason
from scopeflow.scopes.base import ScopeStatus

log = logging.getLogger(__name__)


@dataclass
class TrackingRecord:
    """What a tracking run did. ``in_focus_fraction`` and ``abs_error_dof`` come from the
    frames' ground truth (simulators only; None otherwise)."""

    stop_reason: str = "done"  # done, timeout, limit, device_error
    message: str = ""
    live_frames: int = 0
    extra_frames: int = 0
    refocus_count: int = 0
    drift_um_per_s: float = 0.0
    in_focus_fraction: float | None = None
    abs_error_dof: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def track(
    status: ScopeStatus, live_frames: int, dof_um: float, config: TrackerConfig | None = None
) -> JobPlan:
    """Track focus from the current WD (assumed in focus) for ``live_frames`` live frames; a
    plan that returns a :class:`TrackingRecord` in its outcome's ``details``."""
    out = TrackingRecord()
    tracker = FocusTracker(status.state.wd_target_um, dof_um, status.limits, config)
    try:
        target = status.state.wd_target_um
        t0: float | None = None
        last_t, step_t = 0.0, 0.0  # the last frame's time and the interval before it
        inside = 0
        while out.live_frames < live_frames:
            # Predict for the coming frame: one interval after the last.
            wd, kind = tracker.next_frame(last_t + step_t)
            if abs(wd - target) > 1e-9:
                yield MoveFocus(wd)
                target = wd
            obs = yield Snap(("focus",))
            est = obs.results["focus"]
            t_frame = est.monotonic_ns / 1e9
            if t0 is None:
                t0 = t_frame  # the tracker's time 0: the first frame, in focus
            step_t, last_t = t_frame - t0 - last_t, t_frame - t0
            tracker.tell(reading_from_estimate(est), kind, last_t)
            if kind == "live":
                out.live_frames += 1
                if est.truth is not None:
                    err = abs(est.truth.defocus_um) / dof_um
                    out.abs_error_dof.append(err)
                    inside += err <= 0.5
                if out.live_frames % 100 == 0:
                    yield Progress(out.live_frames, live_frames, "live frames tracked")
        if out.abs_error_dof:
            out.in_focus_fraction = inside / len(out.abs_error_dof)
        out.message = f"tracked {out.live_frames} live frames"
    except ScopeflowError as exc:
        out.stop_reason, out.message = failure_reason(exc), exc.reason
    out.extra_frames = tracker.extra_frames
    out.refocus_count = tracker.refocus_count
    out.drift_um_per_s = tracker.velocity_um
    log.debug("tracking %s: %s, %d extra frames", out.stop_reason, out.message, out.extra_frames)
    return JobOutcome(
        "track-focus",
        out.stop_reason,
        out.stop_reason == "done",
        out.message,
        figures={
            "live_frames": out.live_frames,
            "extra_frames": out.extra_frames,
            "refocus_count": out.refocus_count,
            "in_focus_fraction": out.in_focus_fraction,
        },
        details=out.to_dict(),
    )


class TrackFocusJob:
    """Autofocus, then keep focus for N live frames (drift, tilted specimens)."""

    name = "track-focus"
    needs = ("focus",)

    def __init__(
        self,
        live_frames: int,
        autofocus: AutofocusJobConfig | None = None,
        tracker: TrackerConfig | None = None,
    ) -> None:
        if live_frames < 1:
            raise ValueError("track at least one live frame")
        self.live_frames = live_frames
        self.autofocus = AutofocusJob(autofocus)
        self.tracker = tracker

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--frames", type=int, default=200, help="live frames to track")
        AutofocusJob.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrackFocusJob:
        return cls(args.frames, AutofocusJob.config_from_args(args))

    def plan(self, status: ScopeStatus) -> JobPlan:
        focused = yield from self.autofocus.plan(status)
        if not focused.reached_goal:
            focused.job = self.name
            focused.message = f"autofocus did not converge ({focused.reason}); not tracking"
            return focused
        obs = yield Progress(0, self.live_frames, "live frames tracked")
        dof = focused.details["dof_um"]
        outcome = yield from track(obs.status, self.live_frames, dof, self.tracker)
        outcome.figures = {"autofocus_frames": focused.figures["frames"], **outcome.figures}
        outcome.details = {"autofocus": focused.details, "tracking": outcome.details}
        return outcome
