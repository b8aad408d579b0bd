"""AENet/ACNet autofocus: the focus posterior, the state machine's rules, and the closed loop
over real sockets (acquisition → AENet inference node → control → WD commands). The no-signal
and WD-limit rules over sockets are in ``test_closed_loop.py``, for both controllers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from scopeflow.control.focus_model import FocusPosterior, Reading
from scopeflow.control.learned_autofocus import FrameReading, LearnedAutofocus
from scopeflow.control.tracking import FocusTracker
from scopeflow.jobs.runner import split_move
from scopeflow.jobs.track_focus import TrackFocusJob
from scopeflow.schemas.state import Limits, depth_of_field_um
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

from harness import pipeline, remote_autofocus, run_remote, seeded_trial

LIMITS = Limits(
    wd_min_um=1000.0,
    wd_max_um=9000.0,
    stage_x_min_um=-1e4,
    stage_x_max_um=1e4,
    stage_y_min_um=-1e4,
    stage_y_max_um=1e4,
)
DOF = 2.0


def geometric_reading(
    wd_um: float, focus_um: float, *, gain: float = 1.0, signal: str = "ok"
) -> FrameReading:
    """What an ideal AENet and sharpness would say of a frame at ``wd_um``: |Δz| in DoF (times
    ``gain``, a specimen AENet misjudges) and a log-sharpness V about focus."""
    u = abs(wd_um - focus_um) / DOF
    return FrameReading(
        wd_um,
        signal,
        gain * u,
        (math.log(math.hypot(u, 0.25)), 0.05, 0.0, 0.0),
        math.exp(1.0 - 0.2 * min(u, 5.0)),
    )


def run_machine(af: LearnedAutofocus, read) -> int:
    frames = 0
    while (wd := af.next_wd()) is not None:
        assert LIMITS.wd_min_um <= wd <= LIMITS.wd_max_um
        af.tell(read(wd))
        frames += 1
    return frames


# -- the posterior ---------------------------------------------------------------------------------
def test_one_reading_leaves_two_modes_and_a_second_frame_picks_one():
    post = FocusPosterior(-80, 80)
    post.add(Reading(0.0, 12.0, 0.05))
    assert post.mass_within(12.0, 1.0) == pytest.approx(post.mass_within(-12.0, 1.0), rel=0.05)
    post.add(Reading(12.0, 24.0, 0.05))  # moved towards +12 and got twice as blurred
    target, _ = post.best_target(1.0)
    assert target == pytest.approx(-12.0, abs=1.0)
    assert post.mass_within(12.0, 3.0) < 0.01 < post.mass_within(-12.0, 3.0)


def test_three_near_frames_pin_focus_with_the_sharpness_v():
    focus = 0.7
    post = FocusPosterior(-20, 20)
    for x in (-1.5, 0.0, 1.5):
        d = abs(x - focus)
        post.add(Reading(x, max(d, 0.3), 0.2, math.exp(2.0 - 0.15 * d)))
    target, p = post.best_target(0.5)
    assert target == pytest.approx(focus, abs=0.2) and p > 0.9


def test_a_reading_inside_the_dead_zone_does_not_pin_focus_to_the_frame():
    # AENet reads ~0.3 DoF anywhere within ~0.9 DoF of focus (on a specimen it never saw,
    # perhaps ~2 DoF): such a reading says "near", not "here".
    post = FocusPosterior(-20, 20)
    post.add(Reading(0.0, 0.3, 0.05))
    assert post.mass_within(0.0, 0.25) < 0.5
    assert post.mass_within(0.0, 2.5) > 0.9


def test_readings_no_focus_explains_conflict():
    post = FocusPosterior(-80, 80)
    for x in (0.0, 15.0, -15.0):
        post.add(Reading(x, 15.0, 0.05))  # equally blurred everywhere: no V fits
    assert post.worst_residual() > 6.0


# -- the state machine -----------------------------------------------------------------------------
@pytest.mark.parametrize("start_dof", [-20.0, -7.0, 3.0, 18.0])
def test_converges_on_ideal_readings_within_five_frames(start_dof):
    focus = 5000.0
    af = LearnedAutofocus(focus + start_dof * DOF, LIMITS, DOF)
    frames = run_machine(af, lambda wd: geometric_reading(wd, focus))
    assert af.stop_reason == "converged"
    assert abs(af.final_wd_um - focus) <= 0.5 * DOF
    assert frames <= 5


@pytest.mark.parametrize("gain", [0.8, 1.0, 1.2])
@pytest.mark.parametrize("start_dof", [-25.0, 12.0])
def test_far_moves_towards_focus_land_short_of_it_whatever_the_gain(gain, start_dof):
    # A specimen AENet reads 20 % too blurred or too sharp: a jump aimed at the posterior's
    # mode overshoots or undershoots at random (aimed there, 4 of these 6 runs overshoot by
    # more than the tolerance); aimed at the 0.15 quantile (about one prior σ of the gain,
    # 22 %), focus stays ahead.
    focus = 5000.0
    af = LearnedAutofocus(focus + start_dof * DOF, LIMITS, DOF)
    run_machine(af, lambda wd: geometric_reading(wd, focus, gain=gain))
    assert af.stop_reason == "converged" and abs(af.final_wd_um - focus) <= 0.5 * DOF
    far_moves = 0
    for prev, step in itertools.pairwise(af.steps):
        if prev.abs_defocus_dof <= 4.0:  # a near frame: the moves after it probe both sides
            break
        towards = (focus - prev.wd_um) * (step.wd_um - prev.wd_um) > 0
        if towards:
            far_moves += 1
            # Short, or past focus by less than the tolerance (two frames on one side of
            # focus measure the gain, and the aim is then close).
            assert abs(step.wd_um - prev.wd_um) < abs(focus - prev.wd_um) + 0.5 * DOF, af.steps
    assert far_moves >= 1


@pytest.mark.parametrize("start_dof", [-20.0, -3.0, 8.0, 25.0])
def test_it_stops_only_with_near_frames_on_both_sides_of_focus(start_dof):
    focus = 5000.0
    af = LearnedAutofocus(focus + start_dof * DOF, LIMITS, DOF)
    run_machine(af, lambda wd: geometric_reading(wd, focus))
    near = [s.wd_um for s in af.steps if s.abs_defocus_dof <= 4.0]
    assert af.stop_reason == "converged"
    assert len(near) >= 2 and min(near) < focus < max(near), af.steps


def test_misread_specimen_falls_back_to_the_search_and_still_focuses():
    focus = 5000.0
    start = focus + 12 * DOF

    def read(wd):  # AENet reads every frame as 15 DoF out; sharpness still peaks at focus
        r = geometric_reading(wd, focus)
        return FrameReading(wd, "ok", 15.0, r.features, r.sharpness)

    af = LearnedAutofocus(start, LIMITS, DOF)
    run_machine(af, read)
    assert af.fallback_reason is not None
    assert any(s.phase == "search" for s in af.steps)
    assert af.stop_reason == "converged"
    assert abs(af.final_wd_um - focus) <= 0.5 * DOF


@pytest.mark.parametrize("signal", ["blank", "saturated"])
def test_no_signal_on_the_first_frame_stops_where_it_started(signal):
    start = 5000.0 + 10 * DOF
    af = LearnedAutofocus(start, LIMITS, DOF)
    frames = run_machine(af, lambda wd: FrameReading(wd, signal, None, None, None))
    assert (af.stop_reason, af.final_wd_um, frames) == ("no_signal", start, 1)


def test_signal_lost_mid_run_stops_at_the_sharpest_frame_instead_of_wandering():
    focus, start = 5000.0, 5000.0 + 10 * DOF
    seen = []

    def read(wd):
        seen.append(wd)
        return (
            geometric_reading(wd, focus)
            if len(seen) < 3
            else FrameReading(wd, "blank", None, None, None)
        )

    af = LearnedAutofocus(start, LIMITS, DOF)
    frames = run_machine(af, read)
    assert af.stop_reason == "no_signal" and frames == 3
    sharpest = min(seen[:2], key=lambda wd: abs(wd - focus))
    assert af.final_wd_um == sharpest


def test_focus_beyond_a_limit_keeps_every_target_inside():
    limits = LIMITS.model_copy(update={"wd_max_um": 5000.0 - 4 * DOF})
    af = LearnedAutofocus(5000.0 - 15 * DOF, limits, DOF)
    while (wd := af.next_wd()) is not None:
        assert limits.wd_min_um <= wd <= limits.wd_max_um
        af.tell(geometric_reading(wd, 5000.0))
    assert af.final_wd_um <= limits.wd_max_um


@pytest.mark.parametrize(("a", "b", "step"), [(0.0, 10.0, 3.0), (10.0, -7.0, 2.5), (5.0, 6.0, 4.0)])
def test_moves_larger_than_the_maximum_step_are_split(a, b, step):
    path = split_move(a, b, step)
    assert path[-1] == b
    hops = np.abs(np.diff([a, *path]))
    assert hops.max() <= step + 1e-9
    assert len(path) == max(1, math.ceil(abs(b - a) / step))


# -- tracking --------------------------------------------------------------------------------------
def test_tracker_follows_linear_drift_with_few_extra_frames():
    focus0, drift = 5000.0, 0.01 * DOF  # 1 DoF per 100 frames
    tracker = FocusTracker(focus0, DOF, LIMITS)
    inside = live = t = 0
    while live < 1000:
        wd, kind = tracker.next_frame(t)
        focus = focus0 + drift * t
        tracker.tell(geometric_reading(wd, focus), kind, t)
        if kind == "live":
            live += 1
            inside += abs(wd - focus) <= 0.5 * DOF
        t += 1
    assert inside / live >= 0.95
    assert tracker.extra_frames / live * 100 <= 2.0
    assert tracker.velocity_um == pytest.approx(drift, rel=0.2)


# -- over real sockets -----------------------------------------------------------------------------
N_TRIALS = 20


def trial_config(seed: int) -> tuple[SEMConfig, float]:
    """Seeded trial on a family AENet trained on (see ``harness.seeded_trial``)."""
    return seeded_trial(seed, 2000 + seed, ("fibres", "grains", "nanoparticles", "tin_balls"))


def _learned(ipc_dir, sem: SimulatedSEM):
    with pipeline(ipc_dir, sem, evaluator="aenet") as p:
        return remote_autofocus(p)


def test_aenet_acnet_autofocus_over_sockets_converges_from_20_dof(ipc_dir):
    outcomes = []
    for seed in range(N_TRIALS):
        cfg, start_dof = trial_config(seed)
        sem = SimulatedSEM(cfg)
        out = _learned(ipc_dir, sem)
        error_dof = abs(sem.state().wd_um - sem.true_focus_wd_um()) / out.dof_um
        assert out.evaluator == "aenet+acnet"
        assert out.final_error_um == pytest.approx(error_dof * out.dof_um, abs=1e-6)
        outcomes.append((seed, cfg.family, start_dof, out.stop_reason, error_dof, out.frames))
    good = [o for o in outcomes if o[3] == "converged" and o[4] <= 0.5]
    table = "\n".join(
        f"seed {o[0]} {o[1]}: start {o[2]:+.1f} DoF -> {o[3]}, error {o[4]:.2f} DoF, {o[5]} frames"
        for o in outcomes
    )
    assert len(good) >= 0.95 * N_TRIALS, table
    # Issue #5: converged within 5 frames (every frame counted, the first included) in ≥ 95 %.
    within_five = [o for o in good if o[5] <= 5]
    assert len(within_five) >= 0.95 * N_TRIALS, table


def test_over_sockets_large_moves_are_split_to_the_device_maximum(ipc_dir):
    dof = depth_of_field_um(10.0, 3.0)
    sem = SimulatedSEM(
        SEMConfig(
            frame_shape=(256, 256),
            start_wd_um=5000.0 + 18 * dof,
            settle_s=0.0,
            max_wd_step_um=4 * dof,
            family="grains",
        )
    )
    out = _learned(ipc_dir, sem)
    assert out.stop_reason == "converged", out.message  # no move was refused as too large
    assert abs(sem.state().wd_um - sem.true_focus_wd_um()) <= 0.5 * dof


def test_over_sockets_autofocus_then_tracking_under_thermal_drift(ipc_dir):
    dof = depth_of_field_um(10.0, 3.0)
    # Drift in µm per second of the simulator's clock: the tracker follows time, not frames.
    # At the ~100–200 frames/s of this loop, 1.5 DoF/s is 0.75–1.5 DoF per 100 frames.
    drift = 1.5 * dof
    sem = SimulatedSEM(
        SEMConfig(
            frame_shape=(256, 256),
            start_wd_um=5000.0 - 9 * dof,
            settle_s=0.0,
            family="nanoparticles",
            dose_e_per_px=80.0,
            focus_drift_um_per_s=drift,
        )
    )
    with pipeline(ipc_dir, sem, evaluator="aenet") as p:
        out = run_remote(p.ctx, p.commands, p.results, TrackFocusJob(1000))
    assert out.details["autofocus"]["stop_reason"] == "converged", out.message
    track = out.details["tracking"]
    assert out.reached_goal and track["stop_reason"] == "done", track
    assert track["live_frames"] == 1000
    # The specimen drifted by several DoF over the run, yet stayed in focus.
    assert sem.true_focus_wd_um() - 5000.0 > 3 * dof
    assert track["in_focus_fraction"] >= 0.95, track["refocus_count"]
    # The drift runs on the wall clock, so a slower loop (a loaded 2-core machine) sees more
    # drift per frame and needs more probes: 22 extra frames in 1000 were measured in a full
    # clean-clone run on 2026-12-07, where ~1 % is typical alone.
    assert track["extra_frames"] / track["live_frames"] * 100 <= 3.0
    assert track["drift_um_per_s"] == pytest.approx(drift, rel=0.25)


def test_response_fit_recovers_a_known_dead_zone():
    from dataclasses import replace

    from scopeflow.control.focus_model import FocusModelConfig, aenet_response
    from scopeflow_lab.bench.aenet_response import fit, log_likelihood

    # Readings drawn from the model itself with a wider dead zone and known per-trial gains.
    truth = replace(FocusModelConfig(), dead_zone_dof=1.6, dead_zone_reading_dof=0.5)
    rng = np.random.default_rng(3)
    trial = np.repeat(np.arange(40), 15)
    dz = rng.uniform(0.0, 20.0, trial.size)
    gain = np.exp(rng.normal(0.0, 0.15, 40))[trial]
    reading = gain * aenet_response(dz, truth) * np.exp(rng.normal(0.0, 0.05, trial.size))
    data = {"trial": trial, "abs_dz": dz, "reading": reading, "sigma": np.full(trial.size, 0.05)}
    fitted = fit(data, FocusModelConfig())
    assert fitted.dead_zone_dof == pytest.approx(1.6, abs=0.2)
    assert fitted.dead_zone_reading_dof == pytest.approx(0.5, abs=0.1)
    assert log_likelihood(data, fitted) > log_likelihood(data, FocusModelConfig())
