"""Denoiser benchmark: PSNR/SSIM on held-out simulated frames against BM3D, non-local means and
a Gaussian filter, all run here on the same frames; throughput and backend agreement.

What every method gets: the noisy frame alone. Each derives its strength from the same robust
noise estimate of that frame, :func:`noise_sigma` (Donoho's MAD of the finest diagonal Haar
detail, which the image content barely touches); no method is told the dose or the detector's
gain. The baselines' one free parameter each — BM3D's σ as a multiple of the estimate, the
non-local means ``h`` as a multiple of it, the Gaussian's σ in pixels — is chosen per modality
as the best mean PSNR on a calibration set drawn from seeds disjoint from both the training and
the test data (``CALIBRATION_SEED``), never on the test frames. The scopeflow model was tuned on
its own training data only.

Scores: PSNR with the clean frame's range as the peak, and Gaussian-window SSIM (Wang et al.
2004: 11×11 window, σ = 1.5, K₁ = 0.01, K₂ = 0.03, L = the clean frame's range; the mean over the
frame without a 5-pixel border), both per frame against the noise-free expectation in DN, then
averaged over frames.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scopeflow.inference import backends
from scopeflow.inference.models import denoiser as model
from scopeflow_lab.bench.timing import median_ms
from scopeflow_lab.training import denoiser as data

SEM_DOSES = (10.0, 20.0, 50.0)  # the target's range, e⁻/px
SEM_HIGH_DOSES = (500.0,)  # reported beside it: the top of the fast-scan range
INSITU_DOSES = (500.0, 1000.0, 2000.0)
METHODS = ("scopeflow", "bm3d", "nlm", "gaussian", "noisy")
# Parameter grids tried on the calibration set; a grid whose best value is its last one is
# extended (×1.5 each time) until the score falls, so no baseline is held back by the grid.
BM3D_FACTORS = (0.75, 1.0, 1.5, 2.0, 3.0)  # σ_BM3D / σ_estimated
NLM_FACTORS = (0.6, 0.8, 1.0, 1.3, 1.7, 2.2, 3.0)  # h / σ_estimated (8-bit units)
GAUSSIAN_SIGMAS_PX = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
_MAX_EXTENSIONS = 5
#: --quick runs skip calibration and give every baseline its middle parameter
QUICK_PARAMETERS = {"bm3d_sigma_factor": 1.0, "nlm_h_factor": 1.0, "gaussian_sigma_px": 1.0}
NLM_TEMPLATE, NLM_SEARCH = 7, 21  # OpenCV's recommended window sizes


# -- scores -------------------------------------------------------------------------------------
def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    """PSNR (dB) against ``clean``; the peak is the clean frame's range (max − min)."""
    return data.psnr(estimate, clean)


def ssim(estimate: np.ndarray, clean: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004, Gaussian window) of two (H, W) frames."""
    x = np.asarray(estimate, np.float64)
    y = np.asarray(clean, np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim needs two (H, W) frames of one shape, got {x.shape}, {y.shape}")
    rng = float(y.max() - y.min()) if data_range is None else float(data_range)
    rng = rng or 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    pad = 5  # where the 11×11 window would leave the frame
    if min(s.shape) > 2 * pad:
        s = s[pad:-pad, pad:-pad]
    return float(s.mean())


def noise_sigma(frame: np.ndarray) -> float:
    """Robust noise σ of a frame (DN): median |finest diagonal Haar detail| / 0.6745 — the
    estimate the scopeflow model's noise plane is built from, so every method starts from the
    same number."""
    return model.noise_level(frame)


# -- baselines ----------------------------------------------------------------------------------
def bm3d_denoise(frame: np.ndarray, factor: float) -> np.ndarray:
    """BM3D (PyPI ``bm3d``, both stages) with σ = ``factor`` × the estimated σ."""
    import bm3d

    x, lo, scale = model.normalise(frame)
    sigma = max(factor * noise_sigma(frame) / scale, 1e-6)
    out = bm3d.bm3d(x, sigma_psd=sigma, stage_arg=bm3d.BM3DStages.ALL_STAGES)
    return (np.asarray(out, np.float32) * np.float32(scale) + np.float32(lo)).astype(np.float32)


def nlm_denoise(frame: np.ndarray, factor: float) -> np.ndarray:
    """OpenCV non-local means on the frame scaled to 8 bits (its full min–max range, so no
    pixel clips), ``h`` = ``factor`` × the estimated σ in those units."""
    x = np.asarray(frame, np.float32)
    lo, hi = float(x.min()), float(x.max())
    span = (hi - lo) or 1.0
    u8 = np.clip(np.rint((x - lo) * (255.0 / span)), 0, 255).astype(np.uint8)
    h = max(factor * noise_sigma(frame) * 255.0 / span, 0.1)
    out = cv2.fastNlMeansDenoising(u8, None, h, NLM_TEMPLATE, NLM_SEARCH)
    return (out.astype(np.float32) * np.float32(span / 255.0) + np.float32(lo)).astype(np.float32)


def gaussian_denoise(frame: np.ndarray, sigma_px: float) -> np.ndarray:
    """A Gaussian filter of ``sigma_px`` pixels (reflecting borders)."""
    return cv2.GaussianBlur(
        np.asarray(frame, np.float32), (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT
    )


def calibrate(
    pairs: list[data.Pair], progress: Callable[[str], None], label: str
) -> dict[str, float]:
    """Each baseline's parameter: the best mean PSNR over the calibration ``pairs``."""
    choices: dict[str, tuple[str, tuple[float, ...], Callable[..., np.ndarray]]] = {
        "bm3d": ("bm3d_sigma_factor", BM3D_FACTORS, bm3d_denoise),
        "nlm": ("nlm_h_factor", NLM_FACTORS, nlm_denoise),
        "gaussian": ("gaussian_sigma_px", GAUSSIAN_SIGMAS_PX, gaussian_denoise),
    }
    best: dict[str, float] = {}
    for method, (key, grid, fn) in choices.items():

        def score(v: float, fn: Callable[..., np.ndarray] = fn) -> float:
            return float(np.mean([psnr(fn(p.noisy, v), p.clean) for p in pairs]))

        values = list(grid)
        scores = [score(v) for v in values]
        for _ in range(_MAX_EXTENSIONS):
            if int(np.argmax(scores)) != len(values) - 1:
                break
            values.append(round(values[-1] * 1.5, 3))
            scores.append(score(values[-1]))
        best[key] = values[int(np.argmax(scores))]
        progress(
            f"    {label} calibration {method}: "
            + ", ".join(f"{v:g}→{s:.2f}" for v, s in zip(values, scores, strict=True))
            + f" dB; chose {best[key]:g}"
        )
    return best


# -- evaluation ---------------------------------------------------------------------------------
def _score(
    pairs: list[data.Pair],
    runner: model.Denoiser,
    params: dict[str, float],
    progress: Callable[[str], None],
    label: str,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every method on every frame: per-frame rows, and seconds per frame by method."""
    methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "scopeflow": runner.denoise,
        "bm3d": lambda f: bm3d_denoise(f, params["bm3d_sigma_factor"]),
        "nlm": lambda f: nlm_denoise(f, params["nlm_h_factor"]),
        "gaussian": lambda f: gaussian_denoise(f, params["gaussian_sigma_px"]),
        "noisy": lambda f: np.asarray(f, np.float32),
    }
    rows, seconds = [], {m: 0.0 for m in methods}
    for i, p in enumerate(pairs):
        row: dict[str, Any] = {"dose": p.dose_e_per_px, "family": p.family, "psnr": {}, "ssim": {}}
        for name, fn in methods.items():
            t = time.perf_counter()
            out = fn(p.noisy)
            seconds[name] += time.perf_counter() - t
            row["psnr"][name] = psnr(out, p.clean)
            row["ssim"][name] = ssim(out, p.clean)
        rows.append(row)
        progress(
            f"    {label} frame {i + 1}/{len(pairs)} ({p.family}, {p.dose_e_per_px:g} e⁻/px):"
            f" PSNR " + ", ".join(f"{m} {v:.2f}" for m, v in row["psnr"].items())
        )
    return rows, {m: s / max(len(pairs), 1) for m, s in seconds.items()}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean PSNR/SSIM per method, overall and per dose."""

    def mean(sel: list[dict[str, Any]], metric: str) -> dict[str, float]:
        return {m: round(float(np.mean([r[metric][m] for r in sel])), 4) for m in METHODS}

    doses = sorted({r["dose"] for r in rows})
    per_dose = {
        f"{d:g}": {"frames": len(sel), "psnr": mean(sel, "psnr"), "ssim": mean(sel, "ssim")}
        for d in doses
        for sel in [[r for r in rows if r["dose"] == d]]
    }
    return {
        "psnr": mean(rows, "psnr"),
        "ssim": mean(rows, "ssim"),
        "frames": len(rows),
        "doses_e_per_px": doses,
        "per_dose": per_dose,
    }


#: Atomic-resolution frames of the held-out multislice microscope (never trained on):
#: (modality, dose e⁻/Å²); calibration and test frames from disjoint seeds.
ATOMIC_SETS = (("hrtem", 100.0), ("hrtem", 1000.0), ("haadf", 1e4))
ATOMIC_TEST_SEED, ATOMIC_CALIBRATION_SEED = 8100, 8900


def _atomic_pairs(modality: str, dose: float, n: int, seed: int, size: int) -> list[data.Pair]:
    from scopeflow_lab.sim.atomic import multislice

    pairs = []
    for i in range(n):
        im = multislice.render(
            multislice.test_frame(seed + int(dose) + i, modality, dose, 0.03, (size, size))
        )
        pairs.append(data.Pair(im.image, im.attributes["expected"], modality, dose, modality))
    return pairs


def atomic_heldout(
    runner: model.Denoiser, progress: Callable[[str], None], quick: bool = False
) -> dict[str, Any]:
    """The denoiser on atomic-resolution HRTEM and HAADF frames of the held-out multislice
    microscope (it was trained on SEM and liquid-cell frames only). Every baseline's parameter
    is tuned per set on calibration frames of the same microscope — more than the network
    gets, so the comparison leans towards the baselines."""
    size, n, n_cal = (128, 1, 1) if quick else (256, 4, 2)
    out: dict[str, Any] = {"frame_size": size, "pixel_size_nm": 0.03}
    for modality, dose in ATOMIC_SETS:
        label = f"{modality} {dose:g} e/A2"
        cal = _atomic_pairs(modality, dose, n_cal, ATOMIC_CALIBRATION_SEED, size)
        params = QUICK_PARAMETERS if quick else calibrate(cal, progress, label)
        rows, _ = _score(
            _atomic_pairs(modality, dose, n, ATOMIC_TEST_SEED, size), runner, params, progress,
            label,
        )  # fmt: skip
        out[f"{modality}_{dose:g}"] = {**_summary(rows), "baseline_parameters": params}
    return out


def run_atomic(quick: bool = False, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``scopeflow bench models --only denoise-atomic``: :func:`atomic_heldout` alone."""
    runner = model.Denoiser(backends.load(model.NAME, "onnxruntime"))
    result = atomic_heldout(runner, progress, quick)
    _report_atomic(result, progress)
    return {"denoiser_atomic_heldout": result}


def _cells(v: dict[str, Any]) -> str:
    """PSNR / SSIM of every method, one table row's cells."""
    return " ".join(f"{v['psnr'][m]:>9.2f} / {v['ssim'][m]:.3f}" for m in METHODS)


def _report_atomic(r: dict[str, Any], progress: Callable[[str], None]) -> None:
    progress("")
    progress(f"  {'held-out atomic':<16} " + " ".join(f"{m:>17}" for m in METHODS))
    for key, v in r.items():
        if isinstance(v, dict) and "psnr" in v:
            cells = _cells(v)
            progress(f"  {key:<16} {cells}")


def _timings(ort: Any, ref: Any, frame: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds: the runner end to end on ONNX Runtime, ONNX Runtime and torch alone."""
    runner = model.Denoiser(ort)
    inputs = {model.INPUT_NAMES[0]: model.network_input(frame)[0][None]}
    return {
        "frame_s": median_ms(lambda: runner.denoise(frame), repeats, warmup=2) / 1e3,
        "ort_s": median_ms(lambda: ort.run(inputs), repeats, warmup=2) / 1e3,
        "torch_s": median_ms(lambda: ref.run(inputs), repeats, warmup=2) / 1e3,
    }


def speed(weights_dir: Path | None, repeats: int) -> dict[str, Any]:
    """512² throughput on ONNX Runtime (runner end to end, and the model alone), torch eager vs
    ONNX Runtime per frame with equal thread counts, and their largest difference.

    The headline uses the backends as shipped (ONNX Runtime on every core; torch set to the
    same count). On a machine shared with other jobs, multi-threaded kernels lose time waiting
    for descheduled threads, so the same figures with one thread each are reported beside them.
    """
    import torch

    from scopeflow.inference.backends.onnxruntime_backend import OrtSession
    from scopeflow.inference.models.registry import model_file

    threads = os.cpu_count() or 1
    previous = torch.get_num_threads()
    frame = data.heldout_sem((20.0,), 1, size=512, samples=1024)[0].noisy
    ort = backends.load(model.NAME, "onnxruntime", weights_dir)
    ref = backends.load(model.NAME, "torch", weights_dir)
    inputs = {model.INPUT_NAMES[0]: model.network_input(frame)[0][None]}
    out_name = model.OUTPUT_NAMES[0]
    diff = float(np.abs(ort.run(inputs)[out_name] - ref.run(inputs)[out_name]).max())
    try:
        torch.set_num_threads(threads)  # ONNX Runtime's session uses every core: so does torch
        full = _timings(ort, ref, frame, repeats)
        torch.set_num_threads(1)
        one = _timings(
            OrtSession(model.NAME, model_file(model.NAME, ".onnx", weights_dir), threads=1),
            ref,
            frame,
            repeats,
        )
    finally:
        torch.set_num_threads(previous)
    return {
        "frames_per_s_512": round(1.0 / full["frame_s"], 2),
        "model_only_frames_per_s_512": round(1.0 / full["ort_s"], 2),
        "backend": {
            "model": model.NAME,
            "input_shapes": {model.INPUT_NAMES[0]: [1, 2, 512, 512]},
            "torch_ms": round(full["torch_s"] * 1e3, 2),
            "onnxruntime_ms": round(full["ort_s"] * 1e3, 2),
            "onnxruntime_speedup": round(full["torch_s"] / full["ort_s"], 3),
            "max_abs_diff": diff,
            "threads": threads,
            "repeats": repeats,
        },
        "one_thread": {
            "frames_per_s_512": round(1.0 / one["frame_s"], 2),
            "torch_ms": round(one["torch_s"] * 1e3, 2),
            "onnxruntime_ms": round(one["ort_s"] * 1e3, 2),
            "onnxruntime_speedup": round(one["torch_s"] / one["ort_s"], 3),
        },
    }


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target with the measured margin and whether it is met."""
    out: dict[str, Any] = {}
    for modality in ("sem", "insitu"):
        p = result[modality]["psnr"]
        out[f"{modality}_vs_bm3d_db"] = round(p["scopeflow"] - p["bm3d"], 3)
        out[f"{modality}_vs_bm3d_met"] = p["scopeflow"] >= p["bm3d"] + 1.0
        out[f"{modality}_vs_nlm_db"] = round(p["scopeflow"] - p["nlm"], 3)
        out[f"{modality}_vs_nlm_met"] = p["scopeflow"] >= p["nlm"] + 2.0
        worst = min(
            d["psnr"]["scopeflow"] - max(d["psnr"]["bm3d"] + 1.0, d["psnr"]["nlm"] + 2.0)
            for d in result[modality]["per_dose"].values()
        )
        out[f"{modality}_every_dose_met"] = worst >= 0.0
    out["frames_per_s_512_met"] = result["frames_per_s_512"] >= 25.0
    out["onnxruntime_speedup_met"] = result["backend"]["onnxruntime_speedup"] >= 1.5
    out["parity_met"] = result["backend"]["max_abs_diff"] <= 1e-4
    return out


def run(
    quick: bool = False, progress: Callable[[str], None] = print, weights_dir: Path | None = None
) -> dict[str, Any]:
    """The ``denoiser`` section of ``scopeflow bench models``, as ``{"denoiser": {...}}``.

    Full: 256² frames, 4 per dose (SEM 10/20/50 and 500 e⁻/px, in-situ 0.5/1/2 k e⁻/px), 3
    calibration frames per modality, 30 timed repeats. Quick: 128² frames, 1 per dose, no
    calibration (middle parameters), 3 repeats — a smoke run.
    """
    size, per_dose = (128, 1) if quick else (256, 4)
    samples = 512 if quick else 2048
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    runner = model.Denoiser(backends.load(model.NAME, "onnxruntime", weights_dir))
    progress(f"  denoiser: held-out frames {size}² ({per_dose} per dose), calibrating baselines")
    if quick:
        params = {"sem": QUICK_PARAMETERS, "insitu": QUICK_PARAMETERS}
    else:
        cal_sem = data.heldout_sem(SEM_DOSES, 1, size, seed=data.CALIBRATION_SEED, samples=samples)
        cal_insitu = data.heldout_insitu(INSITU_DOSES, 1, size, seed=data.CALIBRATION_SEED)
        params = {
            "sem": calibrate(cal_sem, progress, "sem"),
            "insitu": calibrate(cal_insitu, progress, "insitu"),
        }
    sem = data.heldout_sem(SEM_DOSES + SEM_HIGH_DOSES, per_dose, size, samples=samples)
    insitu = data.heldout_insitu(INSITU_DOSES, per_dose, size)
    sem_rows, sem_s = _score(sem, runner, params["sem"], progress, "sem")
    insitu_rows, insitu_s = _score(insitu, runner, params["insitu"], progress, "insitu")
    low = [r for r in sem_rows if r["dose"] in SEM_DOSES]
    high = [r for r in sem_rows if r["dose"] in SEM_HIGH_DOSES]
    result: dict[str, Any] = {
        "sem": {
            **_summary(low),
            "heldout_family_frames": sum(r["family"] == data.HELDOUT_FAMILY for r in low),
        },
        "sem_high_dose": _summary(high),
        "insitu": _summary(insitu_rows),
        "seconds_per_frame": {"sem": sem_s, "insitu": insitu_s, "frame_size": size},
        "baseline_parameters": params,
    }
    progress("  denoiser: atomic-resolution frames of the held-out multislice microscope")
    result["atomic_heldout"] = atomic_heldout(runner, progress, quick)
    progress("  denoiser: speed at 512² (ONNX Runtime vs torch eager)")
    result.update(speed(weights_dir, 3 if quick else 30))
    result["targets"] = _targets(result)
    result["conditions"] = {
        "frame_size": size,
        "frames_per_dose": per_dose,
        "quick": quick,
        "test_seed": data.TEST_SEED,
        "calibration_seed": data.CALIBRATION_SEED,
        "heldout_family": data.HELDOUT_FAMILY,
        "heldout_shape": data.HELDOUT_SHAPE,
        "load_average_1min_at_start": round(load, 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _report(result, progress)
    return {"denoiser": result}


def _report(r: dict[str, Any], progress: Callable[[str], None]) -> None:
    """A table of PSNR / SSIM per modality and dose, then speed."""
    progress("")
    head = f"  {'set':<16} {'dose':>6} " + " ".join(f"{m:>17}" for m in METHODS)
    progress(head + "   (PSNR dB / SSIM)")
    for key in ("sem", "sem_high_dose", "insitu"):
        rows = [(f"{d}", v) for d, v in r[key]["per_dose"].items()] + [("all", r[key])]
        for dose, v in rows:
            cells = _cells(v)
            progress(f"  {key:<16} {dose:>6} {cells}")
    b = r["backend"]
    o = r["one_thread"]
    progress(
        f"  512², {b['threads']} threads: {r['frames_per_s_512']:.1f} frames/s end to end on "
        f"ONNX Runtime ({r['model_only_frames_per_s_512']:.1f} model only); torch "
        f"{b['torch_ms']:.1f} ms vs ONNX Runtime {b['onnxruntime_ms']:.1f} ms "
        f"({b['onnxruntime_speedup']:.2f}×), max |ONNX − torch| {b['max_abs_diff']:.1e}"
    )
    progress(
        f"  512², 1 thread: {o['frames_per_s_512']:.1f} frames/s end to end; torch "
        f"{o['torch_ms']:.1f} ms vs ONNX Runtime {o['onnxruntime_ms']:.1f} ms "
        f"({o['onnxruntime_speedup']:.2f}×)"
    )
    _report_atomic(r["atomic_heldout"], progress)
    t = r["targets"]
    progress(
        f"  targets: SEM +{t['sem_vs_bm3d_db']:.2f} dB vs BM3D (≥ 1), "
        f"+{t['sem_vs_nlm_db']:.2f} dB vs NLM (≥ 2); in-situ +{t['insitu_vs_bm3d_db']:.2f} / "
        f"+{t['insitu_vs_nlm_db']:.2f} dB; "
        + ", ".join(f"{k} {v}" for k, v in t.items() if k.endswith("_met"))
    )
