"""``scopeflow bench insitu``: how fast the live analysis runs, and how well it tracks.

1. **Throughput** — the ``insitu`` job itself (camera, recorder, workers as processes) on a
   pooled in-situ camera faster than the analysis (300 fps at 512², 100 fps at 1024²), with 1
   and 2 workers running denoiser → particle_detector: the sustained analysis rate (results
   per second while they flow), frame→result latency p50/p99, frames produced / recorded /
   analysed / missing.
2. **Tracking** — simulated scenes with ground truth (particles diffusing, growing, coalescing,
   dissolving; seeds never used to train the detector), scored with py-motmetrics (MOTA, IDF1,
   ID switches; a match is a centroid within 3 nm) and event recall (a simulator coalescence or
   dissolution matched by an event of that kind within 10 frames and 15 nm). Our pipeline
   (particle_detector on raw frames, at its default scale and binned to 1 nm/px, and on
   denoised frames — which it was not trained on — then the live tracker) against trackpy run on
   the raw frames with its default ``locate`` (the baseline the issue names) and the same
   linking.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MATCH_NM = 3.0
EVENT_FRAMES = 10
EVENT_NM = 15.0
CHAIN = "denoiser,particle_detector"
#: (side, camera fps, workers, model, the detector's working pixel nm (None: default),
#: the latest-only display model (None: none))
CASES = (
    (512, 300.0, 1, CHAIN, None, None),
    (512, 300.0, 2, CHAIN, None, None),
    (1024, 100.0, 1, CHAIN, None, None),
    (1024, 100.0, 2, CHAIN, None, None),
    (512, 300.0, 2, "particle_detector", 1.0, None),
    (1024, 100.0, 1, "particle_detector", 1.0, None),
    (1024, 100.0, 2, "particle_detector", 1.0, None),
    # A camera at the 30 fps: is every frame detected and tracked, with a display
    # denoiser beside the workers?
    (1024, 30.0, 2, "particle_detector", 1.0, "denoiser"),
    (1024, 30.0, 2, "particle_detector", 1.5, "denoiser"),
    (512, 100.0, 2, "particle_detector", 1.0, "denoiser"),
)


# -- tracking accuracy --------------------------------------------------------------------------
def _scene(seed: int, side: int, fps: float) -> Any:
    from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera

    config = InSituConfig(
        frame_shape=(side, side), fps=fps, seed=seed, particle_density_per_um2=500.0,
        growth_nm_per_s=0.0, growth_spread_nm_per_s=3.0,  # some grow, some dissolve
    )  # fmt: skip
    return SimulatedInSituCamera(config)


def _truth(annotated: Any) -> list[tuple[int, float, float]]:
    return [
        (int(o.attributes["track_id"]), *map(float, o.attributes["centroid_xy_px"]))
        for o in annotated.objects
        if o.category == "particle"
    ]


def _score(truth_frames, hyp_frames, px_nm: float) -> dict[str, float]:
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for truth, hyp in zip(truth_frames, hyp_frames, strict=True):
        t_xy = np.array([(x, y) for _, x, y in truth]).reshape(-1, 2) * px_nm
        h_xy = np.array([(x, y) for _, x, y in hyp]).reshape(-1, 2) * px_nm
        dist = mm.distances.norm2squared_matrix(t_xy, h_xy, max_d2=MATCH_NM**2)
        acc.update([t for t, _, _ in truth], [h for h, _, _ in hyp], dist)
    metrics = ["mota", "idf1", "num_switches", "precision", "recall"]
    summary = mm.metrics.create().compute(acc, metrics=metrics, name="run")
    return {k: float(summary[k].iloc[0]) for k in metrics}


def _event_recall(truth_events, found, px_nm: float) -> dict[str, Any]:
    kinds = {"coalescence": "coalescence", "dissolved": "dissolution"}
    hits, total = 0, 0
    for frame, event, xy in truth_events:
        kind = kinds.get(event)
        if kind is None or xy is None:
            continue
        total += 1
        near = found[(found["event"] == kind) & ((found["frame"] - frame).abs() <= EVENT_FRAMES)]
        d = np.hypot(near["x_nm"] - xy[0] * px_nm, near["y_nm"] - xy[1] * px_nm)
        hits += int((d <= EVENT_NM).any())
    return {"events_true": total, "events_found": hits,
            "event_recall": hits / total if total else None}  # fmt: skip


def tracking(quick: bool, progress) -> list[dict[str, Any]]:
    import trackpy

    from scopeflow.inference import backends
    from scopeflow.inference.models.denoiser import Denoiser
    from scopeflow.inference.models.particle_detector import ParticleDetector
    from scopeflow.jobs.insitu.tracking import LiveTracker, TrackingConfig

    trackpy.quiet()
    detector = ParticleDetector(backends.load("particle_detector", "onnxruntime"))
    coarse = {  # 0.5 nm/px frames binned 2× and 3×
        w: ParticleDetector(detector.session, work_pixel_nm=w) for w in (1.0, 1.5)
    }
    denoiser = Denoiser(backends.load("denoiser", "onnxruntime"))
    side, fps, frames_n = (256, 20.0, 30) if quick else (512, 20.0, 100)
    rows = []
    for seed in (9101, 9102)[: 1 if quick else 2]:
        camera = _scene(seed, side, fps)
        px = camera.config.pixel_size_nm
        frames, truths, events = [], [], []
        last_xy: dict[int, tuple[float, float]] = {}
        for k in range(frames_n):
            frame, annotated = camera.acquire_annotated()
            truth = _truth(annotated)
            for event in annotated.attributes["events"]:
                tid = event.get("absorbed", event.get("track_id"))
                where = last_xy.get(int(tid)) if tid is not None else None
                events.append((k, event["type"], where))
            last_xy = {t: (x, y) for t, x, y in truth}
            frames.append(frame.pixels)
            truths.append(truth)
        config = TrackingConfig(pixel_size_nm=px, frame_interval_s=1 / fps)
        methods = ("ours", "ours @ 1 nm/px", "ours @ 1.5 nm/px", "ours, denoised", "trackpy locate")
        for method in methods:
            t0 = time.perf_counter()
            hyp_frames: list[list[tuple[int, float, float]]] = []
            if method == "trackpy locate":
                import pandas as pd

                located = []
                for k, pixels in enumerate(frames):
                    # Particles are dark on a bright cell: invert; ~8 nm particles at this pixel.
                    diameter = int(2 * round(8.0 / px) + 1)
                    f = trackpy.locate(pixels.astype(np.float32), diameter, invert=True)
                    f["frame"] = k
                    located.append(f)
                linked = trackpy.link(pd.concat(located), config.search_range_nm / px,
                                      memory=config.memory)  # fmt: skip
                for k in range(len(frames)):
                    sel = linked[linked["frame"] == k]
                    hyp_frames.append(list(zip(sel["particle"].astype(int), sel["x"], sel["y"],
                                               strict=True)))  # fmt: skip
                found_events = None
            else:
                tracker = LiveTracker(config, (side, side))
                for k, pixels in enumerate(frames):
                    if method == "ours, denoised":
                        pixels = np.clip(np.rint(denoiser.denoise(pixels)), 0, 65535).astype(
                            pixels.dtype
                        )
                    net = {"ours @ 1 nm/px": coarse[1.0], "ours @ 1.5 nm/px": coarse[1.5]}.get(
                        method, detector
                    )
                    dets = net.detect(pixels, px)
                    ids = tracker.add(k, k, k / fps, dets)
                    pairs = zip(ids, dets, strict=True)
                    hyp_frames.append([(i, *d.centroid_xy_px) for i, d in pairs])
                found_events = tracker.analyse().events
            seconds = time.perf_counter() - t0
            row = {"seed": seed, "method": method, "frames": frames_n, "side": side,
                   "ms_per_frame": 1e3 * seconds / frames_n,
                   "true_tracks": len({t for tr in truths for t, _, _ in tr}),
                   **_score(truths, hyp_frames, px)}  # fmt: skip
            if found_events is not None:
                row.update(_event_recall(events, found_events, px))
            rows.append(row)
            progress(f"  seed {seed} {method}: MOTA {row['mota']:.3f} IDF1 {row['idf1']:.3f}")
    return rows


# -- throughput --------------------------------------------------------------------------------
def throughput(quick: bool, progress) -> list[dict[str, Any]]:
    from scopeflow.jobs.insitu_job import InsituJob

    rows = []
    cases = ((256, 100.0, w, CHAIN, None, None) for w in (1, 2)) if quick else CASES
    for side, fps, workers, model, detect_pixel_nm, display in cases:
        root = Path(tempfile.mkdtemp(prefix="bench-insitu-"))
        job = InsituJob(
            out_dir=root / "out", fps=fps, frame_size=side, duration_s=5.0 if quick else 20.0,
            record=root / "rec.ome.zarr", workers=workers, pool=32, drift="off", model=model,
            detect_pixel_nm=detect_pixel_nm, display_model=display,
        )  # fmt: skip
        t0 = time.monotonic()
        code = job.run_pipeline("sim:insitu")
        wall = time.monotonic() - t0
        outcome = json.loads((root / "out" / "outcome.json").read_text())
        shutil.rmtree(root, ignore_errors=True)
        row = {"side": side, "camera_fps_asked": fps, "workers": workers, "model": model,
               "detect_pixel_nm": detect_pixel_nm, "display_model": display, "exit": code,
               "wall_s": wall,
               **outcome["figures"], "memory": outcome.get("memory", {})}  # fmt: skip
        rows.append(row)
        progress(
            f"  {side}² {workers} worker(s) {_label(model, detect_pixel_nm, display)}: analysis "
            f"{row.get('analysis_fps') or 0:.1f} fps, camera {row['camera_fps']:.0f} fps, "
            f"produced {row['frames_produced']}, recorded {row.get('frames_recorded')}, "
            f"analysed {row['frames_analysed']}"
        )
    return rows


def _label(model: str, detect_pixel_nm: float | None, display: str | None = None) -> str:
    short = "den→det" if model == CHAIN else "det"
    short = short if detect_pixel_nm is None else f"{short}@{detect_pixel_nm:g}nm"
    return short if display is None else f"{short} +display {display}"


def run_insitu_bench(json_path: Path | None, quick: bool, only: str | None = None) -> int:
    t0 = time.time()
    track_rows: list[dict[str, Any]] = []
    speed_rows: list[dict[str, Any]] = []
    if only in (None, "tracking"):
        print("tracking on simulated scenes with truth (seeds never trained on):")
        track_rows = tracking(quick, print)
    if only in (None, "throughput"):
        print("throughput: the insitu job, pooled camera:")
        speed_rows = throughput(quick, print)
    print(f"\n{'method':<16} {'seed':>5} {'MOTA':>6} {'IDF1':>6} {'IDsw':>5} {'P':>6} {'R':>6} "
          f"{'events':>9} {'ms/frame':>9}")  # fmt: skip
    for r in track_rows:
        ev = "—" if r.get("events_true") is None else f"{r['events_found']}/{r['events_true']}"
        print(f"{r['method']:<16} {r['seed']:>5} {r['mota']:>6.3f} {r['idf1']:>6.3f} "
              f"{int(r['num_switches']):>5} {r['precision']:>6.3f} {r['recall']:>6.3f} {ev:>9} "
              f"{r['ms_per_frame']:>9.1f}")  # fmt: skip
    print(f"\n{'case':<46} {'analysis fps':>12} {'p50 ms':>8} {'p99 ms':>8} {'produced':>9} "
          f"{'recorded':>9} {'analysed':>9} {'missing':>8}")  # fmt: skip
    for r in speed_rows:
        case = (f"{r['side']}² @ {r['camera_fps_asked']:.0f}, {r['workers']}w "
                f"{_label(r['model'], r['detect_pixel_nm'], r.get('display_model'))}")  # fmt: skip
        print(f"{case:<46} {r.get('analysis_fps') or 0:>12.1f} {_ms(r['latency_ms_p50']):>8} "
              f"{_ms(r['latency_ms_p99']):>8} {r['frames_produced']:>9} "
              f"{r.get('frames_recorded', '—'):>9} {r['frames_analysed']:>9} "
              f"{r['frames_missing']:>8}")  # fmt: skip
    doc = {"bench": "insitu", "quick": quick, "tracking": track_rows, "throughput": speed_rows,
           "wall_s": time.time() - t0, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "match_nm": MATCH_NM}  # fmt: skip
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2, default=float))
        print(f"wrote {json_path}")
    return 0


def _ms(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.0f}"
