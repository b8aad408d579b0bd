"""The chip's focus surface: focus Z (or WD) as a low-order surface of stage x, y.

A chip on a stage is tilted (a plane) and often bowed (a quadratic). Autofocus at a few points
fixes the surface; every tile's focus is then predicted from it instead of searched. Fits are
least squares in centred, scaled coordinates (µm/1000 around the points' mean) so the quadratic
terms stay well conditioned across a centimetre. ``auto`` takes the quadratic only when there
are enough points to check it (7 or more) and it explains clearly more than the plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["plane", "quadratic", "auto"]
_SCALE_UM = 1000.0


@dataclass(frozen=True)
class FocusSurface:
    """A fitted surface; ``predict`` gives focus at stage positions."""

    kind: Literal["flat", "plane", "quadratic"]
    coefficients: tuple[float, ...]
    centre_um: tuple[float, float]
    rms_um: float  # residual of the fit at its points
    points: int

    def predict(self, x_um: float, y_um: float) -> float:
        """Focus (µm) at stage (x, y)."""
        row = _design(np.array([x_um]), np.array([y_um]), self.centre_um, self.kind)[0]
        return float(row @ np.asarray(self.coefficients))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "coefficients": list(self.coefficients),
            "centre_um": list(self.centre_um),
            "rms_um": self.rms_um,
            "points": self.points,
        }


def _design(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], kind: str) -> np.ndarray:
    u = (x - centre[0]) / _SCALE_UM
    v = (y - centre[1]) / _SCALE_UM
    columns = [np.ones_like(u)]
    if kind in ("plane", "quadratic"):
        columns += [u, v]
    if kind == "quadratic":
        columns += [u * u, u * v, v * v]
    return np.stack(columns, axis=1)


def fit_surface(points: Sequence[tuple[float, float, float]], kind: Kind = "auto") -> FocusSurface:
    """Fit focus = f(x, y) through (x_um, y_um, focus_um) points.

    One point gives a flat surface; two the plane through them that is flat across the line
    joining them; three or more a least-squares plane, or a quadratic when asked for (six points
    or more). ``auto`` takes the quadratic when there are at least seven points and it halves the
    plane's residual.
    """
    if not points:
        raise ValueError("a focus surface needs at least one focus point")
    arr = np.asarray(points, float)
    if not np.isfinite(arr).all():
        raise ValueError("focus points must be finite")
    if kind == "quadratic" and len(arr) < 6:
        raise ValueError("a quadratic focus surface needs at least 6 focus points")
    x, y, z = arr[:, 0], arr[:, 1], arr[:, 2]
    centre = (float(x.mean()), float(y.mean()))
    if len(arr) == 1:
        return FocusSurface("flat", (float(z[0]),), centre, 0.0, 1)
    if len(arr) == 2:
        return FocusSurface("plane", _two_point_plane(x, y, z), centre, 0.0, 2)
    plane = _least_squares(x, y, z, centre, "plane")
    chosen = plane
    if kind == "quadratic" or (kind == "auto" and len(arr) >= 7):
        quadratic = _least_squares(x, y, z, centre, "quadratic")
        if kind == "quadratic" or quadratic[1] < 0.5 * plane[1]:
            chosen = quadratic
    name = "quadratic" if len(chosen[0]) == 6 else "plane"
    return FocusSurface(name, tuple(float(c) for c in chosen[0]), centre, chosen[1], len(arr))


def _least_squares(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float], kind: str
) -> tuple[np.ndarray, float]:
    design = _design(x, y, centre, kind)
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    return coef, float(np.sqrt(np.mean((design @ coef - z) ** 2)))


def _two_point_plane(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[float, ...]:
    """Coefficients of the plane through two points, flat across the line joining them (in the
    scaled coordinates around their mean)."""
    d = np.array([x[1] - x[0], y[1] - y[0]]) / _SCALE_UM
    norm2 = float(d @ d)
    slope = (z[1] - z[0]) / norm2 if norm2 > 0 else 0.0
    return (float(z.mean()), float(slope * d[0]), float(slope * d[1]))


def focus_points(
    region: tuple[float, float, float, float], n_side: int
) -> list[tuple[float, float]]:
    """An ``n_side`` × ``n_side`` grid of focus points inside the region (x0, y0, x1, y1), inset
    by a tenth of its size so the points sit on chip, not on its edge."""
    x0, y0, x1, y1 = region
    if n_side < 1:
        raise ValueError("at least one focus point per side")
    if n_side == 1:
        return [((x0 + x1) / 2, (y0 + y1) / 2)]
    ix, iy = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    xs = np.linspace(x0 + ix, x1 - ix, n_side)
    ys = np.linspace(y0 + iy, y1 - iy, n_side)
    return [(float(x), float(y)) for y in ys for x in xs]


def shifted(surface: FocusSurface, offset_um: float) -> FocusSurface:
    """The same surface moved by ``offset_um`` in focus: another objective's surface when the
    objectives are not parfocal (the first coefficient is the constant term of every kind)."""
    coefficients = (surface.coefficients[0] + offset_um, *surface.coefficients[1:])
    return FocusSurface(
        surface.kind, coefficients, surface.centre_um, surface.rms_um, surface.points
    )
