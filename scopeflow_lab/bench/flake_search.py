"""``scopeflow bench flake-search``: the flake-search job end to end on a simulated chip.

The real ``flake-search`` job runs through :func:`scopeflow.jobs.runner.run_job` on a
:class:`~scopeflow.scopes.local.LocalScope` over the simulated optical microscope, with a
realistic stage (0.2 s settle, 5 mm/s) and the camera's exposure slept (``pace_frames``).
Variants, on the same chip in one run:

- ``single``: one pass at 20×, the shipped ONNX flake detector working while the stage moves
  (the job's default);
- ``single-serial``: the same with ``--serial-detection`` (detections awaited per tile);
- ``gmm``: the same scan with the contrast-GMM baseline (2DMatGMM-style, fitted on training
  tiles; fitting time reported apart) in place of the network;
- ``two-pass-10x`` (and ``two-pass-5x`` unless quick): an overview at 10× (5×), candidates
  = overview flakes of graphene with 1–3 layers, then one 20× confirmation tile per group.

Each is scored against the chip's own truth (:class:`~scopeflow_lab.sim.optical.chip.Chip`
knows every object): monolayer graphene of ≥ 50 µm² (see :func:`score_monolayers` for how
catalog entries are matched), duplicates, refocus count, where the wall time went (the job's
own phase timing), and the detector's throughput. ``flake-revisit`` then drives back to the
single pass's monolayers at 50× for the revisit position error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import cv2
import numpy as np

from scopeflow.jobs.flake_revisit import FlakeRevisitJob
from scopeflow.jobs.flake_search import FlakeSearchJob, chip_region
from scopeflow.jobs.runner import run_job
from scopeflow.schemas.codec import Message
from scopeflow.scopes.local import LocalScope
from scopeflow_lab.sim.optical import ChipConfig, OpticalConfig, SimulatedOpticalMicroscope
from scopeflow_lab.sim.optical.chip import Chip, ChipObject

STAGE_SETTLE_S = 0.2
STAGE_SPEED_UM_PER_S = 5_000.0  # a motorised stage crossing tiles, not a slewing one
SEED = 11  # the bench chip's seed: not a training (100+), validation (5000+) or test (9000+) one
FLAKES_PER_MM2 = 3.0  # ≈ 300 flakes on 1 cm², the "a few hundred"
QUICK_FLAKES_PER_MM2 = 20.0  # the default chip's density, so the 1 mm² quick chip has some
MONOLAYER_MIN_UM2 = 50.0
CANDIDATES = 'material=="graphene" and layers in (1, 2, 3)'  # permissive: ±2 layers
SELECT_MONOLAYERS = f'material=="graphene" and layers==1 and area_um2>={MONOLAYER_MIN_UM2:g}'
MATCH_SLACK_UM = 2.0  # an entry's centroid this close to a truth instance's outline matches it
TRUTH_GRID_UM = 0.25  # truth instances are rasterised on this grid
REVISIT_MAX = 30
TARGET_MIN_PER_CM2 = 1.5
TARGET_MPX_S = 23.0
SEARCH_OBJECTIVE = "20x"
# Tenengrad, as the flake-search tests use: AENet read in-focus 20× tiles of this chip as more
# than 1 DoF out (scores 1.2–6.7 of 9 on tiles within 0.2 µm of a focus surface fitted to
# 12 converged points), so its blur rule refocused every tile (8 of 8 in a quick run).
FOCUS_MODEL = "tenengrad"


# -- the microscope and the detectors ----------------------------------------------------------
class _TimedMicroscope(SimulatedOpticalMicroscope):
    """The simulated microscope, adding up the seconds it spends rendering frames (simulator
    CPU time a real camera does not cost, reported so it can be taken out)."""

    render_s = 0.0

    def _do_acquire(self) -> Any:
        t0 = time.perf_counter()
        try:
            return super()._do_acquire()
        finally:
            self.render_s += time.perf_counter() - t0


class _TimedDetector:
    """A detections processor that adds up its seconds and pixels (throughput), and keeps the
    first few frames to time the detector alone afterwards."""

    kind = "detections"

    def __init__(self, inner: Any, keep: int = 3) -> None:
        self.inner = inner
        self.name, self.backend = inner.name, inner.backend
        self.seconds = 0.0
        self.pixels = 0
        self.frames = 0
        self.keep = keep
        self.kept: list[Message] = []

    def reset(self) -> None:
        self.seconds, self.pixels, self.frames = 0.0, 0, 0

    def process(self, msg: Message) -> list[Any]:
        t0 = time.perf_counter()
        out = self.inner.process(msg)
        self.seconds += time.perf_counter() - t0
        self.pixels += int(msg.header.shape[0]) * int(msg.header.shape[1])
        self.frames += 1
        if len(self.kept) < self.keep:
            self.kept.append(Message(msg.kind, msg.header, tuple(bytes(b) for b in msg.buffers)))
        return out

    def standalone_mpx_s(self) -> float | None:
        """Megapixels per second on the kept frames, one after the other, nothing else running."""
        if not self.kept:
            return None
        t0 = time.perf_counter()
        for msg in self.kept:
            self.inner.process(msg)
        px = sum(int(m.header.shape[0]) * int(m.header.shape[1]) for m in self.kept)
        return px / 1e6 / (time.perf_counter() - t0)


class GMMDetect:
    """The contrast-GMM baseline as a detections processor for a local scope: the same result
    message the network's processor publishes, with material and layers per class."""

    name = "contrast-gmm"
    backend = "numpy"
    kind = "detections"

    def __init__(self, gmm: Any) -> None:
        self.gmm = gmm

    def process(self, msg: Message) -> list[Any]:
        from scopeflow.inference.models.flake_detector import CLASS_ATTRIBUTES
        from scopeflow.inference.processors import detections_result, rgb

        h = msg.header
        found = [
            d.model_copy(
                update={"attributes": {**d.attributes, **CLASS_ATTRIBUTES[d.attributes["class"]]}}
            )
            for d in self.gmm.detect(rgb(msg))
        ]
        return [(detections_result(h, self.name, found), ())]


def fit_gmm(quick: bool, progress: Callable[[str], None]) -> tuple[Any, float]:
    """The contrast-GMM fitted and tuned on training tiles (as the models benchmark does, on
    fewer tiles); its seconds."""
    from scopeflow_lab.bench.models_detect_flakes import ContrastGMM
    from scopeflow_lab.training import flake_detector as flake_training

    t0 = time.perf_counter()
    specs = flake_training.train_specs(quick)
    # Quick: the four small training tiles for both, as the models benchmark's quick run.
    # Otherwise fitted on 8 tiles (every training oxide, 2 chips × 2 tiles) and tuned on 8
    # others.
    fit, tune = specs, specs
    if not quick:
        specs = [dataclasses.replace(s, tiles=2) for s in specs[:8]]
        fit, tune = specs[::2], specs[1::2]
    gmm = ContrastGMM()
    gmm.fit([s for _, _, s in flake_training.samples(fit)], np.random.default_rng(0))
    gmm.tune(
        [(s.contrast.astype(np.float32), im) for _, im, s in flake_training.samples(tune)], progress
    )
    return gmm, time.perf_counter() - t0


# -- truth and matching ----------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class TruthInstance:
    """The part of one chip flake that has one detector class (a terrace is its own), as a
    mask on a :data:`TRUTH_GRID_UM` grid in stage µm."""

    object_id: int
    flake_class: str
    area_um2: float
    bbox_um: tuple[float, float, float, float]
    mask: np.ndarray  # rows along +y, columns along +x, from (bbox x0, y0)
    centre_um: tuple[float, float]

    def near(self, x: float, y: float, slack_um: float) -> bool:
        """Whether (x, y) lies on the instance or within ``slack_um`` of it."""
        x0, y0, _, _ = self.bbox_um
        c, r = (x - x0) / TRUTH_GRID_UM, (y - y0) / TRUTH_GRID_UM
        s = slack_um / TRUTH_GRID_UM
        rows, cols = self.mask.shape
        r0, r1 = max(int(r - s), 0), min(int(r + s) + 1, rows)
        c0, c1 = max(int(c - s), 0), min(int(c + s) + 1, cols)
        if r1 <= r0 or c1 <= c0:
            return False
        ys, xs = np.nonzero(self.mask[r0:r1, c0:c1])
        return bool(len(ys)) and float(np.min(np.hypot(ys + r0 - r, xs + c0 - c))) <= s


def class_of_region(material: str, layers: int) -> str:
    """The detector's class of a truth region of ``material`` with ``layers``."""
    if material == "graphene":
        return "graphene_thick" if layers >= 4 else f"graphene_{layers}L"
    return material


def truth_instances(chip: Chip, region: tuple[float, float, float, float]) -> list[TruthInstance]:
    """Every flake of the chip whose centre lies in ``region``, split by class: the regions
    painted in order as the simulator paints them (a terrace over its base)."""
    out = []
    x0, y0, x1, y1 = region
    for obj in chip.objects_in(x0, y0, x1, y1):
        if obj.kind != "flake" or not (
            x0 <= obj.centre_um[0] <= x1 and y0 <= obj.centre_um[1] <= y1
        ):
            continue
        out += _instances_of(obj)
    return out


def _instances_of(obj: ChipObject) -> list[TruthInstance]:
    g = TRUTH_GRID_UM
    cx, cy, rad = obj.centre_um[0], obj.centre_um[1], obj.radius_um + 1.0
    bx0, by0 = cx - rad, cy - rad
    n = math.ceil(2 * rad / g)
    labels = np.zeros((n, n), np.uint8)
    for k, region in enumerate(obj.regions, start=1):
        for poly in region.polygons_um:  # one call per piece, as the simulator draws them
            pts = np.stack([(poly[:, 0] - bx0) / g - 0.5, (poly[:, 1] - by0) / g - 0.5], axis=1)
            cv2.fillPoly(labels, [np.round(pts * 16).astype(np.int32)], k, cv2.LINE_8, 4)
    by_class: dict[str, np.ndarray] = {}
    for k, region in enumerate(obj.regions, start=1):
        name = class_of_region(region.material, int(region.layers))
        by_class[name] = by_class.get(name, np.zeros_like(labels, bool)) | (labels == k)
    found = []
    for name, mask in by_class.items():
        rows, cols = np.nonzero(mask)
        if not len(rows):
            continue
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = (bx0 + c0 * g, by0 + r0 * g, bx0 + c1 * g, by0 + r1 * g)
        found.append(
            TruthInstance(
                obj.object_id,
                name,
                float(mask.sum()) * g * g,
                box,
                mask[r0:r1, c0:c1],
                (float(bx0 + (cols.mean() + 0.5) * g), float(by0 + (rows.mean() + 0.5) * g)),
            )
        )
    return found


def _matches(entry: dict[str, Any], truth: TruthInstance) -> bool:
    return entry["flake_class"] == truth.flake_class and truth.near(
        entry["x_um"], entry["y_um"], MATCH_SLACK_UM
    )


def _in_region(entry: dict[str, Any], region: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = region
    return x0 <= entry["x_um"] <= x1 and y0 <= entry["y_um"] <= y1


def score_monolayers(
    flakes: list[dict[str, Any]],
    truths: list[TruthInstance],
    region: tuple[float, float, float, float],
) -> dict[str, Any]:
    """Precision and recall of monolayer graphene ≥ :data:`MONOLAYER_MIN_UM2` and duplicates.

    An entry matches a truth instance when it has the same class and its centroid lies on the
    instance or within :data:`MATCH_SLACK_UM` of it (the stage's position error plus a pixel
    or two of outline). Only entries whose centroid lies in the region count (a confirmation
    tile at the edge sees beyond it). Recall: the share of the truth monolayers ≥ 50 µm² that
    some ``graphene_1L`` entry matches. Precision: the share of the ``graphene_1L`` entries of
    ≥ 50 µm² (catalog area) that match a truth monolayer of at least half that size (the
    catalog's area is an estimate: a 45 µm² flake measured at 52 µm² is not a false find).
    Duplicates: entries beyond the first matching the same truth instance (any class).
    """
    flakes = [f for f in flakes if _in_region(f, region)]
    mono = [t for t in truths if t.flake_class == "graphene_1L"]
    wanted = [t for t in mono if t.area_um2 >= MONOLAYER_MIN_UM2]
    ones = [f for f in flakes if f["flake_class"] == "graphene_1L"]
    found = [t for t in wanted if any(_matches(f, t) for f in ones)]
    chosen = [f for f in ones if f["area_um2"] >= MONOLAYER_MIN_UM2]
    fair = [t for t in mono if t.area_um2 >= MONOLAYER_MIN_UM2 / 2]
    right = [f for f in chosen if any(_matches(f, t) for t in fair)]
    missed = [t for t in wanted if all(t is not f for f in found)]
    seen: dict[tuple[int, str], int] = {}
    for f in flakes:
        for t in truths:
            if _matches(f, t):
                key = (t.object_id, t.flake_class)
                seen[key] = seen.get(key, 0) + 1
                break
    return {
        "truth": len(wanted),
        "found": len(found),
        "catalogued": len(chosen),
        "correct": len(right),
        "recall": len(found) / len(wanted) if wanted else None,
        "precision": len(right) / len(chosen) if chosen else None,
        "missed_um": [[round(t.centre_um[0], 1), round(t.centre_um[1], 1)] for t in missed],
        "duplicates": sum(n - 1 for n in seen.values()),
        "flakes_in_region": len(flakes),
        "flakes_matched": sum(seen.values()),
    }


# -- the runs --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to run the search."""

    name: str
    detector: str  # "onnx" or "gmm"
    serial: bool = False
    two_pass: str | None = None


def variants(quick: bool) -> list[Variant]:
    found = [
        Variant("single", "onnx"),
        Variant("single-serial", "onnx", serial=True),
        Variant("gmm", "gmm"),
        Variant("two-pass-10x", "onnx", two_pass="10x"),
    ]
    if not quick:
        found.append(Variant("two-pass-5x", "onnx", two_pass="5x"))
    return found


def _config(chip_mm: tuple[float, float], density: float) -> OpticalConfig:
    chip = ChipConfig(size_x_um=chip_mm[0] * 1e3, size_y_um=chip_mm[1] * 1e3,
                      flakes_per_mm2=density)  # fmt: skip
    return OpticalConfig(
        chip=chip,
        seed=SEED,
        stage_settle_s=STAGE_SETTLE_S,
        stage_speed_um_per_s=STAGE_SPEED_UM_PER_S,
        pace_frames=True,
    )


def run_variant(
    variant: Variant,
    cfg: OpticalConfig,
    chip: Chip,
    region: tuple[float, float, float, float],
    detector: _TimedDetector,
    focus: Any,
    out: Path,
    focus_grid: int,
) -> dict[str, Any]:
    """One search on a fresh microscope over the shared chip; its figures."""
    sim = _TimedMicroscope(cfg, chip=chip)
    detector.reset()
    scope = LocalScope(sim, processors={"focus": focus, "detections": detector})
    job = FlakeSearchJob(
        region,
        out,
        focus_grid=focus_grid,
        serial=variant.serial,
        objective=SEARCH_OBJECTIVE,
        two_pass=variant.two_pass,
        candidates=CANDIDATES,
    )
    outcome, stats = run_job(job, scope)
    if not outcome.reached_goal:
        raise RuntimeError(f"{variant.name}: the search ended {outcome.reason}: {outcome.message}")
    f, t = outcome.figures, outcome.details["time_s"]
    total = t["total_s"]
    area_cm2 = (region[2] - region[0]) * (region[3] - region[1]) * 1e-8
    shares = {
        "stage": t["stage_s"] / total,
        "focus": (t["z_s"] + t["autofocus_s"]) / total,
        "frames": t["frames_s"] / total,
        "detection_wait": t["detection_wait_s"] / total,
    }
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return {
        "detector": detector.name,
        "serial_detection": variant.serial,
        "two_pass": variant.two_pass,
        "wall_s": total,
        "minutes_per_cm2": total / 60 / area_cm2,
        "simulator_render_s": sim.render_s,
        "minutes_per_cm2_without_rendering": (total - sim.render_s) / 60 / area_cm2,
        "time_s": t,
        "shares": shares,
        "tiles": f["tiles"],
        "overview_tiles": f.get("overview_tiles"),
        "candidates": f.get("candidates"),
        "overview_focus_offset_um": f.get("overview_focus_offset_um"),
        "refocus_count": f["refocus_count"] + f.get("overview_refocus_count", 0),
        "blurred_tiles": f["blurred_tiles"],
        "flakes": f["flakes"],
        "duplicates_merged_by_job": f["duplicates_merged"],
        "frames": stats.frames,
        "detector_frames": detector.frames,
        "detector_s": detector.seconds,
        "detector_mpx_s_in_scan": (
            detector.pixels / 1e6 / detector.seconds if detector.seconds else None
        ),
        "out": str(out),
    }


def revisit(
    cfg: OpticalConfig, chip: Chip, catalog: Path, focus: Any, detector: Any, out: Path
) -> dict[str, Any]:
    """``flake-revisit`` at 50× of the single pass's monolayers ≥ 50 µm² (or, when the chip
    has none, its graphene flakes: the selection used is reported)."""
    from scopeflow.jobs.flakes.select import compile_selection, matches

    flakes = json.loads(catalog.read_text())["flakes"]
    if not flakes:
        return {"selection": None, "selected": 0}
    chosen: list[dict[str, Any]] = []
    for selection in (SELECT_MONOLAYERS, 'material=="graphene"'):
        tree = compile_selection(selection, set(flakes[0]))
        chosen = [f for f in flakes if matches(tree, f)][:REVISIT_MAX]
        if chosen:
            break
    if not chosen:
        return {"selection": None, "selected": 0}
    sim = _TimedMicroscope(cfg, chip=chip)
    scope = LocalScope(sim, processors={"focus": focus, "detections": detector})
    t0 = time.monotonic()
    outcome, _ = run_job(FlakeRevisitJob(chosen, out, objective="50x"), scope)
    errors = [v["position_error_um"] for v in outcome.details.get("visits", [])]
    found = [e for e in errors if e is not None]
    return {
        "selection": selection,
        "objective": "50x",
        "selected": len(chosen),
        "found": len(found),
        "position_error_um_median": median(found) if found else None,
        "position_error_um_max": max(found) if found else None,
        "seconds": time.monotonic() - t0,
        "reason": outcome.reason,
    }


def run(
    chip_mm: tuple[float, float] = (10.0, 10.0),
    quick: bool = False,
    out_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every variant on one chip; the benchmark's result (see the module docstring)."""
    import tempfile

    from scopeflow.inference.processors import make_processor

    density = QUICK_FLAKES_PER_MM2 if quick else FLAKES_PER_MM2
    # Quick: the central 1 × 1 mm of a 10 × 10 mm chip: a chip as small as two fields is
    # mostly edge, where the focus points see the dark holder, and AENet reads no signal on
    # bare substrate.
    cfg = _config((10.0, 10.0) if quick else chip_mm, density)
    chip = Chip(cfg.chip, cfg.seed)
    region = chip_region(f"{chip_mm[0]},{chip_mm[1]}")
    truths = truth_instances(chip, region)
    focus_grid = 1 if quick else 3
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="bench-flakes-"))
    wanted = sum(t.flake_class == "graphene_1L" and t.area_um2 >= MONOLAYER_MIN_UM2 for t in truths)
    progress(
        f"flake search over {chip_mm[0]:g} × {chip_mm[1]:g} mm of a simulated chip (seed {SEED}, "
        f"{density:g} flakes/mm², {wanted} monolayers ≥ {MONOLAYER_MIN_UM2:g} µm²), stage "
        f"settle {STAGE_SETTLE_S} s at {STAGE_SPEED_UM_PER_S / 1e3:g} mm/s; files in {out}"
    )
    focus = make_processor(FOCUS_MODEL, "onnxruntime")
    # Both detectors are told the chip's materials, as a user running the search would.
    materials = tuple(cfg.chip.materials)
    onnx = _TimedDetector(make_processor("flake_detector", "onnxruntime", materials=materials))
    progress("  fitting the contrast-GMM baseline on training tiles")
    gmm, gmm_fit_s = fit_gmm(quick, progress)
    gmm.materials = materials
    gmm_det = _TimedDetector(GMMDetect(gmm))
    results: dict[str, Any] = {}
    for v in variants(quick):
        progress(f"  {v.name} …")
        det = gmm_det if v.detector == "gmm" else onnx
        r = run_variant(v, cfg, chip, region, det, focus, out / v.name, focus_grid)
        flakes = json.loads((out / v.name / "catalog.json").read_text())["flakes"]
        r["monolayer_graphene"] = score_monolayers(flakes, truths, region)
        results[v.name] = r
        m = r["monolayer_graphene"]
        progress(
            f"    {r['tiles']} tiles, {r['wall_s']:.1f} s ({r['minutes_per_cm2']:.2f} min/cm²), "
            f"{r['flakes']} flakes; monolayers ≥ 50 µm² found {m['found']}/{m['truth']}"
        )
    progress("  revisit at 50× …")
    rev = revisit(cfg, chip, out / "single" / "catalog.json", focus, onnx.inner, out / "revisit")
    return {
        "chip": {
            "size_mm": [cfg.chip.size_x_um / 1e3, cfg.chip.size_y_um / 1e3],
            "scanned_mm": list(chip_mm),
            "seed": SEED,
            "flakes_per_mm2": density,
            "flakes": len({t.object_id for t in truths}),
            "monolayer_graphene_ge_50um2": wanted,
            "region_um": list(region),
        },
        "setup": {
            "stage_settle_s": STAGE_SETTLE_S,
            "stage_speed_um_per_s": STAGE_SPEED_UM_PER_S,
            "exposure_s": cfg.camera.exposure_s,
            "search_objective": SEARCH_OBJECTIVE,
            "focus_model": FOCUS_MODEL,
            "focus_grid": focus_grid,
            "overlap": 0.1,
            "candidates": CANDIDATES,
            "match_slack_um": MATCH_SLACK_UM,
            "monolayer_min_um2": MONOLAYER_MIN_UM2,
        },
        "variants": results,
        "gmm": {"fit_s": gmm_fit_s, "setup": gmm.setup()},
        "detector_mpx_s_standalone": onnx.standalone_mpx_s(),
        "gmm_mpx_s_standalone": gmm_det.standalone_mpx_s(),
        "revisit": rev,
        "targets": {"minutes_per_cm2": TARGET_MIN_PER_CM2, "detector_mpx_s": TARGET_MPX_S},
        "quick": quick,
    }
