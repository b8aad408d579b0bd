"""Nanoparticles in a liquid cell: shapes, projected thickness maps and dynamics.

Shapes lie on the membrane and are seen along the beam. Each has a scale ``s`` (nm) from which its
dimensions follow (the ratios below), so growth changes one number and keeps the shape:

- sphere: radius ``s``;
- rod: a spherocylinder of radius ``s/2`` and tip-to-tip length ``aspect × s`` lying in the plane;
- cube: edge ``1.6 s``, seen face-on (a square slab of thickness = edge);
- prism: an equilateral triangular plate, edge ``3 s`` and thickness ``s`` (gold nanoprisms).

Dynamics (:class:`Population`) run on a periodic square domain (the simulated patch of the cell,
larger than the field of view). A particle's position is a free Brownian part plus a sum of
Ornstein–Uhlenbeck (OU) modes, each updated exactly, so every motion model is one code path:

- ``brownian``: free diffusion, MSD = 4·D·t in 2D;
- ``confined``: one OU mode of per-axis spread L: MSD = 4·L²·(1 − exp(−D·t/L²));
- ``subdiffusive``: OU modes with relaxation times spaced ×3 from 0.1 ms to ~10⁵ s and variances
  ∝ τ^α, whose sum has MSD ≈ 4·K·t^α (within 4 % for 1 ms ≲ t ≲ 10⁴ s; K in nm²/s^α) — a Markov
  stand-in for fractional Brownian motion (Goychuk 2009's embedding of fractional noise).

Particles grow or shrink at their own rate (nm of scale per second); one that shrinks below
``min_scale_nm`` dissolves and its track ends. Two particles whose contact radii overlap coalesce:
the one with more volume survives, takes the summed volume and moves to the centre of mass; the
other's track ends. Decoys (:class:`DecoyField`) are fast, faint objects that are not particles:
gas bubbles and small particles passing through the liquid, moving ballistically with a slowly
turning heading.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SHAPES = ("sphere", "rod", "prism", "cube")
MOTIONS = ("brownian", "subdiffusive", "confined")
DECOY_KINDS = ("bubble", "fast_particle")

ROD_RADIUS_PER_SCALE = 0.5
CUBE_EDGE_PER_SCALE = 1.6
PRISM_EDGE_PER_SCALE = 3.0
PRISM_THICKNESS_PER_SCALE = 1.0
_SQRT3 = math.sqrt(3.0)

# Sub-diffusion modes: relaxation times from 0.1 ms growing ×3 per mode (20 modes reach ~10⁵ s).
_MODES = 20
_MODE_TAU_MIN_S = 1e-4
_MODE_RATIO = 3.0


@dataclass(frozen=True)
class Shape:
    """The geometry of one particle: kind, scale ``s`` (nm), rod aspect (length / diameter) and
    in-plane orientation (rad, from +x towards +y)."""

    kind: str
    scale_nm: float
    aspect: float = 3.0
    angle_rad: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.kind!r}")
        if not (math.isfinite(self.scale_nm) and self.scale_nm > 0):
            raise ValueError(f"scale_nm must be positive, got {self.scale_nm!r}")
        if not (math.isfinite(self.aspect) and self.aspect >= 1.0):
            raise ValueError(f"rod aspect must be ≥ 1, got {self.aspect!r}")

    def dimensions_nm(self) -> dict[str, float]:
        """The named dimensions of this shape, nm."""
        s = self.scale_nm
        if self.kind == "sphere":
            return {"radius_nm": s}
        if self.kind == "rod":
            r = ROD_RADIUS_PER_SCALE * s
            return {"radius_nm": r, "length_nm": self.aspect * 2.0 * r}
        if self.kind == "cube":
            return {"edge_nm": CUBE_EDGE_PER_SCALE * s}
        return {
            "edge_nm": PRISM_EDGE_PER_SCALE * s,
            "plate_thickness_nm": PRISM_THICKNESS_PER_SCALE * s,
        }

    def max_thickness_nm(self) -> float:
        """The largest projected thickness along the beam, nm."""
        d = self.dimensions_nm()
        if self.kind in ("sphere", "rod"):
            return 2.0 * d["radius_nm"]
        return d["edge_nm"] if self.kind == "cube" else d["plate_thickness_nm"]

    def volume_nm3(self) -> float:
        d = self.dimensions_nm()
        if self.kind == "sphere":
            return 4.0 / 3.0 * math.pi * d["radius_nm"] ** 3
        if self.kind == "rod":
            r = d["radius_nm"]
            return math.pi * r * r * (d["length_nm"] - 2.0 * r) + 4.0 / 3.0 * math.pi * r**3
        if self.kind == "cube":
            return d["edge_nm"] ** 3
        return _SQRT3 / 4.0 * d["edge_nm"] ** 2 * d["plate_thickness_nm"]

    def projected_area_nm2(self) -> float:
        d = self.dimensions_nm()
        if self.kind == "sphere":
            return math.pi * d["radius_nm"] ** 2
        if self.kind == "rod":
            r = d["radius_nm"]
            return 2.0 * r * (d["length_nm"] - 2.0 * r) + math.pi * r * r
        if self.kind == "cube":
            return d["edge_nm"] ** 2
        return _SQRT3 / 4.0 * d["edge_nm"] ** 2

    def bound_radius_nm(self) -> float:
        """Radius of the smallest centred circle holding the projection (for bounding boxes)."""
        d = self.dimensions_nm()
        if self.kind == "sphere":
            return d["radius_nm"]
        if self.kind == "rod":
            return d["length_nm"] / 2.0
        return d["edge_nm"] / math.sqrt(2.0) if self.kind == "cube" else d["edge_nm"] / _SQRT3

    def contact_radius_nm(self) -> float:
        """Radius of the disk of equal projected area: exact contact for spheres, an
        approximation for the other shapes (see the known limits)."""
        return math.sqrt(self.projected_area_nm2() / math.pi)

    def thickness_nm(
        self, dx_nm: np.ndarray, dy_nm: np.ndarray, pixel_nm: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Projected thickness (float32, nm) at offsets ``dx_nm`` (1 × w) and ``dy_nm`` (h × 1)
        from the centre, and the footprint (pixel centres inside the projection).

        Spheres and rods are sampled at pixel centres (their thickness falls to zero at the rim).
        Faceted shapes have full thickness up to a straight edge, which is anti-aliased by
        pixel coverage (signed distance to the edge over the pixel size).
        """
        d = self.dimensions_nm()
        if self.kind in ("sphere", "rod"):
            r = np.float32(d["radius_nm"])
            if self.kind == "sphere":
                dist2 = dx_nm * dx_nm + dy_nm * dy_nm
            else:
                c, s = np.float32(math.cos(self.angle_rad)), np.float32(math.sin(self.angle_rad))
                half_core = np.float32(d["length_nm"] / 2.0 - d["radius_nm"])
                along = np.maximum(np.abs(dx_nm * c + dy_nm * s) - half_core, np.float32(0.0))
                across = dy_nm * c - dx_nm * s
                dist2 = along * along + across * across
            inside = dist2 < r * r
            thickness = np.sqrt(np.maximum(r * r - dist2, np.float32(0.0)))
            thickness *= np.float32(2.0)
            return thickness.astype(np.float32, copy=False), inside
        if self.kind == "cube":
            sides, apothem, height = 4, d["edge_nm"] / 2.0, d["edge_nm"]
        else:
            sides, apothem, height = 3, d["edge_nm"] / (2.0 * _SQRT3), d["plate_thickness_nm"]
        signed = None  # convex polygon: the largest distance beyond any edge line
        for k in range(sides):
            phi = self.angle_rad + 2.0 * math.pi * k / sides
            edge = dx_nm * np.float32(math.cos(phi)) + dy_nm * np.float32(math.sin(phi))
            signed = edge if signed is None else np.maximum(signed, edge)
        assert signed is not None
        signed = signed - np.float32(apothem)
        coverage = np.clip(np.float32(0.5) - signed / np.float32(pixel_nm), 0.0, 1.0)
        return (coverage * np.float32(height)).astype(np.float32, copy=False), signed <= 0.0


@dataclass(frozen=True)
class ParticleSpec:
    """A particle to place: shape, position and its motion and growth parameters.

    ``diffusion_nm2_per_s`` is D for ``brownian`` and ``confined`` motion and the generalised
    coefficient K (nm²/s^α) for ``subdiffusive``; ``alpha`` is the sub-diffusion exponent
    (0 < α < 1); ``confinement_nm`` the per-axis rms excursion of a confined particle.
    """

    shape: Shape
    motion: str = "brownian"
    diffusion_nm2_per_s: float = 0.0
    alpha: float = 0.6
    confinement_nm: float = 10.0
    growth_nm_per_s: float = 0.0

    def __post_init__(self) -> None:
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")
        if not (math.isfinite(self.diffusion_nm2_per_s) and self.diffusion_nm2_per_s >= 0):
            raise ValueError("diffusion_nm2_per_s must be a finite non-negative number")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if not (math.isfinite(self.confinement_nm) and self.confinement_nm > 0):
            raise ValueError("confinement_nm must be positive")
        if not math.isfinite(self.growth_nm_per_s):
            raise ValueError("growth_nm_per_s must be finite")


@dataclass(frozen=True)
class ParticleState:
    """A live particle at the current time; ``xy_nm`` is unwrapped (not folded into the domain)."""

    track_id: int
    shape: Shape
    xy_nm: tuple[float, float]
    spec: ParticleSpec


def subdiffusion_modes(
    k_nm2_per_s_alpha: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """OU relaxation times (s), per-axis rms (nm) and a free diffusion coefficient (nm²/s) whose
    sum has a 2D MSD of ≈ 4·K·t^α.

    Modes with τ_k = τ_min·3^k and variance σ_k² = c·τ_k^α sum, in the continuum limit, to a
    per-axis MSD of (2c / ln 3)·Γ(1 − α)/α · t^α, so c = K·α·ln 3 / Γ(1 − α). The variance of
    the modes faster than τ_min is added to the first one, and the slower-than-τ_max tail becomes
    a small free diffusion (linear in t), which keeps the law within 4 % across the range.
    """
    k = np.arange(_MODES)
    tau = _MODE_TAU_MIN_S * _MODE_RATIO**k
    log_b = math.log(_MODE_RATIO)
    c = k_nm2_per_s_alpha * alpha * log_b / math.gamma(1.0 - alpha)
    var = c * tau**alpha
    var[0] += c * tau[0] ** alpha / (alpha * log_b)
    d_tail = c * tau[-1] ** (alpha - 1.0) / ((1.0 - alpha) * log_b)
    return tau, np.sqrt(var), d_tail


class Population:
    """The particles of a cell patch: Brownian/anomalous motion, growth, dissolution, coalescence.

    ``domain_nm`` is the side of the periodic square the particles live on; positions are kept
    unwrapped (so displacements and MSDs are plain differences) and folded only for contacts and
    rendering. ``ids`` hands out track ids (shared with the decoys so that ids are unique).
    """

    def __init__(
        self,
        domain_nm: float,
        rng: np.random.Generator,
        ids: Iterator[int],
        *,
        min_scale_nm: float = 1.0,
        coalescence: bool = True,
        rotation_rad2_per_s: float = 0.0,
    ) -> None:
        if not domain_nm > 0:
            raise ValueError("domain_nm must be positive")
        self.domain_nm = float(domain_nm)
        self._rng = rng
        self._ids = ids
        self._min_scale_nm = float(min_scale_nm)
        self._coalescence = coalescence
        self._rotation = float(rotation_rad2_per_s)
        self.time_s = 0.0
        self._specs: list[ParticleSpec] = []
        self._track_ids = np.zeros(0, np.int64)
        self._kind = np.zeros(0, np.int8)
        self._scale = np.zeros(0)
        self._aspect = np.zeros(0)
        self._angle = np.zeros(0)
        self._contact_per_scale = np.zeros(0)
        self._growth = np.zeros(0)
        self._d_free = np.zeros(0)
        self._base = np.zeros((0, 2))
        self._modes = np.zeros((0, _MODES, 2))
        self._tau = np.ones((0, _MODES))
        self._sigma = np.zeros((0, _MODES))
        self._alive = np.zeros(0, bool)
        self._ended: dict[int, dict[str, float | int | str]] = {}

    # -- building ---------------------------------------------------------------------------------
    def add(self, spec: ParticleSpec, xy_nm: tuple[float, float]) -> int:
        """Place a particle (unwrapped specimen coordinates, nm); returns its track id."""
        track_id = next(self._ids)
        tau = np.ones(_MODES)
        sigma = np.zeros(_MODES)
        d_free = 0.0
        if spec.motion == "brownian":
            d_free = spec.diffusion_nm2_per_s
        elif spec.motion == "confined":
            if spec.diffusion_nm2_per_s > 0:  # D = 0 means a particle stuck at its anchor
                tau[0] = spec.confinement_nm**2 / spec.diffusion_nm2_per_s
                sigma[0] = spec.confinement_nm
        else:
            tau, sigma, d_free = subdiffusion_modes(spec.diffusion_nm2_per_s, spec.alpha)
        # Start the modes in their stationary state, so the process is stationary from t = 0.
        modes = sigma[:, None] * self._rng.standard_normal((_MODES, 2))
        base = np.asarray(xy_nm, float) - modes.sum(axis=0)
        shape = spec.shape
        self._specs.append(spec)
        self._track_ids = np.append(self._track_ids, track_id)
        self._kind = np.append(self._kind, np.int8(SHAPES.index(shape.kind)))
        self._scale = np.append(self._scale, shape.scale_nm)
        self._aspect = np.append(self._aspect, shape.aspect)
        self._angle = np.append(self._angle, shape.angle_rad)
        self._contact_per_scale = np.append(
            self._contact_per_scale, shape.contact_radius_nm() / shape.scale_nm
        )
        self._growth = np.append(self._growth, spec.growth_nm_per_s)
        self._d_free = np.append(self._d_free, d_free)
        self._base = np.vstack([self._base, base[None]])
        self._modes = np.concatenate([self._modes, modes[None]])
        self._tau = np.vstack([self._tau, tau[None]])
        self._sigma = np.vstack([self._sigma, sigma[None]])
        self._alive = np.append(self._alive, True)
        return track_id

    def fits(self, shape: Shape, xy_nm: tuple[float, float], margin_nm: float = 1.0) -> bool:
        """Whether a particle of this shape at ``xy_nm`` would touch no live particle."""
        if not self._alive.any():
            return True
        live = np.flatnonzero(self._alive)
        d = self.wrap(self.positions_nm()[live] - np.asarray(xy_nm, float))
        reach = self._contact_per_scale[live] * self._scale[live] + shape.contact_radius_nm()
        return bool(np.all(np.hypot(d[:, 0], d[:, 1]) > reach + margin_nm))

    # -- queries ----------------------------------------------------------------------------------
    def wrap(self, d_nm: np.ndarray) -> np.ndarray:
        """Minimum-image displacement on the periodic domain."""
        return d_nm - self.domain_nm * np.round(d_nm / self.domain_nm)

    def positions_nm(self) -> np.ndarray:
        """Unwrapped positions of every particle ever added, in order of addition (N × 2)."""
        return self._base + self._modes.sum(axis=1)

    @property
    def track_ids(self) -> np.ndarray:
        return self._track_ids.copy()

    @property
    def alive(self) -> np.ndarray:
        return self._alive.copy()

    def ended(self) -> dict[int, dict[str, float | int | str]]:
        """Tracks that have ended: id → time_s, reason ("coalesced"/"dissolved"), merged_into."""
        return dict(self._ended)

    def particles(self) -> list[ParticleState]:
        """The live particles now."""
        pos = self.positions_nm()
        out = []
        for i in np.flatnonzero(self._alive):
            shape = Shape(
                SHAPES[self._kind[i]],
                float(self._scale[i]),
                float(self._aspect[i]),
                float(self._angle[i]),
            )
            out.append(
                ParticleState(
                    int(self._track_ids[i]),
                    shape,
                    (float(pos[i, 0]), float(pos[i, 1])),
                    self._specs[i],
                )
            )
        return out

    # -- dynamics ---------------------------------------------------------------------------------
    def step(self, dt_s: float) -> list[dict[str, float | int | str]]:
        """Advance by ``dt_s``; returns the events (coalescence, dissolution) of this step."""
        n = self._track_ids.size
        if n:
            # Draws for every slot, live or not, so the random stream does not depend on events.
            draws = self._rng.standard_normal((n, 1 + _MODES, 2))
            turns = self._rng.standard_normal(n)
            live = self._alive
            self._base[live] += np.sqrt(2.0 * self._d_free[live] * dt_s)[:, None] * draws[live, 0]
            decay = np.exp(-dt_s / self._tau[live])
            kick = self._sigma[live] * np.sqrt(-np.expm1(-2.0 * dt_s / self._tau[live]))
            self._modes[live] = (
                self._modes[live] * decay[..., None] + kick[..., None] * draws[live, 1:]
            )
            self._angle[live] += math.sqrt(2.0 * self._rotation * dt_s) * turns[live]
            self._scale[live] += self._growth[live] * dt_s
        self.time_s += dt_s
        return self._dissolve() + self._coalesce()

    def _end(self, i: int, reason: str, merged_into: int | None = None) -> dict:
        self._alive[i] = False
        record: dict[str, float | int | str] = {"time_s": self.time_s, "reason": reason}
        if merged_into is not None:
            record["merged_into"] = merged_into
        self._ended[int(self._track_ids[i])] = record
        return record

    def _dissolve(self) -> list[dict[str, float | int | str]]:
        events = []
        for i in np.flatnonzero(self._alive & (self._scale < self._min_scale_nm)):
            self._end(int(i), "dissolved")
            events.append(
                {"type": "dissolved", "track_id": int(self._track_ids[i]), "time_s": self.time_s}
            )
        return events

    def _coalesce(self) -> list[dict[str, float | int | str]]:
        if not self._coalescence:
            return []
        idx = np.flatnonzero(self._alive)
        if idx.size < 2:
            return []
        pos = self.positions_nm()[idx]
        d = self.wrap(pos[None, :, :] - pos[:, None, :])  # d[a, b]: from a to b
        reach = self._contact_per_scale[idx] * self._scale[idx]
        overlap = reach[:, None] + reach[None, :] - np.hypot(d[..., 0], d[..., 1])
        rows, cols = np.nonzero(np.triu(overlap > 0.0, 1))
        events: list[dict[str, float | int | str]] = []
        merged: set[int] = set()
        # Deepest contacts first; a particle merges at most once per step (chains take steps).
        for a, b in sorted(
            zip(rows.tolist(), cols.tolist(), strict=True), key=lambda ab: -overlap[ab[0], ab[1]]
        ):
            if a in merged or b in merged:
                continue
            merged.update((a, b))
            events.append(self._merge(int(idx[a]), int(idx[b]), d[a, b]))
        return events

    def _shape(self, i: int) -> Shape:
        return Shape(
            SHAPES[self._kind[i]],
            float(self._scale[i]),
            float(self._aspect[i]),
            float(self._angle[i]),
        )

    def _merge(self, i: int, j: int, d_ij: np.ndarray) -> dict[str, float | int | str]:
        """Merge particles i and j (``d_ij``: minimum-image vector from i to j)."""
        v_i, v_j = self._shape(i).volume_nm3(), self._shape(j).volume_nm3()
        keep, gone, towards = (i, j, d_ij) if v_i >= v_j else (j, i, -d_ij)
        v_keep, v_gone = max(v_i, v_j), min(v_i, v_j)
        total = v_keep + v_gone
        self._base[keep] += towards * (v_gone / total)  # centre of mass of the pair
        self._scale[keep] *= (total / v_keep) ** (1.0 / 3.0)  # volume is conserved
        keep_id, gone_id = int(self._track_ids[keep]), int(self._track_ids[gone])
        self._end(gone, "coalesced", keep_id)
        return {
            "type": "coalescence",
            "survivor": keep_id,
            "absorbed": gone_id,
            "time_s": self.time_s,
        }


@dataclass(frozen=True)
class DecoyState:
    """A live decoy now: a sphere of ``radius_nm`` at ``xy_nm`` (unwrapped) moving at
    ``velocity_nm_per_s``."""

    track_id: int
    kind: str
    radius_nm: float
    xy_nm: tuple[float, float]
    velocity_nm_per_s: tuple[float, float]


class DecoyField:
    """Fast decoys: constant speed, heading diffusing at ``turn_rad2_per_s`` (rad²/s)."""

    def __init__(
        self, rng: np.random.Generator, ids: Iterator[int], turn_rad2_per_s: float = 1.0
    ) -> None:
        self._rng = rng
        self._ids = ids
        self._turn = float(turn_rad2_per_s)
        self._kinds: list[str] = []
        self._track_ids: list[int] = []
        self._radius = np.zeros(0)
        self._pos = np.zeros((0, 2))
        self._speed = np.zeros(0)
        self._heading = np.zeros(0)

    def add(
        self,
        kind: str,
        radius_nm: float,
        xy_nm: tuple[float, float],
        speed_nm_per_s: float,
        heading_rad: float,
    ) -> int:
        if kind not in DECOY_KINDS:
            raise ValueError(f"decoy kind must be one of {DECOY_KINDS}, got {kind!r}")
        track_id = next(self._ids)
        self._kinds.append(kind)
        self._track_ids.append(track_id)
        self._radius = np.append(self._radius, radius_nm)
        self._pos = np.vstack([self._pos, np.asarray(xy_nm, float)[None]])
        self._speed = np.append(self._speed, speed_nm_per_s)
        self._heading = np.append(self._heading, heading_rad)
        return track_id

    def _velocity(self) -> np.ndarray:
        return self._speed[:, None] * np.stack([np.cos(self._heading), np.sin(self._heading)], 1)

    def step(self, dt_s: float) -> None:
        if not self._track_ids:
            return
        self._pos += self._velocity() * dt_s
        self._heading += math.sqrt(2.0 * self._turn * dt_s) * self._rng.standard_normal(
            len(self._track_ids)
        )

    def decoys(self) -> list[DecoyState]:
        vel = self._velocity()
        return [
            DecoyState(tid, kind, float(r), (float(p[0]), float(p[1])), (float(v[0]), float(v[1])))
            for tid, kind, r, p, v in zip(
                self._track_ids, self._kinds, self._radius, self._pos, vel, strict=True
            )
        ]


def track_ids(start: int = 1) -> Iterator[int]:
    """A fresh source of track ids."""
    return itertools.count(start)
