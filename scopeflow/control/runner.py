"""Runs an autofocus state machine against a live pipeline.

The runner owns the I/O: it moves the microscope to where the state machine asks, triggers a
frame, waits for that frame's focus estimate from the inference node, and feeds it back. The
first frame (at the start WD) decides the machine: estimates carrying AENet's |Δz| drive
:class:`~scopeflow.control.learned_autofocus.LearnedAutofocus` (with ACNet when its weights are
shipped), classical scores drive the golden-section baseline.

Safety: every target is inside the WD limits (the machines clip), and a move larger than the
maximum step (the device's ``max_wd_step_um``, or ``RunnerConfig.max_step_um`` when smaller) is
split into steps no larger than it. Results of frames taken before the last move are ignored
(``ResultSubscriber.wait_for``).
It records every frame (with the simulator's ground truth when present, for scoring only) and the
loop latency from each frame's acquisition to the WD command it caused.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

from scopeflow.control.autofocus import AutofocusConfig, GoldenSectionAutofocus
from scopeflow.control.client import CommandRejected, MicroscopeClient
from scopeflow.control.learned_autofocus import (
    FrameReading,
    LearnedAutofocus,
    LearnedAutofocusConfig,
)
from scopeflow.control.results import ResultSubscriber
from scopeflow.errors import PeerTimeout
from scopeflow.inference.sharpness import METRICS
from scopeflow.schemas.results import FocusEstimate
from scopeflow.schemas.state import Limits

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
class AutofocusOutcome:
    """Result of one autofocus run, JSON-serialisable with :meth:`to_dict`."""

    job: str = "autofocus"
    evaluator: str | None = None
    stop_reason: str = "timeout"
    message: str = ""
    frames: int = 0
    start_wd_um: float | None = None
    final_wd_um: float | None = None
    dof_um: float | None = None
    initial_error_um: float | None = None
    final_error_um: float | None = None
    seconds: float = 0.0
    loop_latency_ms: list[float] = field(default_factory=list)
    records: list[FrameRecord] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)  # learned autofocus: why, per frame
    tracking: dict | None = None  # focus tracking after the autofocus, when asked for

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunnerConfig:
    """Timeouts of the runner."""

    ready_timeout_s: float = 20.0
    result_timeout_s: float = 5.0
    search: AutofocusConfig = field(default_factory=AutofocusConfig)
    learned: LearnedAutofocusConfig = field(default_factory=LearnedAutofocusConfig)
    acnet_backend: str | None = "auto"  # None: AENet posterior only, no ACNet
    max_step_um: float | None = None  # split moves larger than this (and the device maximum)


def load_acnet(backend: str | None):
    """ACNet on ``backend``, or None (with a warning) when it is not shipped or not wanted."""
    if backend is None:
        return None
    from scopeflow.inference import backends
    from scopeflow.inference.models.acnet import ACNet

    try:
        return ACNet(backends.load("acnet", backend))
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        log.warning("ACNet unavailable (%s); AENet's posterior alone proposes moves", exc)
        return None


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
    )


class _Machine:
    """One interface over the two state machines: where next, take an estimate, the phase."""

    def __init__(
        self,
        first: FocusEstimate,
        start_wd_um: float,
        limits: Limits,
        dof_um: float,
        cfg: RunnerConfig,
    ) -> None:
        self.learned = first.abs_defocus_dof is not None or first.aenet_features is not None
        if self.learned:
            acnet = load_acnet(cfg.acnet_backend)
            self.evaluator = "aenet+acnet" if acnet is not None else "aenet"
            self.af = LearnedAutofocus(start_wd_um, limits, dof_um, acnet, cfg.learned)
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


def run_autofocus(
    client: MicroscopeClient, results: ResultSubscriber, config: RunnerConfig | None = None
) -> AutofocusOutcome:
    """Focus the microscope behind ``client``; never raises for peer failures (see stop_reason)."""
    cfg = config or RunnerConfig()
    out = AutofocusOutcome()
    t0 = time.monotonic()
    try:
        reply = _wait_ready(client, results, cfg.ready_timeout_s)
        state = reply.state
        dof = state.depth_of_field_um()
        if dof is None:
            raise CommandRejected(
                "the microscope reports no beam semi-angle, so the depth of field is unknown",
                code="device_error",
            )
        out.start_wd_um, out.dof_um = state.wd_target_um, dof
        max_step = _max_step(reply.limits.max_wd_step_um, cfg.max_step_um)
        target, moved_seq, series = state.wd_target_um, reply.command_seq, reply.series_unique_id
        machine: _Machine | None = None
        last_est: FocusEstimate | None = None
        wd: float | None = state.wd_target_um
        while wd is not None:
            if wd != target:
                for step in _steps(target, wd, max_step):
                    moved_seq = _same_series(client.set_wd(step), series).command_seq
                _latency(out, client, last_est)
                target = wd
            shot = _same_series(client.acquire(), series)
            assert shot.image_id is not None
            est = results.wait_for(
                shot.image_id, moved_seq, cfg.result_timeout_s, series=shot.series_unique_id
            )
            if machine is None:
                machine = _Machine(est, state.wd_target_um, reply.limits, dof, cfg)
                out.evaluator = machine.evaluator
                machine.next_wd()  # the start WD, where this frame was taken
            phase = machine.tell(est)
            out.records.append(_record(est, phase))
            last_est = est
            wd = machine.next_wd()
        assert machine is not None
        out.stop_reason = machine.af.stop_reason or "timeout"
        out.final_wd_um = machine.af.final_wd_um
        if machine.learned:
            out.decisions = [s.decision for s in machine.af.steps]
        if out.final_wd_um is not None and out.final_wd_um != target:
            for step in _steps(target, out.final_wd_um, max_step):
                _same_series(client.set_wd(step), series)
            _latency(out, client, last_est)
        out.message = f"stopped: {out.stop_reason}"
    except PeerTimeout as exc:
        out.stop_reason, out.message = "timeout", exc.reason
    except CommandRejected as exc:
        out.stop_reason = "limit" if exc.code == "limit" else "device_error"
        out.message = exc.reason
    out.frames = len(out.records)
    out.seconds = time.monotonic() - t0
    _score_against_truth(out)
    log.info("autofocus %s after %d frames: %s", out.stop_reason, out.frames, out.message)
    return out


def _max_step(device: float | None, configured: float | None) -> float | None:
    steps = [m for m in (device, configured) if m is not None]
    return min(steps) if steps else None


def _steps(from_um: float, to_um: float, max_step_um: float | None) -> list[float]:
    """Intermediate and final targets so no single move exceeds ``max_step_um``."""
    if max_step_um is None or abs(to_um - from_um) <= max_step_um:
        return [to_um]
    n = math.ceil(abs(to_um - from_um) / max_step_um - 1e-9)
    return [from_um + (to_um - from_um) * k / n for k in range(1, n)] + [to_um]


def _wait_ready(client: MicroscopeClient, results: ResultSubscriber, timeout_s: float):
    """Wait until the inference node's results reach us and it subscribes to the frames."""
    deadline = time.monotonic() + timeout_s
    results.wait_connected(timeout_s)
    while True:
        reply = client.get_state()
        if (reply.frame_subscribers or 0) > 0:
            return reply
        if time.monotonic() > deadline:
            raise PeerTimeout(
                f"no subscriber on the frame stream within {timeout_s:g} s; "
                "start an inference node connected to the acquisition node's frames endpoint"
            )
        time.sleep(0.05)


def _same_series(reply, series: str):
    """The reply, unless the acquisition node restarted (a new series) during the run: then
    its positions and counters are not the ones this run started from."""
    if reply.series_unique_id != series:
        raise CommandRejected(
            f"the acquisition node restarted during autofocus (series {series} became "
            f"{reply.series_unique_id}); start again",
            code="device_error",
        )
    return reply


def _latency(out: AutofocusOutcome, client: MicroscopeClient, est: FocusEstimate | None) -> None:
    if est is not None:
        out.loop_latency_ms.append((client.last_sent_ns - est.monotonic_ns) / 1e6)


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


def _score_against_truth(out: AutofocusOutcome) -> None:
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
