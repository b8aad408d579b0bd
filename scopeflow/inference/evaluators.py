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
# 'blank': no spatial structure beyond pixel noise. For white noise var(I) equals half the variance
# of neighbour differences; any image content, even far out of focus, raises var(I) above that.
BLANK_STRUCTURE_RATIO = 1.02


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


def signal_check(frame: np.ndarray) -> Signal:
    """Whether ``frame`` carries a usable focus signal: 'ok', 'blank' or 'saturated'."""
    if np.issubdtype(frame.dtype, np.integer):
        full_scale = float(np.iinfo(frame.dtype).max)
    else:
        full_scale = float(max(np.abs(frame).max(), 1e-12))
    if frame.ndim == 3:
        frame = frame.mean(axis=2)
    if float(np.mean(frame[::4, ::4] >= full_scale)) >= SATURATED_FRACTION:
        return "saturated"
    img = np.asarray(frame, dtype=np.float32)
    total = float(img.var())
    if total == 0.0:
        return "blank"
    diff = img[:, 1:] - img[:, :-1]
    noise = 0.5 * float(diff.var())
    if total < BLANK_STRUCTURE_RATIO * noise:
        return "blank"
    return "ok"
