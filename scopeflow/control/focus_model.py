"""Where is focus? A posterior over the focus WD from AENet's |Δz| readings of several frames.

Each frame ``i`` was taken at a known WD ``x_i`` (in DoF units) and AENet read its defocus as
``u_i`` DoF with a log-scale uncertainty ``σ_i``. The model is the V that geometry gives
(DESIGN §5: blur grows linearly with |Δz|), seen through AENet's response ``g``:

    log(u_i + c) = log(k·g(|x_i − f|) + c) + ε_i,   ε_i ~ Student-t(ν, scale s_i)

with ``f`` the focus WD, ``k`` an unknown gain common to the frames of one run (a specimen that
AENet reads as blurrier or sharper than it is: the errors of one run are largely a shared
scale, which two frames at known offsets cancel), ``c`` a constant that keeps the log finite,
and ``s_i = hypot(σ_i, s_floor)``. ``g`` has a soft dead zone: AENet reads ~0.3 DoF anywhere
within ~0.9 DoF of focus and ``|Δz| − 0.6`` beyond (fitted by maximum likelihood on tuning
trials, docs/autofocus.md). The posterior over ``f`` is evaluated on a grid (``k``
marginalised over a log-normal prior). One frame leaves two modes (``x_0 ± u_0``): the sign is
unknown until a second frame at another WD breaks the tie.

Near focus AENet cannot resolve fractions of a DoF, but a classical sharpness score ``S`` of
the same field can: within a few DoF its log falls linearly with |Δz| (a V, symmetric about
focus, its slope depending on specimen and dose). Once two or more frames read as near
(AENet |Δz| ≤ ``near_dof``), their sharpness adds a profile likelihood: for each candidate ``f``
the best ``log S_i = A − b·√((x_i − f)² + a²)`` (b ≥ 0; ``a`` rounds the apex,
where the probe and the pixel leave a blur floor) is fitted and its residuals scored with a
Gaussian of scale ``sharpness_sigma`` (scaled as 1/√dose: shot noise). Two frames already say
which side of their midpoint focus lies on (the sharper one is nearer); three or more on both
sides of focus pin ``f`` to a fraction of a DoF.

Frames without signal carry no information and are not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WIDE_ZONE_JOIN_DOF = 4.0  # a wider dead zone's response rejoins the trained one this far out


@dataclass(frozen=True)
class FocusModelConfig:
    """Noise model of AENet's readings and the grid; measured on the simulator (docs)."""

    floor_dof: float = 0.5  # c: keeps log(u + c) finite and tames tiny readings
    # AENet's response g(|Δz|): flat at ~0.3 DoF within ~0.9 DoF of focus, then |Δz| − 0.6
    # (fitted by maximum likelihood on tuning trials of the trained families, docs/autofocus.md)
    dead_zone_dof: float = 0.9
    dead_zone_softness_dof: float = 0.1
    dead_zone_reading_dof: float = 0.3
    scale_floor: float = 0.08  # s_floor: the fitted log error beyond AENet's own σ
    # Wider dead zones a specimen AENet never saw may have (the held-out pores read ~0.3 DoF
    # out to ~2 DoF), with ``wide_dead_zone_prior`` their prior mass together.
    wide_dead_zones_dof: tuple[float, ...] = (1.6, 2.3)
    wide_dead_zone_prior: float = 0.4
    dof_nu: float = 3.0  # Student-t degrees of freedom: heavy tails for misread frames
    log_gain_sigma: float = 0.25  # prior spread of log k
    log_gain_max: float = 0.75
    log_gain_step: float = 0.05
    grid_step_dof: float = 0.05
    half_width_dof: float = 80.0  # the grid spans the first frame's WD ± this, within limits
    near_dof: float = 4.0  # frames AENet reads within this take part in the sharpness V
    sharpness_sigma: float = 0.005  # log-sharpness misfit scale at 50 e⁻/px (noise, curvature)
    sharpness_sigma_range: tuple[float, float] = (0.004, 0.02)
    sharpness_min_frames: int = 2  # near frames before their sharpness takes part
    sharpness_apex_dof: tuple[float, ...] = (0.5,)  # candidate roundings a of the V's apex


@dataclass(frozen=True)
class Reading:
    """One frame as the model uses it: WD in DoF units (any fixed origin), AENet's |Δz| and
    its log-scale uncertainty."""

    x_dof: float
    abs_defocus_dof: float
    log_sigma: float
    sharpness: float | None = None
    dose_e_per_px: float | None = None  # sharpness is noisier at low dose


def aenet_response(
    abs_defocus_dof: np.ndarray | float,
    config: FocusModelConfig,
    dead_zone_dof: float | None = None,
) -> np.ndarray:
    """AENet's expected reading at true |Δz| (gain 1): a soft dead zone near focus,
    ``g(d) = soft·log(1 + exp((d − dead_zone)/soft)) + dead_zone_reading``.

    A wider ``dead_zone_dof`` (a specimen AENet never saw) keeps the reading flat out to it,
    then rises in a straight line that rejoins ``g`` :data:`WIDE_ZONE_JOIN_DOF` further on:
    far from focus every curve is the same, so far jumps do not depend on the zone.
    """
    soft, floor = config.dead_zone_softness_dof, config.dead_zone_reading_dof
    d = np.asarray(abs_defocus_dof, dtype=float)
    g = soft * np.logaddexp(0.0, (d - config.dead_zone_dof) / soft) + floor
    if dead_zone_dof is None or dead_zone_dof <= config.dead_zone_dof:
        return g
    join = dead_zone_dof + WIDE_ZONE_JOIN_DOF
    g_join = soft * np.logaddexp(0.0, (join - config.dead_zone_dof) / soft) + floor
    slope = (g_join - floor) / WIDE_ZONE_JOIN_DOF
    return np.minimum(g, floor + slope * soft * np.logaddexp(0.0, (d - dead_zone_dof) / soft))


def reading_loglik(
    reading_dof: float, log_sigma: float, expected: np.ndarray, config: FocusModelConfig
) -> np.ndarray:
    """Log density of one AENet reading for each expected reading in ``expected`` (any
    shape): Student-t on ``log(u + c)``, scale ``hypot(σ, s_floor)`` (normalised, so fits of
    the scale can compare it)."""
    c = config.floor_dof
    s = math.hypot(max(log_sigma, 0.0), config.scale_floor)
    r = (math.log(max(reading_dof, 0.0) + c) - np.log(expected + c)) / s
    return -0.5 * (config.dof_nu + 1.0) * np.log1p(r * r / config.dof_nu) - math.log(s)


def gain_grid(config: FocusModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(log k on its grid, the log-normal prior of each, unnormalised): AENet's per-run gain."""
    log_k = np.arange(-config.log_gain_max, config.log_gain_max + 1e-9, config.log_gain_step)
    return log_k, -0.5 * (log_k / config.log_gain_sigma) ** 2


class FocusPosterior:
    """The posterior over the focus WD on a grid ``f`` (DoF units, the readings' origin)."""

    def __init__(
        self, lo_dof: float, hi_dof: float, config: FocusModelConfig | None = None
    ) -> None:
        if not (math.isfinite(lo_dof) and math.isfinite(hi_dof) and hi_dof > lo_dof):
            raise ValueError(f"need a finite grid range with lo < hi, got [{lo_dof}, {hi_dof}]")
        self.config = cfg = config or FocusModelConfig()
        n = math.ceil((hi_dof - lo_dof) / cfg.grid_step_dof) + 1
        self.f = np.linspace(lo_dof, hi_dof, n)
        self.log_k, self._log_prior_k = gain_grid(cfg)
        self.dead_zones = (cfg.dead_zone_dof, *cfg.wide_dead_zones_dof)
        wide = len(cfg.wide_dead_zones_dof)
        prior = (
            [1.0]
            if not wide
            else [1.0 - cfg.wide_dead_zone_prior] + [cfg.wide_dead_zone_prior / wide] * wide
        )
        self._log_prior_zone = np.log(np.asarray(prior) + 1e-300)
        self.readings: list[Reading] = []
        # (dead zone, gain, focus)
        self._loglik = np.zeros((len(self.dead_zones), len(self.log_k), n))
        self._density: np.ndarray | None = None  # cached until the next reading

    def add(self, reading: Reading) -> None:
        """Fold in one frame's reading."""
        if not (
            math.isfinite(reading.x_dof)
            and math.isfinite(reading.abs_defocus_dof)
            and math.isfinite(reading.log_sigma)
        ):
            raise ValueError(f"reading has non-finite values: {reading}")
        self.readings.append(reading)
        self._density = None
        dist = np.abs(reading.x_dof - self.f)
        gains = np.exp(self.log_k)[:, None]
        for i, zone in enumerate(self.dead_zones):
            expected = gains * aenet_response(dist, self.config, zone)
            self._loglik[i] += reading_loglik(
                reading.abs_defocus_dof, reading.log_sigma, expected, self.config
            )

    def _joint(self) -> np.ndarray:
        """Log joint of AENet's readings over (dead zone, gain, focus), priors included."""
        return self._loglik + self._log_prior_k[None, :, None] + self._log_prior_zone[:, None, None]

    def near_readings(self) -> list[Reading]:
        """Readings near focus by AENet that carry a sharpness score."""
        return [
            r
            for r in self.readings
            if r.sharpness is not None
            and r.sharpness > 0
            and r.abs_defocus_dof <= self.config.near_dof
        ]

    def sharpness_loglik(self) -> np.ndarray:
        """Profile log likelihood of ``f`` from the near frames' sharpness (0 with fewer than
        ``sharpness_min_frames``)."""
        near = self.near_readings()
        if len(near) < self.config.sharpness_min_frames:
            return np.zeros_like(self.f)
        x = np.array([r.x_dof for r in near])
        y = np.log(np.array([r.sharpness for r in near]))
        sigma = np.array([self.sharpness_sigma(r.dose_e_per_px) for r in near])
        # The V's apex is rounded: the probe and the pixel leave a blur floor, and astigmatism
        # flattens it between the line foci. The rounding is marginalised over its candidates.
        logliks = [self._v_loglik(x, y, sigma, a) for a in self.config.sharpness_apex_dof]
        stacked = np.stack(logliks)
        top = stacked.max(axis=0)
        return top + np.log(np.exp(stacked - top).mean(axis=0))

    def _v_loglik(self, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, apex: float) -> np.ndarray:
        """Log likelihood of each ``f`` for ``log S = A − b·√((x − f)² + apex²)``, A and b
        fitted by least squares per ``f``."""
        d = np.hypot(x[None, :] - self.f[:, None], apex)
        d_mean, y_mean = d.mean(axis=1, keepdims=True), y.mean()
        dc = d - d_mean
        var = (dc * dc).sum(axis=1)
        slope = np.where(var > 1e-12, (dc * (y - y_mean)).sum(axis=1) / np.maximum(var, 1e-12), 0.0)
        b = np.maximum(-slope, 0.0)  # sharpness must fall away from focus
        intercept = y_mean + b * d_mean[:, 0]
        resid = y[None, :] - (intercept[:, None] - b[:, None] * d)
        return -0.5 * ((resid / sigma[None, :]) ** 2).sum(axis=1)

    def sharpness_sigma(self, dose_e_per_px: float | None) -> float:
        """Log-sharpness misfit scale: shot noise grows as 1/√dose (reference 50 e⁻/px)."""
        cfg = self.config
        if dose_e_per_px is None or dose_e_per_px <= 0:
            return cfg.sharpness_sigma
        scaled = cfg.sharpness_sigma * math.sqrt(50.0 / dose_e_per_px)
        return float(min(max(scaled, cfg.sharpness_sigma_range[0]), cfg.sharpness_sigma_range[1]))

    def density(self) -> np.ndarray:
        """Normalised posterior mass per grid point of ``f`` (computed once per reading; a
        decision asks for it several times). Read-only."""
        if self._density is None:
            joint = self._joint()
            joint = np.exp(joint - joint.max())
            logp = np.log(joint.sum(axis=(0, 1)) + 1e-300) + self.sharpness_loglik()
            p = np.exp(logp - logp.max())
            self._density = p / p.sum()
            self._density.flags.writeable = False
        return self._density

    def mass_within(self, centre_dof: float, half_width_dof: float) -> float:
        """P(|f − centre| ≤ half_width)."""
        p = self.density()
        return float(p[np.abs(self.f - centre_dof) <= half_width_dof].sum())

    def best_target(self, half_width_dof: float) -> tuple[float, float]:
        """(WD, P(|f − WD| ≤ half_width)) for the WD that maximises that probability."""
        p = self.density()
        w = max(1, round(half_width_dof / self.config.grid_step_dof))
        window = np.convolve(p, np.ones(2 * w + 1), mode="same")
        i = int(np.argmax(window))
        # A posterior narrower than the window gives a plateau of equal windows: take its middle
        # (argmax alone would take its first point, half a window off the peak).
        j = i
        while j + 1 < len(window) and window[j + 1] >= window[i] * (1.0 - 1e-6):
            j += 1
        mid = (i + j) // 2
        return float(self.f[mid]), float(window[mid])

    def interval(self, mass: float = 0.98) -> tuple[float, float]:
        """The central interval holding ``mass`` of the posterior."""
        cdf = np.cumsum(self.density())
        tail = (1.0 - mass) / 2.0
        lo = self.f[min(int(np.searchsorted(cdf, tail)), len(self.f) - 1)]
        hi = self.f[min(int(np.searchsorted(cdf, 1.0 - tail)), len(self.f) - 1)]
        return float(lo), float(hi)

    def worst_residual(self) -> float:
        """The largest standardised residual of any reading at the best (f, k): a conflict
        measure (readings no single focus position explains)."""
        iz, ik, i_f = np.unravel_index(int(np.argmax(self._joint())), self._loglik.shape)
        cfg, f, k = self.config, self.f[i_f], math.exp(self.log_k[ik])
        worst = 0.0
        for rd in self.readings:
            s = math.hypot(max(rd.log_sigma, 0.0), cfg.scale_floor)
            expected = k * float(aenet_response(abs(rd.x_dof - f), cfg, self.dead_zones[iz]))
            r = (
                math.log(rd.abs_defocus_dof + cfg.floor_dof) - math.log(expected + cfg.floor_dof)
            ) / s
            worst = max(worst, abs(r))
        return worst
