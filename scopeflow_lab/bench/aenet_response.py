"""``scopeflow bench aenet-response``: what AENet reads against the true |Δz|, and the fit of
the focus model's response to it.

The autofocus posterior (:mod:`scopeflow.control.focus_model`) expects a reading ``k·g(|Δz|)``
with a per-run gain ``k`` and a soft dead zone ``g``. This command measures the curve and fits
``g``'s parameters and the error scale, so the shipped values can be checked or redone (for a
new AENet, or a real microscope's specimens):

- frames of seeded trials (:func:`~scopeflow_lab.bench.autofocus_trials.make_trials`, a tuning
  seed, by default 43, never the benchmark's 31) on the families AENet trained on, each at 13
  defocus values within ±3 DoF and 8 uniform within ±30 DoF;
- the fit maximises the model's own likelihood (:func:`~scopeflow.control.focus_model.
  reading_loglik`, the gain marginalised per trial on the posterior's grid and prior) over
  (dead zone, softness, dead-zone reading, scale floor) by Nelder–Mead;
- it prints the median reading per |Δz| bin, the fitted values beside the shipped ones, and
  the log-likelihood of each and of the straight V (``g(d) = d``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import numpy as np

from scopeflow.control.focus_model import (
    FocusModelConfig,
    aenet_response,
    gain_grid,
    reading_loglik,
)

FITTED = ("dead_zone_dof", "dead_zone_softness_dof", "dead_zone_reading_dof", "scale_floor")
BINS_DOF = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 18.0, 25.0, 31.0)


def sample(trials: int, seed: int, progress=print) -> dict[str, np.ndarray]:
    """AENet's readings of frames at known defocus, trained families only."""
    from scopeflow_lab.bench.autofocus_trials import (
        FOCUS_WD_UM,
        FrameReader,
        SpecimenCache,
        make_trials,
    )

    reader, cache = FrameReader("aenet"), SpecimenCache()
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([np.linspace(-3.0, 3.0, 13), rng.uniform(-30.0, 30.0, 8)])
    rows: list[tuple[int, float, float, float]] = []
    chosen = [t for t in make_trials(trials, seed) if not t.heldout]
    for n, trial in enumerate(chosen, 1):
        sim = cache.microscope(trial)
        for dz in offsets:
            sim.set_wd(FOCUS_WD_UM + dz * trial.dof_um)
            frame = sim.acquire()
            r = reader(frame)
            if r.abs_defocus_dof is None or r.features is None or frame.truth is None:
                continue  # no signal: nothing to calibrate with
            rows.append(
                (
                    trial.index,
                    abs(frame.truth.defocus_um) / trial.dof_um,
                    r.abs_defocus_dof,
                    float(r.features[1]),
                )
            )
        if n % 10 == 0 or n == len(chosen):
            progress(f"  {n}/{len(chosen)} trials sampled")
    trial, dz, u, sigma = (np.array(c) for c in zip(*rows, strict=True))
    return {"trial": trial.astype(int), "abs_dz": dz, "reading": u, "sigma": sigma}


def log_likelihood(
    data: dict[str, np.ndarray], config: FocusModelConfig, straight: bool = False
) -> float:
    """Log-likelihood of the readings under ``config``, the gain of each trial marginalised on
    the posterior's grid and prior (``straight``: the plain V, ``g(d) = d``)."""
    log_k, log_prior = gain_grid(config)
    log_prior = log_prior - np.log(np.exp(log_prior).sum())
    g = data["abs_dz"] if straight else aenet_response(data["abs_dz"], config)
    total = 0.0
    for t in np.unique(data["trial"]):
        idx = np.flatnonzero(data["trial"] == t)
        ll = log_prior.copy()
        for i in idx:
            ll += reading_loglik(
                float(data["reading"][i]), float(data["sigma"][i]), np.exp(log_k) * g[i], config
            )
        top = ll.max()
        total += top + math.log(np.exp(ll - top).sum())
    return float(total)


def fit(data: dict[str, np.ndarray], start: FocusModelConfig) -> FocusModelConfig:
    """Maximum-likelihood response parameters (:data:`FITTED`), from ``start``."""
    from scipy.optimize import minimize

    def config_of(theta: np.ndarray) -> FocusModelConfig:
        d0, log_soft, log_reading, log_scale = theta
        return replace(
            start,
            dead_zone_dof=float(d0),
            dead_zone_softness_dof=math.exp(log_soft),
            dead_zone_reading_dof=math.exp(log_reading),
            scale_floor=math.exp(log_scale),
        )

    theta0 = np.array(
        [
            start.dead_zone_dof,
            math.log(start.dead_zone_softness_dof),
            math.log(start.dead_zone_reading_dof),
            math.log(start.scale_floor),
        ]
    )
    best = minimize(
        lambda th: -log_likelihood(data, config_of(th)),
        theta0,
        method="Nelder-Mead",
        options={"maxiter": 600, "xatol": 1e-3, "fatol": 1e-2},
    )
    return config_of(best.x)


def run(trials: int = 90, seed: int = 43, progress=print) -> dict[str, Any]:
    """Sample, fit and report (the dict ``scopeflow bench aenet-response`` writes)."""
    data = sample(trials, seed, progress)
    shipped = FocusModelConfig()
    progress(f"fitting {len(data['reading'])} readings of {len(np.unique(data['trial']))} trials")
    fitted = fit(data, shipped)
    bins = []
    for lo, hi in itertools.pairwise(BINS_DOF):
        inside = (data["abs_dz"] >= lo) & (data["abs_dz"] < hi)
        if inside.any():
            u = data["reading"][inside]
            mid = (lo + hi) / 2
            bins.append(
                {
                    "abs_dz_dof": [lo, hi],
                    "n": int(inside.sum()),
                    "reading_median": float(np.median(u)),
                    "reading_q10": float(np.quantile(u, 0.1)),
                    "reading_q90": float(np.quantile(u, 0.9)),
                    "shipped_g": float(aenet_response(mid, shipped)),
                    "fitted_g": float(aenet_response(mid, fitted)),
                }
            )
    return {
        "trials": trials,
        "seed": seed,
        "readings": len(data["reading"]),
        "bins": bins,
        "shipped": {k: getattr(shipped, k) for k in FITTED},
        "fitted": {k: getattr(fitted, k) for k in FITTED},
        "log_likelihood": {
            "shipped": log_likelihood(data, shipped),
            "fitted": log_likelihood(data, fitted),
            "straight_v": log_likelihood(data, shipped, straight=True),
        },
    }
