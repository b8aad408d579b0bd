"""``scopeflow bench flake-detector``: the flake detector per condition (in-domain and held
out) beside the contrast-GMM baseline, and what a calibration from 5 labelled tiles gains on
each held-out condition.

Calibration gain: for every held-out condition, 5 tiles of one further chip of that condition
(seeds never used for testing) are labelled from the simulator's truth, the way a user labels
5 tiles of their own setup; ``scopeflow calibrate``'s fit runs on them
(:func:`scopeflow.inference.models.flake_calibration.fit`), and the calibrated detector is
scored on the same test tiles as the uncalibrated one. Beside it, the contrast-GMM baseline
fitted on the same 5 tiles (what a 2DMatGMM user would do for a new setup).

Physics prior (:mod:`scopeflow.inference.models.flake_physics`): the same test chips, the
detector calibrating itself from each chip's own flakes as it goes (``--oxide-nm auto``: the
first tiles of the chip vote on the oxide), and told the oxide (``--oxide-nm N``). Because the
prior uses the simulator's optics, one more held-out condition renders chips with other
optical constants (graphene 2.75 − 1.45i instead of 2.6 − 1.3i, hBN's index 4 % higher, the
TMDs' oscillators 15 % weaker): what an independently made chip, or a real one, looks like to
a prior whose indices are not quite right.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference import backends
from scopeflow.inference.models import flake_calibration as fc
from scopeflow.inference.models import flake_detector as flake_model
from scopeflow.inference.models import flake_physics as fp
from scopeflow.optics import thinfilm
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


@contextlib.contextmanager
def other_optics() -> Any:
    """The simulator renders with other optical constants than the prior knows (see the
    module's docstring) while the block runs."""
    saved = dict(thinfilm.MATERIALS)
    hbn = thinfilm.MATERIALS["hBN"]
    mos2, wse2 = thinfilm.MATERIALS["MoS2"], thinfilm.MATERIALS["WSe2"]

    def weaker(m: thinfilm.Material) -> thinfilm.Material:
        def index(lam: np.ndarray, f=m.index) -> np.ndarray:
            n = f(lam)
            eps = n * n
            return np.sqrt(1.0 + 0.85 * (eps - 1.0))  # n − ik: k stays positive

        return dataclasses.replace(m, index=index)

    thinfilm.MATERIALS.update(
        {
            "graphene": dataclasses.replace(
                thinfilm.GRAPHENE, index=thinfilm.constant_index(2.75 - 1.45j)
            ),
            "hBN": dataclasses.replace(hbn, index=lambda lam, f=hbn.index: 1.04 * f(lam)),
            "MoS2": weaker(mos2),
            "WSe2": weaker(wse2),
        }
    )
    try:
        yield
    finally:
        thinfilm.MATERIALS.clear()
        thinfilm.MATERIALS.update(saved)


def _evaluate_physics(
    session: Any,
    specs: list[flake_training.ChipSpec],
    oxide: float | tuple[float, float],
    progress: Callable[[str], None],
    label: str,
) -> tuple[dict[str, Any], list[float]]:
    """The detector with the physics prior on ``specs``, a fresh self-calibration per chip;
    the report and each chip's oxide estimate."""
    total = mdf.FlakeScore.empty()
    estimates = []
    for spec in specs:
        det = flake_model.FlakeDetector(session, materials=spec.chip.materials, oxide=oxide)
        for _, image, _ in flake_training.samples([spec]):
            total.add(det.detect(image.image), mdf.flake_truths(image))
        est = det.self_calibration.estimate
        estimates.append(float(est.oxide_nm) if est is not None else float("nan"))
    rep = total.report()
    g = rep["graphene_1L"]
    progress(
        f"    {label}: graphene 1L P/R {g['precision']:.3f}/{g['recall']:.3f}, layer acc "
        f"{rep['layer_accuracy']:.3f}; oxide estimates {estimates}"
    )
    return rep, estimates


def physics_prior(quick: bool, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per condition (in domain, held out, and held out with other optics): the physics
    prior estimating the oxide, and told it, on the test chips of :func:`mdf.flake_section`."""
    session = backends.load(flake_model.NAME, "onnxruntime")
    chips, tiles = (1, 2) if quick else (2, 15)
    shape = (256, 384) if quick else (1200, 1920)
    conditions = [(c, False, False) for c in mdf.IN_DOMAIN] + [
        (c, True, False) for c in mdf.HELD_OUT
    ]
    conditions.append((mdf.HELD_OUT[0], True, True))
    rows = []
    for (label, oxide, spectrum), held, other in conditions:
        specs = mdf.condition_specs(
            label, oxide, spectrum, chips, tiles, held_out=held, shape=shape
        )
        name = f"{label}, other optics" if other else label
        with other_optics() if other else contextlib.nullcontext():
            auto, estimates = _evaluate_physics(
                session, specs, fp.parse_oxide("auto"), progress, f"{name}, oxide auto"
            )
            given, _ = _evaluate_physics(session, specs, oxide, progress, f"{name}, told")
        rows.append(
            {
                "condition": name,
                "held_out": held,
                "other_optics": other,
                "oxide_nm": oxide,
                "oxide_estimates_nm": estimates,
                "auto": {**mdf._summary(auto), "per_class": auto},
                "given": {**mdf._summary(given), "per_class": given},
            }
        )
    return rows


def _pr(d: dict[str, Any]) -> str:
    return f"{d['precision']:.3f} / {d['recall']:.3f}"


def _tmd(d: dict[str, Any]) -> str:
    return f"{d['MoS2_1L_recall']:.2f}/{d['WSe2_1L_recall']:.2f}"


def print_physics(section: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The physics prior's table beside the network alone, as markdown."""
    plain = {c["condition"]: c for c in section["conditions"]}
    print(
        "\n| condition | oxide estimates, nm | 1L graphene P / R: network → prior (auto) → "
        "prior (told) | layer acc. | MoS₂ / WSe₂ 1L R | F1 graphene |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        n = plain.get(r["condition"])
        a, g = r["auto"], r["given"]
        tag = " (held out)" if r["held_out"] else ""

        def three(get: Callable[[dict[str, Any]], str], n=n, a=a, g=g) -> str:
            return f"{get(n) if n else '—'} → {get(a)} → {get(g)}"

        print(
            f"| {r['condition']}{tag} | "
            f"{', '.join(f'{e:.0f}' for e in r['oxide_estimates_nm'])} | "
            f"{three(lambda d: _pr(d['graphene_1L']))} | "
            f"{three(lambda d: format(d['layer_accuracy'], '.3f'))} | "
            f"{three(_tmd)} | "
            f"{three(lambda d: format(d['f1'], '.3f'))} |"
        )


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
    physics = physics_prior(quick, print)
    print_tables(section, gain)
    print_physics(section, physics)
    doc = {
        "bench": "flake-detector",
        "quick": quick,
        "seconds": time.monotonic() - t0,
        "flake_detector": section,
        "calibration_gain": gain,
        "physics_prior": physics,
    }
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=1, default=float) + "\n")
        print(f"wrote {json_path}")
    return 0
