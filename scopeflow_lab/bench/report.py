"""Entry points of ``scopeflow bench``: run, print a table, write JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from scopeflow_lab.bench import transport

# Targets from the transport issue, for the table's verdict column.
TARGET_IPC_2048_GB_S = 2.4
TARGET_VS_PICKLE = 2.0
TARGET_LOOP_P99_MS = 20.0


def _machine() -> dict:
    """Where a benchmark ran: core count, platform, Python."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json(result: dict, json_path: Path, progress) -> None:
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(result, indent=2, default=float))
    progress(f"wrote {json_path}")


def run_transport_bench(json_path: Path | None = None, quick: bool = False, progress=print) -> int:
    """Throughput table and loop latency; returns 0 (figures are reported, not judged)."""
    sizes = (256, 512) if quick else transport.SIZES
    bytes_per_run = 5e7 if quick else transport.BYTES_PER_RUN
    progress("transport throughput (uint16 frames, zero-copy vs pickled vs memcpy):")
    rows = transport.throughput(sizes=sizes, bytes_per_run=bytes_per_run, progress=progress)
    progress("closed-loop latency (acquisition → WD command sent), 512² frames:")
    latency = transport.loop_latency(min_samples=40 if quick else 500, progress=progress)
    result = {
        "transport": [{**asdict(r), "vs_pickle": r.vs_pickle} for r in rows],
        "loop_latency_ms": latency,
        "machine": _machine(),
        "quick": quick,
        "time": _now(),
    }
    _print_table(rows, latency, progress)
    if json_path is not None:
        _write_json(result, json_path, progress)
    return 0


def run_simulate_bench(json_path: Path | None = None, repeats: int = 20, progress=print) -> int:
    """Milliseconds per frame of each simulator, with the naive noise baseline."""
    from scopeflow_lab.bench import simulate

    progress("simulators, ms per frame (median of repeated acquire() after warm-up):")
    rows = simulate.run(repeats=repeats, progress=progress)
    head = (
        f"{'case':<26} {'median ms':>10} {'p90 ms':>8} {'frames/s':>9} {'target':>7} "
        f"{'np.poisson ms':>14}"
    )
    progress("")
    progress(head)
    progress("-" * len(head))
    for r in rows:
        target = "—" if r["target_ms"] is None else f"≤{r['target_ms']:g}"
        progress(
            f"{r['case']:<26} {r['ms_median']:>10.1f} {r['ms_p90']:>8.1f} "
            f"{r['frames_per_s']:>9.1f} {target:>7} {r['numpy_poisson_ms']:>14.1f}"
        )
    if json_path is not None:
        _write_json(
            {"simulate": rows, "repeats": repeats, "machine": _machine(), "time": _now()},
            json_path,
            progress,
        )
    return 0


def run_models_bench(
    json_path: Path | None = None, quick: bool = False, progress=print, only: str | None = None
) -> int:
    """Held-out metrics of every shipped model beside its baselines, and backend parity.
    ``only="denoise-atomic"``: the denoiser on the held-out atomic-resolution frames alone."""
    import importlib

    result: dict = {"quick": quick}
    if only == "denoise-atomic":
        from scopeflow_lab.bench import models_denoise

        result.update(models_denoise.run_atomic(quick=quick, progress=progress))
        result["machine"], result["time"] = _machine(), _now()
        if json_path is not None:
            _write_json(result, json_path, progress)
        return 0
    for section in ("models_focus", "models_denoise", "models_detect"):
        progress(f"{section.replace('models_', '')}:")
        result.update(
            importlib.import_module(f"scopeflow_lab.bench.{section}").run(
                quick=quick, progress=progress
            )
        )
    progress("backends:")
    from scopeflow_lab.bench import models_backends

    result["backends"] = models_backends.run(quick=quick, progress=progress)
    result["machine"], result["time"] = _machine(), _now()
    _print_models(result, progress)
    if json_path is not None:
        _write_json(result, json_path, progress)
    return 0


def _print_models(r: dict, progress) -> None:
    """The headline figures, each beside its target."""

    def line(label: str, value, target: str) -> None:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        progress(f"  {label:<48} {shown:>10}   {target}")

    progress("")
    a = r.get("aenet", {})
    for key, target in (
        ("within_one_level", "≥ 0.95"),
        ("heldout_within_one_level", "≥ 0.95"),
        ("spearman_abs_dz", "≥ 0.95"),
        ("max_score_change_under_gain_offset", "≤ 1"),
    ):
        if key in a:
            line(f"aenet {key}", a[key], target)
    d = r.get("denoiser", {})
    for modality in ("sem", "insitu"):
        psnr = d.get(modality, {}).get("psnr", {})
        for method, value in psnr.items():
            line(f"denoiser {modality} PSNR {method}", value, "")
    if "frames_per_s_512" in d:
        line("denoiser frames/s at 512² (ONNX Runtime)", d["frames_per_s_512"], "≥ 25")
    f = r.get("flake_detector", {})
    g1 = f.get("graphene_1L", {})
    for key, target in (("precision", "≥ 0.95"), ("recall", "≥ 0.97")):
        if key in g1:
            line(f"flakes graphene 1L {key}", g1[key], target)
    for key, target in (
        ("layer_accuracy", "≥ 0.95"),
        ("MoS2_1L_recall", "≥ 0.9"),
        ("WSe2_1L_recall", "≥ 0.9"),
        ("megapixels_per_s", "≥ 23"),
        ("f1", "> baseline"),
    ):
        if key in f:
            line(f"flakes {key}", f[key], target)
    if "baseline" in f and "f1" in f["baseline"]:
        line("flakes baseline (contrast-gmm) f1", f["baseline"]["f1"], "")
    held = f.get("heldout_conditions", {})
    if held:
        for key, target in (("precision", "≥ 0.95"), ("recall", "≥ 0.97")):
            line(f"flakes held-out conditions graphene 1L {key}", held["graphene_1L"][key], target)
        line("flakes held-out conditions layer_accuracy", held["layer_accuracy"], "≥ 0.95")
        line(
            "flakes held-out conditions f1 (contrast-gmm)",
            f"{held['f1']:.4g} ({held['baseline']['f1']:.4g})",
            "> baseline",
        )
    p = r.get("particle_detector", {})
    if "f1_iou50" in p:
        line("particles f1 @ IoU 0.5", p["f1_iou50"], "≥ 0.95")
        line("particles baseline (otsu) f1", p.get("baseline", {}).get("f1_iou50"), "")
    if "heldout" in p:
        h = p["heldout"]
        line(
            f"particles held-out λ {h['lambda_particle_nm']:g} nm f1 (otsu)",
            f"{h['f1_iou50']:.4g} ({h['baseline_f1_iou50']:.4g})",
            "",
        )
    for row in r.get("backends", []):
        line(f"{row['model']} ONNX Runtime speed-up vs torch", row["onnxruntime_speedup"], "≥ 1.5")
        line(f"{row['model']} max |ONNX − torch|", row["max_abs_diff"], "≤ 1e-4")


def _print_table(rows, latency: dict, progress) -> None:
    head = (
        f"{'endpoint':<8} {'frame':>11} {'frames/s':>10} {'GB/s':>7} {'pickle':>7} "
        f"{'memcpy':>7} {'×pickle':>8}"
    )
    progress("")
    progress(head)
    progress("-" * len(head))
    for r in rows:
        shape = f"{r.frame_shape[0]}x{r.frame_shape[1]}"
        progress(
            f"{r.endpoint:<8} {shape:>11} {r.frames_per_s:>10.1f} {r.gb_per_s:>7.2f} "
            f"{r.pickle_gb_per_s:>7.2f} {r.memcpy_gb_per_s:>7.2f} {r.vs_pickle:>8.2f}"
        )
    progress("")
    progress(
        f"loop latency over {latency['n']} commands ({latency['autofocus_runs']} autofocus "
        f"runs): p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms, "
        f"max {latency['max']:.2f} ms"
    )
    ipc = [r for r in rows if r.endpoint == "ipc" and r.frame_shape == [2048, 2048]]
    if ipc:
        r = ipc[0]
        progress(
            f"targets: ipc 2048² {r.gb_per_s:.2f} GB/s (≥ {TARGET_IPC_2048_GB_S}), "
            f"{r.vs_pickle:.2f}× pickle (≥ {TARGET_VS_PICKLE}), loop p99 "
            f"{latency['p99']:.2f} ms (≤ {TARGET_LOOP_P99_MS})"
        )


def run_autofocus_bench(
    trials: int = 200, json_path: Path | None = None, quick: bool = False, progress=print
) -> int:
    """AENet/ACNet autofocus vs search and MAPFoSt on the same trials, plus tracking."""
    from scopeflow_lab.bench import autofocus

    result = autofocus.run(trials=trials, quick=quick, progress=progress)
    result["machine"], result["time"] = _machine(), _now()
    _print_autofocus(result, progress)
    if json_path is not None:
        _write_json(result, json_path, progress)
        png = autofocus.plot(result, Path(json_path).with_suffix(".png"))
        progress(f"wrote {png}")
    return 0


def run_aenet_response_bench(
    trials: int = 90, seed: int = 43, json_path: Path | None = None, progress=print
) -> int:
    """AENet's reading against the true |Δz| and the fit of the focus model's response."""
    from scopeflow_lab.bench import aenet_response

    result = aenet_response.run(trials=trials, seed=seed, progress=progress)
    result["machine"], result["time"] = _machine(), _now()
    progress(f"\nAENet reading vs true |Δz| (DoF), {result['readings']} frames, trained families")
    progress(
        f"{'|Δz| bin':>12s} {'n':>4s} {'median':>7s} {'q10':>6s} {'q90':>6s} "
        f"{'shipped g':>9s} {'fitted g':>8s}"
    )
    for b in result["bins"]:
        lo, hi = b["abs_dz_dof"]
        progress(
            f"{lo:5.1f}–{hi:5.1f} {b['n']:5d} {b['reading_median']:7.2f} "
            f"{b['reading_q10']:6.2f} {b['reading_q90']:6.2f} {b['shipped_g']:9.2f} "
            f"{b['fitted_g']:8.2f}"
        )
    for name in aenet_response.FITTED:
        progress(
            f"{name:24s} shipped {result['shipped'][name]:.3f}  fitted {result['fitted'][name]:.3f}"
        )
    ll = result["log_likelihood"]
    progress(
        f"log-likelihood: shipped {ll['shipped']:.1f}, fitted {ll['fitted']:.1f}, "
        f"straight V {ll['straight_v']:.1f}"
    )
    if json_path is not None:
        _write_json(result, json_path, progress)
    return 0


def _print_autofocus(r: dict, progress) -> None:
    progress(f"\nautofocus, {r['trials']} trials (success: final |Δz| ≤ 0.5 DoF)")
    progress(
        f"{'method':28s} {'frames med':>10s} {'p95':>5s} {'success':>8s} {'held-out':>8s} "
        f"{'≤20 e⁻':>7s} {'err med':>8s} {'err p95':>8s} {'s med':>7s}"
    )
    for name, m in r["methods"].items():
        low = m["success_rate_by_dose"].get("0-20")
        held = m["success_rate_heldout"]
        progress(
            f"{name:28s} {m['frames_median']:10.1f} {m['frames_p95']:5.1f} "
            f"{m['success_rate']:8.3f} {held if held is None else f'{held:.3f}':>8} "
            f"{low if low is None else f'{low:.3f}':>7} "
            f"{m['final_error_dof_median']:8.3f} {m['final_error_dof_p95']:8.3f} "
            f"{m['seconds_median']:7.3f}"
        )
    if "frames_ratio_best_search_over_scopeflow" in r:
        progress(
            f"frames, best search ({r['best_search']}) / scopeflow: "
            f"{r['frames_ratio_best_search_over_scopeflow']:.2f}× (target ≥ 3)"
        )
    t = r["tracking"]
    progress(
        f"tracking: in focus {t['in_focus_fraction']:.3f} (target ≥ 0.95), extra frames "
        f"per 100 {t['extra_frames_per_100']:.2f} (target ≤ 2)"
    )
    for name, tt in t.get("tilted_specimen", {}).items():
        progress(
            f"tracking, tilted specimen ({name}) moving under the beam: in focus "
            f"{tt['in_focus_fraction']:.3f}, extra frames per 100 "
            f"{tt['extra_frames_per_100']:.2f}"
        )
    ms = r["inference_ms_512"]
    progress(f"AENet + ACNet per 512² frame, ONNX Runtime: {ms['total_ms']:.2f} ms (target ≤ 10)")


def run_flake_search_bench(
    chip_mm: tuple[float, float] = (10.0, 10.0),
    json_path: Path | None = None,
    quick: bool = False,
    progress=print,
) -> int:
    """The flake-search job end to end on a simulated chip, every variant in one run."""
    from scopeflow_lab.bench import flake_search

    if quick:
        chip_mm = (1.0, 1.0)
    t0 = time.monotonic()
    result = flake_search.run(chip_mm=chip_mm, quick=quick, progress=progress)
    result["bench_wall_s"] = time.monotonic() - t0
    result["machine"], result["time"] = _machine(), _now()
    _print_flake_search(result, progress)
    if json_path is not None:
        _write_json(result, json_path, progress)
    return 0


def _print_flake_search(r: dict, progress) -> None:
    def pct(x: float) -> str:
        return f"{100 * x:.0f}%"

    def opt(x, fmt: str = ".2f") -> str:
        return "—" if x is None else format(x, fmt)

    chip = r["chip"]
    progress(
        f"\nflake search over {chip['scanned_mm'][0]:g} × {chip['scanned_mm'][1]:g} mm, "
        f"{chip['flakes']} flakes, {chip['monolayer_graphene_ge_50um2']} monolayers ≥ 50 µm²"
    )
    head = (
        f"{'variant':<15} {'tiles':>6} {'min/cm²':>8} {'w/o sim':>8} {'stage':>6} {'focus':>6} "
        f"{'frames':>6} {'det wait':>8} {'refocus':>7} {'flakes':>6} {'dup':>4} "
        f"{'1L P':>5} {'1L R':>5} {'det Mpx/s':>9}"
    )
    progress(head)
    progress("-" * len(head))
    for name, v in r["variants"].items():
        s, m = v["shares"], v["monolayer_graphene"]
        tiles = (
            str(v["tiles"])
            if v["overview_tiles"] is None
            else (f"{v['overview_tiles']}+{v['tiles']}")
        )
        progress(
            f"{name:<15} {tiles:>6} {v['minutes_per_cm2']:>8.2f} "
            f"{v['minutes_per_cm2_without_rendering']:>8.2f} {pct(s['stage']):>6} "
            f"{pct(s['focus']):>6} {pct(s['frames']):>6} {pct(s['detection_wait']):>8} "
            f"{v['refocus_count']:>7} {v['flakes']:>6} {m['duplicates']:>4} "
            f"{opt(m['precision']):>5} {opt(m['recall']):>5} "
            f"{opt(v['detector_mpx_s_in_scan'], '.1f'):>9}"
        )
    progress(
        f"detector alone (ONNX Runtime, {r['machine']['cpu_count']} cores): "
        f"{opt(r['detector_mpx_s_standalone'], '.1f')} Mpx/s (target ≥ "
        f"{r['targets']['detector_mpx_s']:g}); contrast-GMM "
        f"{opt(r['gmm_mpx_s_standalone'], '.1f')} Mpx/s, fitted in {r['gmm']['fit_s']:.1f} s"
    )
    best = min(v["minutes_per_cm2"] for v in r["variants"].values())
    progress(f"fastest: {best:.2f} min/cm² (target ≤ {r['targets']['minutes_per_cm2']:g})")
    rv = r["revisit"]
    if rv.get("selected"):
        progress(
            f"revisit at {rv['objective']} ({rv['selection']}): {rv['found']}/{rv['selected']} "
            f"found, position error median {opt(rv['position_error_um_median'])} µm, "
            f"max {opt(rv['position_error_um_max'])} µm"
        )
    else:
        progress("revisit: no graphene flake catalogued to revisit")
