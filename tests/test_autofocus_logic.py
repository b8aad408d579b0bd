"""The golden-section autofocus state machine on score curves of known shape (no transport)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scopeflow.control.autofocus import AutofocusConfig, GoldenSectionAutofocus
from scopeflow.schemas.state import Limits

DOF = 3.0
FOCUS = 5000.0
LIMITS = Limits(
    wd_min_um=1000,
    wd_max_um=9000,
    stage_x_min_um=-1,
    stage_x_max_um=1,
    stage_y_min_um=-1,
    stage_y_max_um=1,
)


def lorentzian(wd: float, focus: float = FOCUS) -> float:
    """A sharpness-like curve: peaked at focus, long flat tails."""
    return 1.0 / (1.0 + ((wd - focus) / (2 * DOF)) ** 2)


def drive(af: GoldenSectionAutofocus, score, rng=None, noise=0.0, signal="ok"):
    while (wd := af.next_wd()) is not None:
        s = score(wd)
        if rng is not None:
            s *= 1.0 + noise * rng.standard_normal()
        af.tell(wd, max(s, 0.0), signal)
    return af


@pytest.mark.parametrize("start_dof", [-20, -11.3, -3, 0, 0.4, 2.2, 7.7, 14, 20])
def test_converges_within_tolerance_from_starts_up_to_20_dof(start_dof):
    af = drive(GoldenSectionAutofocus(FOCUS + start_dof * DOF, LIMITS, DOF), lorentzian)
    assert af.stop_reason == "converged"
    assert abs(af.final_wd_um - FOCUS) <= 0.5 * DOF
    assert len(af.probes) <= 15


def test_noisy_scores_still_converge_and_never_end_worse_than_the_start():
    rng = np.random.default_rng(1)
    for _ in range(50):
        start = FOCUS + rng.uniform(-20, 20) * DOF
        af = drive(GoldenSectionAutofocus(start, LIMITS, DOF), lorentzian, rng, noise=0.01)
        assert af.stop_reason == "converged"
        assert lorentzian(af.final_wd_um) >= lorentzian(start) * 0.97
        assert abs(af.final_wd_um - FOCUS) <= 0.5 * DOF


def test_returns_to_start_when_the_chosen_point_verifies_worse():
    # A score that lies: the verification frame comes back worse than the start.
    calls = []

    def liar(wd):
        calls.append(wd)
        return 0.01 if len(calls) > 5 and abs(wd - FOCUS) < DOF else lorentzian(wd)

    start = FOCUS + 0.3 * DOF
    af = drive(GoldenSectionAutofocus(start, LIMITS, DOF), liar)
    assert af.final_wd_um == start


def test_blank_first_frame_stops_with_no_signal_without_moving():
    af = GoldenSectionAutofocus(FOCUS, LIMITS, DOF)
    af.tell(af.next_wd(), 0.0, "blank")
    assert af.next_wd() is None
    assert af.stop_reason == "no_signal"
    assert af.final_wd_um == FOCUS


def test_flat_scores_stop_with_no_signal_at_the_start():
    start = FOCUS + 4 * DOF
    af = drive(GoldenSectionAutofocus(start, LIMITS, DOF), lambda wd: 1.0)
    assert af.stop_reason == "no_signal"
    assert af.final_wd_um == start


def test_focus_beyond_the_limit_stops_with_limit_inside_the_limits():
    limits = LIMITS.model_copy(update={"wd_max_um": FOCUS - 10 * DOF})
    start = FOCUS - 20 * DOF
    af = drive(GoldenSectionAutofocus(start, limits, DOF), lorentzian)
    assert af.stop_reason == "limit"
    assert af.final_wd_um <= limits.wd_max_um
    assert all(p.wd_um <= limits.wd_max_um for p in af.probes)


def test_frame_budget_ends_with_timeout_at_the_best_frame_seen():
    cfg = AutofocusConfig(max_frames=4)
    start = FOCUS + 10 * DOF
    af = drive(GoldenSectionAutofocus(start, LIMITS, DOF, cfg), lorentzian)
    assert af.stop_reason == "timeout"
    assert len(af.probes) == 4
    assert af.final_wd_um == max(af.probes, key=lambda p: p.score).wd_um


def test_probes_stay_inside_the_search_range_and_limits():
    start = FOCUS + 5 * DOF
    af = drive(GoldenSectionAutofocus(start, LIMITS, DOF), lorentzian)
    span = AutofocusConfig().search_range_dof * DOF
    assert all(abs(p.wd_um - start) <= span + 1e-9 for p in af.probes)


def test_rejects_a_meaningless_depth_of_field():
    with pytest.raises(ValueError, match="dof_um"):
        GoldenSectionAutofocus(FOCUS, LIMITS, math.nan)
