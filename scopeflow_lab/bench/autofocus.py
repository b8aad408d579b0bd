"""``scopeflow bench autofocus``: AENet/ACNet autofocus against search and MAPFoSt, and tracking.

Methods, each on the same seeded trials (:mod:`scopeflow_lab.bench.autofocus_trials`):

- ``scopeflow``: the ``autofocus`` job (:class:`~scopeflow.jobs.autofocus.AutofocusJob`, the
  AENet/ACNet controller) on a local scope around the trial's simulator, AENet and ACNet on
  ONNX Runtime, frames read by the inference node's own processor (the normalised-variance
  sharpness rides along, as the node sends it);
- ``search-normalized-variance``, ``search-tenengrad``: the golden-section baseline
  (:class:`~scopeflow.control.autofocus.GoldenSectionAutofocus`) on that metric;
- ``mapfost``: :mod:`scopeflow_lab.bench.mapfost_baseline`, its aperture factor calibrated once per
  run on calibration trials of its own seed;
- ``scopeflow-aenet-only``: the ablation, the same job without ACNet (the posterior's
  targets only), to show what ACNet's proposals add.

Success: final |Δz| ≤ 0.5 DoF from the simulator's truth. ``frames``: every frame acquired.
``seconds``: the controller's own work per autofocus (inference, fits, decisions), without the
simulator's rendering or actuator settle (it settles instantly here).

Tracking: 1000 live frames with thermal focus drift of 1 DoF per 100 frames (one time unit
per frame, extra frames included), starting in focus, on three specimens;
``in_focus_fraction`` counts live frames within 0.5 DoF, ``extra_frames_per_100`` the refocus
probes per 100 live frames. ``tracking.tilted_specimen`` repeats it with the same focus drift
coming from a specimen tilted 5° or 30° moving under the beam.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.control.autofocus import AutofocusConfig, GoldenSectionAutofocus
from scopeflow.control.tracking import FocusTracker
from scopeflow_lab.bench.autofocus_trials import (
    FrameReader,
    SpecimenCache,
    Trial,
    make_trials,
    run_autofocus_job,
    run_loop,
)
from scopeflow_lab.bench.timing import median_ms
from scopeflow_lab.sim.sem import SimulatedSEM

METHODS = (
    "scopeflow",
    "search-normalized-variance",
    "search-tenengrad",
    "mapfost",
    "scopeflow-aenet-only",
)
SUCCESS_DOF = 0.5
DOSE_BINS = ((0.0, 20.0), (20.0, 100.0), (100.0, 1e9))
TRACK_FRAMES = 1000
TRACK_DRIFT_DOF_PER_100 = 1.0
TRACK_TILTS_DEG = (5.0, 30.0)


def _learned_models():
    from scopeflow.inference import backends
    from scopeflow.inference.models.acnet import ACNet
    from scopeflow.inference.models.aenet import AENet

    return (
        AENet(backends.load("aenet", "onnxruntime")),
        ACNet(backends.load("acnet", "onnxruntime")),
    )


def _run_method(method: str, trial: Trial, cache: SpecimenCache, ctx: dict[str, Any]):
    sim = cache.microscope(trial)
    start = sim.state().wd_target_um
    if method in ("scopeflow", "scopeflow-aenet-only"):
        # The autofocus job as users run it; the ablation runs it without ACNet.
        return run_autofocus_job(sim, ctx["reader"], use_acnet=method == "scopeflow")
    if method.startswith("search-"):
        metric = method.removeprefix("search-").replace("-", "_")
        machine = GoldenSectionAutofocus(start, sim.limits(), trial.dof_um, AutofocusConfig())
        return run_loop(
            sim,
            machine,
            ctx[f"reader:{metric}"],
            tell=lambda m, r: m.tell(r.wd_um, r.sharpness or 0.0, r.signal),
        )
    if method == "mapfost":
        from scopeflow_lab.bench.mapfost_baseline import run_mapfost

        return run_mapfost(sim, ctx["est_aberr"], ctx["mapfost"]["aperture_factor"])
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    frames = np.array([r["frames"] for r in rows], float)
    err = np.array([r["final_error_dof"] for r in rows], float)
    held = np.array([r["heldout"] for r in rows], bool)
    dose = np.array([r["dose"] for r in rows], float)
    ok = err <= SUCCESS_DOF
    by_dose = {}
    for lo, hi in DOSE_BINS:
        m = (dose > lo) & (dose <= hi)
        label = f"{lo:g}-{hi:g}" if hi < 1e9 else f">{lo:g}"
        by_dose[label] = float(ok[m].mean()) if m.any() else None
    return {
        "frames_median": float(np.median(frames)),
        "frames_p95": float(np.percentile(frames, 95)),
        "frames_mean": float(frames.mean()),
        "success_rate": float(ok.mean()),
        "success_rate_heldout": float(ok[held].mean()) if held.any() else None,
        "success_rate_trained": float(ok[~held].mean()) if (~held).any() else None,
        "success_rate_by_dose": by_dose,
        "final_error_dof_median": float(np.median(err)),
        "final_error_dof_p95": float(np.percentile(err, 95)),
        "seconds_median": float(np.median([r["seconds"] for r in rows])),
        "stop_reasons": {
            k: int(v)
            for k, v in zip(
                *np.unique([r["stop_reason"] for r in rows], return_counts=True), strict=True
            )
        },
    }


def run_tracking(
    reader: FrameReader,
    cache: SpecimenCache,
    trials: list[Trial],
    frames: int = TRACK_FRAMES,
    drift_dof_per_100: float = TRACK_DRIFT_DOF_PER_100,
    tilt_deg: float = 0.0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Focus tracking, one run per trial (its specimen, dose, optics), one time unit per frame.

    ``tilt_deg`` 0: thermal focus drift of ``drift_dof_per_100`` DoF per 100 frames. Otherwise
    a specimen tilted by ``tilt_deg`` about y moves under the beam along x at the speed that
    gives the same focus drift: the field changes from frame to frame as well.
    """
    runs = []
    for trial in trials:
        clock = [0.0]
        dof = trial.dof_um
        focus_rate_um = drift_dof_per_100 / 100.0 * dof  # per time unit (frame)
        if tilt_deg:
            moving = {
                "tilt_x_deg": tilt_deg,
                "focus_drift_um_per_s": 0.0,
                "stage_drift_x_nm_per_s": focus_rate_um / math.tan(math.radians(tilt_deg)) * 1e3,
            }
        else:
            moving = {"focus_drift_um_per_s": focus_rate_um}
        cfg = replace(
            trial.config, start_wd_um=trial.config.focus_wd_um, astigmatism_um=0.0, **moving
        )
        sim = SimulatedSEM(
            cfg,
            clock=lambda c=clock: c[0],
            sleep=lambda s: None,
            specimen=cache.microscope(trial).specimen,
        )
        tracker = FocusTracker(sim.state().wd_target_um, dof, sim.limits())
        live = inside = 0
        errors = []
        while live < frames:
            wd, kind = tracker.next_frame(clock[0])
            if wd != sim.state().wd_target_um:
                sim.set_wd(wd)
            frame = sim.acquire()
            tracker.tell(reader(frame), kind, clock[0])
            if kind == "live":
                live += 1
                e = abs(frame.truth.defocus_um) / dof
                errors.append(e)
                inside += e <= SUCCESS_DOF
            clock[0] += 1.0
        runs.append(
            {
                "family": trial.family,
                "dose": trial.dose,
                "dof_um": dof,
                "in_focus_fraction": inside / frames,
                "extra_frames_per_100": 100.0 * tracker.extra_frames / frames,
                "refocus_count": tracker.refocus_count,
                "abs_error_dof_p95": float(np.percentile(errors, 95)),
                "drift_estimate_dof_per_100": tracker.velocity_um * 100.0 / dof,
            }
        )
        progress(
            f"  tracking {trial.family}, dose {trial.dose:.0f}, tilt {tilt_deg:g}°: in focus "
            f"{runs[-1]['in_focus_fraction']:.3f}, extra frames/100 "
            f"{runs[-1]['extra_frames_per_100']:.2f}"
        )
    total = frames * len(runs)
    return {
        "in_focus_fraction": sum(r["in_focus_fraction"] * frames for r in runs) / total,
        "extra_frames_per_100": sum(r["extra_frames_per_100"] for r in runs) / len(runs),
        "frames": frames,
        "drift_dof_per_100_frames": drift_dof_per_100,
        "runs": runs,
        "tilt_deg": tilt_deg,
        "protocol": "starts in focus; "
        + (
            f"specimen tilted {tilt_deg:g}° moving under the beam"
            if tilt_deg
            else "thermal focus drift, linear"
        )
        + "; live frames at the tracker's predicted focus; "
        "refocus probes at ±1 DoF count as extra frames",
    }


def inference_ms(aenet, acnet, repeats: int = 30) -> dict[str, float]:
    """Milliseconds per 512² frame: AENet's reading and one ACNet proposal (ONNX Runtime)."""
    from scopeflow.inference.models.acnet import Observation

    rng = np.random.default_rng(0)
    frame = (rng.random((512, 512)) * 4000 + 1000).astype(np.uint16)
    res = aenet.evaluate(frame)
    obs = [Observation(res, 2.0), Observation(res, 0.0)]
    a = median_ms(lambda: aenet.evaluate(frame), repeats)
    c = median_ms(lambda: acnet.propose(obs), repeats)
    return {"aenet_ms": a, "acnet_ms": c, "total_ms": a + c}


def run(
    trials: int = 200,
    quick: bool = False,
    methods: tuple[str, ...] = METHODS,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-serialisable result."""
    frame_size = 256 if quick else 512
    aenet, acnet = _learned_models()
    cache = SpecimenCache()
    ctx: dict[str, Any] = {
        "reader": FrameReader("aenet"),
        "reader:normalized_variance": FrameReader("normalized_variance"),
        "reader:tenengrad": FrameReader("tenengrad"),
    }
    result: dict[str, Any] = {"trials": trials, "quick": quick, "frame_size": frame_size}
    if "mapfost" in methods:
        from scopeflow_lab.bench.mapfost_baseline import calibrate_aperture, import_est_aberr

        ctx["est_aberr"] = import_est_aberr()
        progress("mapfost: calibrating the aperture factor once")
        ctx["mapfost"] = calibrate_aperture(
            ctx["est_aberr"],
            cache,
            n_frames=2 if quick else 8,
            frame_size=frame_size,
            progress=progress,
        )
        result["mapfost_calibration"] = ctx["mapfost"]
    trial_list = make_trials(trials, frame_size=frame_size)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    t0 = time.monotonic()
    for i, trial in enumerate(trial_list):
        for method in methods:
            r = _run_method(method, trial, cache, ctx)
            rows[method].append(
                {
                    "trial": trial.index,
                    "family": trial.family,
                    "heldout": trial.heldout,
                    "dose": trial.dose,
                    "start_dof": trial.start_dof,
                    "frames": r.frames,
                    "final_error_dof": r.final_error_dof,
                    "stop_reason": r.stop_reason,
                    "seconds": r.seconds,
                }
            )
        if (i + 1) % max(1, trials // 10) == 0:
            eta = (time.monotonic() - t0) / (i + 1) * (trials - i - 1)
            progress(f"  {i + 1}/{trials} trials, eta {eta:.0f} s")
    result["methods"] = {m: _summary(rows[m]) for m in methods}
    search = [m for m in methods if m.startswith("search-")]  # baselines for the ratio
    if "scopeflow" in methods and search:
        best = min(search, key=lambda m: result["methods"][m]["frames_median"])
        result["frames_ratio_best_search_over_scopeflow"] = (
            result["methods"][best]["frames_median"]
            / result["methods"]["scopeflow"]["frames_median"]
        )
        result["best_search"] = best
    progress("tracking:")
    track_trials = [t for t in make_trials(9, seed=53, frame_size=frame_size) if not t.heldout][:3]
    track_frames = 200 if quick else TRACK_FRAMES
    result["tracking"] = run_tracking(
        ctx["reader:normalized_variance"],
        cache,
        track_trials,
        frames=track_frames,
        progress=progress,
    )
    # The other drift the issue names: a tilted specimen moving under the beam (the field
    # changes too), at a few degrees of mounting tilt and at a strongly tilted 30°.
    result["tracking"]["tilted_specimen"] = {
        f"{tilt:g}deg": run_tracking(
            ctx["reader:normalized_variance"],
            cache,
            track_trials,
            frames=track_frames,
            tilt_deg=tilt,
            progress=progress,
        )
        for tilt in TRACK_TILTS_DEG
    }
    result["inference_ms_512"] = inference_ms(aenet, acnet, repeats=5 if quick else 30)
    result["rows"] = rows
    result["protocol"] = {
        "start_dof": "uniform ±30",
        "doses_e_per_px": "10–500 log-uniform",
        "pixel_sizes_nm": [5, 10, 20],
        "alpha_mrad": [2, 3, 5],
        "astigmatism": "half the trials, 0.5–3 DoF, random axis (unknown to the controllers)",
        "heldout": "every third trial uses a family held out of AENet's training",
        "success_dof": SUCCESS_DOF,
        "seed": "trial i of seed 31: default_rng([31, i])",
        "seconds": "controller work only (inference, fits, decisions); no rendering or settle",
    }
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    """Frames-to-focus distribution and success rate by dose, per method."""
    from scopeflow.plots import plt

    methods = list(result["methods"])
    fig, (ax_f, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    data = [[r["frames"] for r in result["rows"][m]] for m in methods]
    ax_f.boxplot(data, whis=(5, 95), showfliers=True)
    ax_f.set_xticks(range(1, len(methods) + 1), methods, rotation=15, fontsize=8)
    ax_f.set_ylabel("frames to focus (every frame acquired)")
    ax_f.set_title(f"frames per autofocus ({result['trials']} trials; whiskers 5–95 %)")
    bins = list(next(iter(result["methods"].values()))["success_rate_by_dose"])
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        rates = [result["methods"][m]["success_rate_by_dose"][b] or 0.0 for b in bins]
        ax_s.bar(np.arange(len(bins)) + k * width, rates, width, label=m)
    ax_s.set_xticks(np.arange(len(bins)) + 0.4 - width / 2, [f"{b} e⁻/px" for b in bins])
    ax_s.set_ylabel(f"success rate (final |Δz| ≤ {SUCCESS_DOF} DoF)")
    ax_s.set_ylim(0, 1.05)
    ax_s.legend(fontsize=8, loc="lower right")
    ax_s.set_title("success by dose")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
