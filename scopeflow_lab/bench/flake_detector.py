"""``scopeflow bench flake-detector``: the flake detector per condition (in-domain and held
out) beside the contrast-GMM baseline, and what a calibration from 5 labelled tiles gains on
each held-out condition.

Calibration gain: for every held-out condition, 5 tiles of one further chip of that condition
(seeds never used for testing) are labelled from the simulator's truth, the way a user labels
5 tiles of their own setup; ``scopeflow calibrate``'s fit runs on them
(:func:`scopeflow.inference.models.flake_calibration.fit`), and the calibrated detector is
scored on the same test tiles as the uncalibrated one. Beside it, the contrast-GMM baseline
fitted on the same 5 tiles (what a 2DMatGMM user would do for a new setup).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference import backends
from scopeflow.inference.models import flake_calibration as fc
from scopeflow.inference.models import flake_detector as flake_model
from scopeflow_lab.bench import models_detect_flakes as mdf
from scopeflow_lab.training import flake_detector as flake_training

CALIBRATION_TILES = 5


def calibration_from_truth(
    specs: list[flake_training.ChipSpec], detector: flake_model.FlakeDetector
) -> tuple[fc.FlakeCalibration, float]:
    """A calibration fitted on the tiles of ``specs`` labelled from the simulator's truth
    (every visible object, decoys included), and the seconds the fit took."""
    tiles = []
    t0 = time.monotonic()
    for spec, image, _ in flake_training.samples(specs):
        objects = []
        for obj in image.objects:
            k = flake_training.class_of(obj.attributes)
            if k != flake_training.IGNORE:
                objects.append((flake_model.CLASSES[k], obj.mask))
        pixel_nm = spec.config().pixel_um * 1e3
        tiles.append(
            fc.labelled_tile(
                f"seed{spec.seed}-{len(tiles)}", image.image, objects, detector, pixel_nm
            )
        )
    cal = fc.fit(tiles)
    return cal, time.monotonic() - t0


def calibration_gain(
    section: dict[str, Any], quick: bool, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Per held-out condition: uncalibrated (from ``section``), calibrated from 5 tiles, and
    the contrast-GMM fitted on the same 5 tiles, on the same test tiles."""
    session = backends.load(flake_model.NAME, "onnxruntime")
    plain = flake_model.FlakeDetector(session)
    rng = np.random.default_rng(1)
    chips, tiles = (1, 2) if quick else (2, 15)
    shape = (256, 384) if quick else (1200, 1920)
    rows = []
    before = {c["condition"]: c for c in section["conditions"]}
    for label, oxide, spectrum in mdf.HELD_OUT:
        cal_specs = mdf.condition_specs(  # quick: tiles large enough to hold a flake surely
            label,
            oxide,
            spectrum,
            1,
            3 if quick else CALIBRATION_TILES,
            held_out=True,
            shape=(600, 960) if quick else shape,
            seed_offset=50,
        )
        test_specs = mdf.condition_specs(
            label, oxide, spectrum, chips, tiles, held_out=True, shape=shape
        )
        cal, fit_s = calibration_from_truth(cal_specs, plain)
        gmm = mdf.fit_gmm(cal_specs, cal_specs, rng, lambda _m: None)
        calibrated = flake_model.FlakeDetector(session, calibration=cal)
        after, gmm_report = mdf._evaluate_flakes(
            calibrated, gmm, test_specs, progress, f"{label}, calibrated"
        )
        assert gmm_report is not None
        rows.append(
            {
                "condition": label,
                "calibration_tiles": sum(s.tiles for s in cal_specs),
                "calibration_id": cal.id,
                "net_weight": cal.net_weight,
                "fit_seconds": fit_s,
                "before": {k: before[label][k] for k in ("graphene_1L", "layer_accuracy", "f1")},
                "after": mdf._summary(after),
                "gmm_same_tiles": mdf._summary(gmm_report),
            }
        )
    return rows


def _pr(d: dict[str, Any]) -> str:
    return f"{d['precision']:.3f} / {d['recall']:.3f}"


def print_tables(section: dict[str, Any], gain: list[dict[str, Any]]) -> None:
    """The per-condition table and the calibration table, as markdown."""
    print(
        "\n| condition | 1L graphene P / R (true 1L) | contrast-GMM 1L P / R | layer acc. (GMM) "
        "| MoS₂ / WSe₂ 1L R | F1 graphene (GMM) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for c in section["conditions"]:
        b = c["baseline"]
        tag = " (held out)" if c["held_out"] else ""
        print(
            f"| {c['condition']}{tag} | {_pr(c['graphene_1L'])} "
            f"({c['per_class']['graphene_1L']['truths']}) | {_pr(b['graphene_1L'])} | "
            f"{c['layer_accuracy']:.3f} ({b['layer_accuracy']:.3f}) | "
            f"{c['MoS2_1L_recall']:.3f} / {c['WSe2_1L_recall']:.3f} | "
            f"{c['f1']:.3f} ({b['f1']:.3f}) |"
        )
    print(
        f"\nspeed: {section['megapixels_per_s']:.1f} Mpx/s end to end on ONNX Runtime "
        f"({section['tile_ms']:.0f} ms per {section['tile_shape'][1]}×{section['tile_shape'][0]}"
        f" tile); contrast-GMM {section['baseline']['megapixels_per_s']:.1f} Mpx/s"
    )
    print(
        "\n| held-out condition | 1L P / R before → after | layer acc. before → after "
        "| F1 before → after | GMM on the same 5 tiles: 1L P / R, F1 | net weight |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for g in gain:
        b, a, m = g["before"], g["after"], g["gmm_same_tiles"]
        print(
            f"| {g['condition']} | {_pr(b['graphene_1L'])} → {_pr(a['graphene_1L'])} | "
            f"{b['layer_accuracy']:.3f} → {a['layer_accuracy']:.3f} | "
            f"{b['f1']:.3f} → {a['f1']:.3f} | {_pr(m['graphene_1L'])}, {m['f1']:.3f} | "
            f"{g['net_weight']:g} |"
        )


def run_flake_detector_bench(json_path: str | None, quick: bool) -> int:
    """The command: evaluate, print, write JSON."""
    t0 = time.monotonic()
    section = mdf.flake_section(quick, print)
    gain = calibration_gain(section, quick, print)
    print_tables(section, gain)
    doc = {
        "bench": "flake-detector",
        "quick": quick,
        "seconds": time.monotonic() - t0,
        "flake_detector": section,
        "calibration_gain": gain,
    }
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=1, default=float) + "\n")
        print(f"wrote {json_path}")
    return 0
