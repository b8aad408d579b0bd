"""Classical focus metrics and the signal check, on simulated frames."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from scopeflow.inference.evaluators import get_evaluator, signal_check
from scopeflow.inference.sharpness import METRICS
from scopeflow.schemas.state import depth_of_field_um
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

DOF = depth_of_field_um(10.0, 3.0)


def frames_through_focus(offsets_dof, **kw) -> list[np.ndarray]:
    sem = SimulatedSEM(SEMConfig(frame_shape=(256, 256), settle_s=0.0, dose_e_per_px=200.0, **kw))
    out = []
    for k in offsets_dof:
        sem.set_wd(5000.0 + k * DOF)
        out.append(sem.acquire().pixels)
    return out


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_peaks_at_focus_and_falls_away_from_it(name):
    offsets = [-12, -6, -3, -1, 0, 1, 3, 6, 12]
    scores = [get_evaluator(name)(f) for f in frames_through_focus(offsets, family="grains")]
    peak = offsets.index(0)
    assert int(np.argmax(scores)) == peak
    assert all(a < b for a, b in pairwise(scores[: peak + 1]))
    assert all(a > b for a, b in pairwise(scores[peak:]))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metrics_do_not_change_with_detector_gain(name):
    frame = frames_through_focus([2], family="nanoparticles")[0].astype(np.float32)
    metric = get_evaluator(name)
    assert metric(frame * 3.0) == pytest.approx(metric(frame), rel=1e-4)


def test_unknown_evaluator_names_the_known_ones():
    with pytest.raises(ValueError, match="tenengrad"):
        get_evaluator("laplacian-magic")


def test_signal_check_tells_blank_saturated_and_ok_apart():
    rng = np.random.default_rng(0)
    image = frames_through_focus([20])[0]  # far out of focus, but signal all the same
    assert signal_check(image) == "ok"
    assert signal_check(image, dose_e_per_px=0.0) == "blank"
    flat = np.full((64, 64), 1000, np.uint16) + rng.integers(0, 3, (64, 64), dtype=np.uint16)
    assert signal_check(flat) == "blank"
    clipped = np.full((64, 64), 65535, np.uint16)
    clipped[:10] = 100
    assert signal_check(clipped) == "saturated"
    assert signal_check(rng.random((32, 32), dtype=np.float32)) == "ok"
    assert signal_check(np.zeros((32, 32), np.float32)) == "blank"
