"""Focus evaluators the inference node can serve, by name, and the frame signal check.

An evaluator maps a frame to a score (higher is sharper). The classical metrics are the baseline;
learned models (AENet) register here under their own names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scopeflow.inference.sharpness import METRICS, FocusMetric
from scopeflow.schemas.results import Signal

# 'saturated': at least this fraction of pixels at the top of the range.
SATURATED_FRACTION = 0.5
# 'blank': the 1st-99th percentile spread is below this fraction of full scale — a flat frame
# (beam blanked, detector off, nothing under the beam) holding read noise at most. Shot noise
# alone spreads any frame with electrons in it wider than this at the doses we support; a frame
# whose *structure* is too faint to focus on is caught by the controller instead (no_signal).
BLANK_SPREAD = 0.005


@dataclass(frozen=True)
class Evaluator:
    """A named focus metric."""

    name: str
    metric: FocusMetric

    def __call__(self, frame: np.ndarray) -> float:
        return self.metric(frame)


def get_evaluator(name: str) -> Evaluator:
    """The evaluator called ``name``; ValueError lists the known ones."""
    try:
        return Evaluator(name, METRICS[name])
    except KeyError:
        raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(METRICS)}") from None


def signal_check(frame: np.ndarray, dose_e_per_px: float | None = None) -> Signal:
    """Whether ``frame`` carries a usable focus signal: 'ok', 'blank' or 'saturated'.

    'blank' when the microscope reports a dose of zero (beam blanked) or the frame is flat
    (detector off, nothing under the beam); 'saturated' when half the pixels sit at full scale.
    """
    if dose_e_per_px == 0:
        return "blank"
    if np.issubdtype(frame.dtype, np.integer):
        full_scale = float(np.iinfo(frame.dtype).max)
    else:
        full_scale = float(max(np.abs(frame).max(), 1e-12))
    sample = frame[::2, ::2]  # a quarter of the pixels is plenty for these statistics
    if float(np.mean(sample >= full_scale)) >= SATURATED_FRACTION:
        return "saturated"
    lo, hi = np.percentile(sample, (1, 99))
    if hi - lo <= BLANK_SPREAD * full_scale:
        return "blank"
    return "ok"
