"""Runs the focus tracker against a live pipeline: live frames at the predicted focus, refocus
probes when the tracker asks, for a given number of live frames.

Time is the frames' acquisition time (``monotonic_ns`` of each frame, seconds), so a drift in
µm per second is followed whatever the frame rate. The tracker reads each frame's classical
sharpness: ``sharpness`` from an AENet node, or ``score`` from a classical evaluator.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from scopeflow.control.client import CommandRejected, MicroscopeClient
from scopeflow.control.results import ResultSubscriber
from scopeflow.control.runner import reading_from_estimate
from scopeflow.control.tracking import FocusTracker, TrackerConfig
from scopeflow.errors import PeerTimeout

log = logging.getLogger(__name__)


@dataclass
class TrackingOutcome:
    """What a tracking run did; JSON-serialisable with :meth:`to_dict`.

    ``in_focus_fraction`` and ``abs_error_dof`` come from the frames' ground truth (simulators
    only; None otherwise).
    """

    stop_reason: str = "done"  # done, timeout, device_error
    message: str = ""
    live_frames: int = 0
    extra_frames: int = 0
    refocus_count: int = 0
    drift_um_per_s: float = 0.0
    in_focus_fraction: float | None = None
    abs_error_dof: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def run_tracking(
    client: MicroscopeClient,
    results: ResultSubscriber,
    live_frames: int,
    dof_um: float,
    config: TrackerConfig | None = None,
    result_timeout_s: float = 5.0,
) -> TrackingOutcome:
    """Track focus from the current WD (assumed in focus) for ``live_frames`` live frames."""
    out = TrackingOutcome()
    tracker: FocusTracker | None = None
    try:
        reply = client.get_state()
        series, seq = reply.series_unique_id, reply.command_seq
        tracker = FocusTracker(reply.state.wd_target_um, dof_um, reply.limits, config)
        target = reply.state.wd_target_um
        t0: float | None = None
        last_t, step_t = 0.0, 0.0  # the last frame's time and the interval before it
        inside = 0
        while out.live_frames < live_frames:
            # Predict for the coming frame: one interval after the last (times from the
            # acquisition host's clock only, so two hosts' clocks are never mixed).
            wd, kind = tracker.next_frame(last_t + step_t)
            if abs(wd - target) > 1e-9:
                seq = client.set_wd(wd).command_seq
                target = wd
            shot = client.acquire()
            if shot.series_unique_id != series:
                raise CommandRejected(
                    "the acquisition node restarted during tracking", code="device_error"
                )
            est = results.wait_for(shot.image_id, seq, result_timeout_s, series=series)
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
        if out.abs_error_dof:
            out.in_focus_fraction = inside / len(out.abs_error_dof)
        out.message = f"tracked {out.live_frames} live frames"
    except PeerTimeout as exc:
        out.stop_reason, out.message = "timeout", exc.reason
    except CommandRejected as exc:
        out.stop_reason, out.message = "device_error", exc.reason
    if tracker is not None:
        out.extra_frames = tracker.extra_frames
        out.refocus_count = tracker.refocus_count
        out.drift_um_per_s = tracker.velocity_um
    log.info("tracking %s: %s, %d extra frames", out.stop_reason, out.message, out.extra_frames)
    return out
