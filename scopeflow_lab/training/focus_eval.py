"""Held-out evaluation of AENet and ACNet on simulated SEM data, used by their training (the
metrics.json of a run) and by ``scopeflow bench models`` (:mod:`scopeflow_lab.bench.models_focus`).

AENet is scored on frames from :class:`~scopeflow_lab.sim.sem.dataset.SEMFocusSource` (the
project's dataset: 512² frames, defocus uniform in ±30 DoF, pixel sizes 5/10/20 nm, α 2/3/5
mrad, doses 10–500 e⁻/px log-uniform, astigmatism in half the frames) built from seeds never
used in training (``EVAL_SEEDS``: specimens and noise; training uses seeds ≥ 100 000), once on
the specimen families seen in training and once on the held-out families. Beside it, in the same
run and on the same frames, the classical metrics of :mod:`scopeflow.inference.sharpness`.

ACNet is scored in short closed loops on the simulated SEM: a random start within ±30 DoF, a
frame, ACNet's move, a frame, its next move…, with AENet reading every frame (all on ONNX
Runtime). Sign accuracy counts frames at least 1 DoF from focus, where the sign matters, and is
also given for frames within 5 DoF, where the astigmatic ellipse is elongated enough to see
(its anisotropy falls as a/|Δz| for astigmatism a).

Spearman correlations use numpy average ranks. Sign convention: ``spearman_abs_dz`` is the
magnitude |ρ(score, |Δz|)|; ``spearman_abs_dz_signed`` is ρ itself, negative when the score falls
as |Δz| grows (as it should: 9 is in focus).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from scopeflow.inference.models import aenet as aenet_model
from scopeflow.inference.models.acnet import ACNet, Observation
from scopeflow.inference.models.aenet import AENet
from scopeflow.inference.sharpness import METRICS
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM, make_specimen
from scopeflow_lab.sim.sem.dataset import SEMDatasetConfig, SEMFocusSource

EVAL_SEEDS = (11, 12, 13, 14)  # specimens and noise of the evaluation; never used in training
ACNET_EVAL_SEED = 21
GAINS = (0.5, 0.7, 1.4, 2.0)
OFFSETS = (-0.2, 0.0, 0.2)  # × the frame's mean
SIGN_MIN_DOF = 1.0  # sign accuracy counts frames at least this far from focus
NEAR_DOF = 5.0  # ...and is also reported for frames within this distance, where astigmatism shows
FOCUS_WD_UM = 5000.0


class TorchNetSession:
    """A Session over an in-memory torch module (for evaluating a net before it is shipped)."""

    backend = "torch"

    def __init__(self, net: Any, module: Any) -> None:
        import torch

        self._torch = torch
        self._net = net.eval()
        self.model = module.NAME
        self.input_names = tuple(module.INPUT_NAMES)
        self.output_names = tuple(module.OUTPUT_NAMES)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self._net(
                *[torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names]
            )
        out = (out,) if isinstance(out, torch.Tensor) else out
        return {n: o.numpy() for n, o in zip(self.output_names, out, strict=True)}


# -- statistics ---------------------------------------------------------------------------------
def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1…n, ties sharing their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks)."""
    ra, rb = rank(a), rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(np.sum(ra * ra) * np.sum(rb * rb)))
    return float(np.sum(ra * rb) / denom) if denom > 0 else 0.0


# -- AENet --------------------------------------------------------------------------------------
def heldout_families() -> tuple[str, ...]:
    """Families held out of AENet's training: from the shipped metadata, else the trainer's."""
    from scopeflow.inference.models.registry import model_metadata

    try:
        return tuple(model_metadata("aenet")["heldout_families"])
    except (FileNotFoundError, KeyError):
        from scopeflow_lab.training.aenet_scenes import HELDOUT_FAMILIES

        return HELDOUT_FAMILIES


def eval_frames(
    families: tuple[str, ...], n: int, frame_size: int = 512, seeds: tuple[int, ...] = EVAL_SEEDS
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """``n`` held-out frames (pixels, ground truth) over ``seeds``."""
    out: list[tuple[np.ndarray, dict[str, Any]]] = []
    per_seed = -(-n // len(seeds))
    for seed in seeds:
        cfg = SEMDatasetConfig(frame_size=frame_size, families=families)
        for image in SEMFocusSource(seed=seed, config=cfg).images(min(per_seed, n - len(out))):
            out.append((image.image, image.attributes))
    return out


def _affine(frame: np.ndarray, gain: float, offset_fraction: float, requantize: bool) -> np.ndarray:
    x = frame.astype(np.float32)
    y = x * np.float32(gain) + np.float32(offset_fraction * float(x.mean()))
    if requantize:
        info = np.iinfo(frame.dtype)
        return np.clip(np.rint(y), 0, info.max).astype(frame.dtype)
    return y


def _frames_table(
    aenet: AENet, frames: list[tuple[np.ndarray, dict[str, Any]]]
) -> dict[str, np.ndarray]:
    scores, levels, est = [], [], []
    for pixels, _ in frames:
        r = aenet.evaluate(pixels)
        scores.append(r.score)
        levels.append(r.level)
        est.append(r.abs_defocus_dof)
    true_u = np.array([abs(a["defocus_dof"]) for _, a in frames])
    return {
        "score": np.array(scores),
        "level": np.array(levels),
        "est": np.array(est),
        "true_u": true_u,
        "true_level": np.asarray(aenet_model.level_from_dof(true_u)),
        "dose": np.array([a["dose_e_per_px"] for _, a in frames]),
        "family": np.array([a["family"] for _, a in frames]),
    }


def _level_figures(t: dict[str, np.ndarray]) -> dict[str, Any]:
    off = np.abs(t["level"] - t["true_level"])
    log_err = np.abs(
        np.log(np.sqrt(t["est"] ** 2 + aenet_model.U0_DOF**2))
        - np.log(np.sqrt(t["true_u"] ** 2 + aenet_model.U0_DOF**2))
    )
    rho = spearman(t["score"], t["true_u"])
    by_family = {
        str(f): float(np.mean(off[t["family"] == f] <= 1))
        for f in sorted(set(t["family"].tolist()))
    }
    low = t["dose"] <= 30
    return {
        "frames": len(off),
        "within_one_level": float(np.mean(off <= 1)),
        "exact_level": float(np.mean(off == 0)),
        "median_abs_log_error": float(np.median(log_err)),
        "spearman_abs_dz": abs(rho),
        "spearman_abs_dz_signed": rho,
        "within_one_level_by_family": by_family,
        "within_one_level_dose_le_30": float(np.mean(off[low] <= 1)) if low.any() else None,
    }


def gain_offset_change(
    aenet: AENet, frames: list[tuple[np.ndarray, dict[str, Any]]], requantize: bool
) -> float:
    """Max |score(frame·g + o) − score(frame)| over frames, g in GAINS, o in OFFSETS × mean."""
    worst = 0.0
    for pixels, _ in frames:
        base = aenet.evaluate(pixels.astype(np.float32) if not requantize else pixels).score
        for g in GAINS:
            for o in OFFSETS:
                moved = aenet.evaluate(_affine(pixels, g, o, requantize)).score
                worst = max(worst, abs(moved - base))
    return worst


def _classical(
    frames: list[tuple[np.ndarray, dict[str, Any]]], true_u: np.ndarray
) -> dict[str, float]:
    return {
        name: abs(spearman(np.array([fn(p) for p, _ in frames]), true_u))
        for name, fn in METRICS.items()
    }


def _classical_offset_change(frames: list[tuple[np.ndarray, dict[str, Any]]]) -> float:
    """Largest relative change of normalised variance under the same gains and offsets."""
    fn = METRICS["normalized_variance"]
    worst = 0.0
    for pixels, _ in frames:
        base = fn(pixels)
        for g in GAINS:
            for o in OFFSETS:
                worst = max(worst, abs(fn(_affine(pixels, g, o, False)) / base - 1.0))
    return worst


def aenet_metrics(
    aenet: AENet,
    n_frames: int = 400,
    frame_size: int = 512,
    n_gain_frames: int = 40,
    seeds: tuple[int, ...] = EVAL_SEEDS,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """AENet's held-out figures (seen families with new seeds; held-out families) and the
    classical baselines' on the same frames."""
    from scopeflow_lab.training.aenet_scenes import TRAIN_FAMILIES

    held = heldout_families()
    seen = tuple(f for f in TRAIN_FAMILIES if f not in held)
    progress(f"  aenet: {n_frames} frames of {', '.join(seen)} (unseen seeds)")
    seen_frames = eval_frames(seen, n_frames, frame_size, seeds)
    t_seen = _frames_table(aenet, seen_frames)
    progress(f"  aenet: {n_frames} frames of held-out {', '.join(held)}")
    held_frames = eval_frames(held, n_frames, frame_size, seeds)
    t_held = _frames_table(aenet, held_frames)
    s, h = _level_figures(t_seen), _level_figures(t_held)
    progress("  aenet: gain/offset invariance")
    half = max(1, n_gain_frames // 2)
    subset = seen_frames[:half] + held_frames[:half]
    return {
        "within_one_level": s["within_one_level"],
        "spearman_abs_dz": s["spearman_abs_dz"],
        "spearman_abs_dz_signed": s["spearman_abs_dz_signed"],
        "heldout_within_one_level": h["within_one_level"],
        "heldout_spearman_abs_dz": h["spearman_abs_dz"],
        "max_score_change_under_gain_offset": gain_offset_change(aenet, subset, False),
        "max_score_change_under_gain_offset_requantized": gain_offset_change(aenet, subset, True),
        "seen": s,
        "heldout": h,
        "heldout_families": list(held),
        "baseline": {
            "spearman_abs_dz": _classical(seen_frames, t_seen["true_u"]),
            "heldout_spearman_abs_dz": _classical(held_frames, t_held["true_u"]),
            "normalized_variance_max_relative_change_under_gain_offset": _classical_offset_change(
                subset
            ),
        },
        "protocol": {
            "frames_each": n_frames,
            "frame_size": frame_size,
            "eval_seeds": list(seeds),
            "gains": list(GAINS),
            "offsets_fraction_of_mean": list(OFFSETS),
            "gain_offset_frames": len(subset),
            "level_edges_dof": list(aenet_model.LEVEL_EDGES_DOF),
            "notes": "gain/offset applied in float32; '_requantized' rounds and clips to the "
            "frame's dtype (saturation loses information)",
        },
    }


# -- ACNet --------------------------------------------------------------------------------------
def _trial_microscope(
    rng: np.random.Generator, family: str, specimens: dict[str, Any], frame_size: int, index: int
) -> tuple[SimulatedSEM, float, float | None]:
    """A simulated SEM at a random start within ±30 DoF: (sim, DoF µm, astigmatism axis or
    None when there is no astigmatism)."""
    if family not in specimens:
        specimens[family] = make_specimen(family, ACNET_EVAL_SEED)
    pixel_nm = float(rng.choice([5.0, 10.0, 20.0]))
    alpha = float(rng.choice([2.0, 3.0, 5.0]))
    dof = pixel_nm / alpha
    dose = float(np.exp(rng.uniform(np.log(10.0), np.log(500.0))))
    astig = rng.random() < 0.5
    angle = float(rng.uniform(0.0, 180.0))
    start = float(rng.uniform(-30.0, 30.0))
    cfg = replace(
        SEMConfig(),
        frame_shape=(frame_size, frame_size),
        pixel_size_nm=pixel_nm,
        beam_semiangle_mrad=alpha,
        dose_e_per_px=dose,
        family=family,
        seed=ACNET_EVAL_SEED * 100_000 + index,
        astigmatism_um=float(rng.uniform(0.5, 3.0)) * dof if astig else 0.0,
        astigmatism_angle_deg=angle,
        focus_wd_um=FOCUS_WD_UM,
        start_wd_um=FOCUS_WD_UM + start * dof,
        settle_s=0.0,
        start_stage_x_um=float(rng.uniform(-20, 20)),
        start_stage_y_um=float(rng.uniform(-20, 20)),
    )
    return SimulatedSEM(cfg, specimen=specimens[family]), dof, angle if astig else None


def _rate(hits: list[bool]) -> float | None:
    return float(np.mean(hits)) if hits else None


def acnet_metrics(
    aenet: AENet,
    acnet: ACNet,
    n_trials: int = 200,
    moves: int = 3,
    frame_size: int = 512,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Short closed loops (frame → AENet → ACNet → move, ``moves`` times) from random starts.

    The loop runs with the astigmatism axis unknown to ACNet; on the first frame ACNet is also
    asked with the axis given, for the single-frame sign figure.
    """
    from scopeflow_lab.training.aenet_scenes import TRAIN_FAMILIES

    held = heldout_families()
    families = tuple(f for f in TRAIN_FAMILIES if f not in held) + held
    rng = np.random.default_rng([ACNET_EVAL_SEED, 0xAC])
    specimens: dict[str, Any] = {}
    sign1: dict[str, list[tuple[float, bool]]] = {
        "astig_axis_known": [],
        "astig_axis_unknown": [],
        "no_astig": [],
    }
    sign2: dict[str, list[tuple[float, bool]]] = {"astig": [], "no_astig": []}
    errors = np.zeros((n_trials, moves))
    conf = np.zeros((n_trials, moves))
    heldout = np.zeros(n_trials, bool)
    progress(f"  acnet: {n_trials} closed loops of {moves} moves")
    for i in range(n_trials):
        family = families[i % len(families)]
        heldout[i] = family in held
        sim, dof, axis = _trial_microscope(rng, family, specimens, frame_size, i)
        history: list[tuple[float, Any]] = []
        for step in range(moves):
            frame = sim.acquire()
            assert frame.truth is not None
            dz = frame.truth.defocus_um / dof
            wd = frame.state.wd_um
            history.append((wd, aenet.evaluate(frame.pixels)))
            obs = [Observation(r, (w - wd) / dof) for w, r in history]
            prop = acnet.propose(obs)
            far = abs(dz) >= SIGN_MIN_DOF
            right = prop.correction_dof * dz < 0
            if step == 0 and far:
                if axis is not None:
                    known = acnet.propose(obs, astigmatism_axis_deg=axis)
                    sign1["astig_axis_known"].append((abs(dz), known.correction_dof * dz < 0))
                    sign1["astig_axis_unknown"].append((abs(dz), right))
                else:
                    sign1["no_astig"].append((abs(dz), right))
            if step == 1 and far:
                sign2["astig" if axis is not None else "no_astig"].append((abs(dz), right))
            errors[i, step] = abs(dz + prop.correction_dof)
            conf[i, step] = prop.confidence
            limits = sim.limits()
            target = min(max(wd + prop.correction_dof * dof, limits.wd_min_um), limits.wd_max_um)
            sim.set_wd(target)
    success = errors <= 0.5
    return {
        "trials": n_trials,
        "sign_accuracy_one_frame": {k: _rate([r for _, r in v]) for k, v in sign1.items()},
        "sign_accuracy_one_frame_within_5_dof": {
            k: _rate([r for d, r in v if d <= NEAR_DOF]) for k, v in sign1.items()
        },
        "sign_accuracy_two_frames": {k: _rate([r for _, r in v]) for k, v in sign2.items()},
        "sign_accuracy_two_frames_within_5_dof": {
            k: _rate([r for d, r in v if d <= NEAR_DOF]) for k, v in sign2.items()
        },
        "median_abs_error_after_move_dof": [float(np.median(errors[:, k])) for k in range(moves)],
        "p95_abs_error_after_move_dof": [
            float(np.percentile(errors[:, k], 95)) for k in range(moves)
        ],
        "within_half_dof_after_move": [float(np.mean(success[:, k])) for k in range(moves)],
        "heldout_within_half_dof_after_move": [
            float(np.mean(success[heldout, k])) for k in range(moves)
        ]
        if heldout.any()
        else None,
        "mean_confidence_after_move": [float(np.mean(conf[:, k])) for k in range(moves)],
        "success_when_confident": _rate(success[conf >= 0.8].tolist()),
        "confident_fraction": float(np.mean(conf >= 0.8)),
        "protocol": {
            "start_dof": "uniform ±30",
            "frame_size": frame_size,
            "pixel_sizes_nm": [5, 10, 20],
            "alpha_mrad": [2, 3, 5],
            "dose_e_per_px": "10–500 log-uniform",
            "astigmatism": "half the trials, 0.5–3 DoF, random axis",
            "families": list(families),
            "sign_min_dof": SIGN_MIN_DOF,
            "seed": ACNET_EVAL_SEED,
            "loop": "axis unknown to ACNet; moves clamped to the WD limits",
        },
    }


# -- speed --------------------------------------------------------------------------------------
