"""Classical focus (sharpness) metrics, vectorised with OpenCV and numpy.

Each takes a 2-D frame (any integer or float dtype) and returns a non-negative score that is
highest in focus. All three are divided by the squared mean intensity so a change of detector
gain does not change the score (an offset still does; these are the baselines AENet must beat).

- normalized variance: var(I) / mean(I)², after Groen et al. 1985 (there divided by mean).
- Tenengrad: mean squared Sobel gradient magnitude / mean(I)² (Krotkov 1987).
- Brenner: mean of (I(x+2) − I(x))² over both axes / mean(I)² (Brenner et al. 1976).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

FocusMetric = Callable[[np.ndarray], float]


def _as_float(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 3:  # colour: focus on luminance
        frame = frame.mean(axis=2)
    return np.asarray(frame, dtype=np.float32)


def _norm(value: float, mean: float) -> float:
    return float(value / (mean * mean)) if mean > 0 else 0.0


def normalized_variance(frame: np.ndarray) -> float:
    """Intensity variance over squared mean."""
    img = _as_float(frame)
    mean, std = cv2.meanStdDev(img)
    return _norm(float(std[0, 0]) ** 2, float(mean[0, 0]))


def tenengrad(frame: np.ndarray) -> float:
    """Mean squared Sobel gradient magnitude over squared mean."""
    img = _as_float(frame)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    energy = float(cv2.mean(cv2.multiply(gx, gx) + cv2.multiply(gy, gy))[0])
    return _norm(energy, float(img.mean()))


def brenner(frame: np.ndarray) -> float:
    """Mean squared two-pixel difference along both axes over squared mean."""
    img = _as_float(frame)
    dx = img[:, 2:] - img[:, :-2]
    dy = img[2:, :] - img[:-2, :]
    energy = 0.5 * (float(np.mean(dx * dx)) + float(np.mean(dy * dy)))
    return _norm(energy, float(img.mean()))


METRICS: dict[str, FocusMetric] = {
    "normalized_variance": normalized_variance,
    "tenengrad": tenengrad,
    "brenner": brenner,
}
