"""``scopeflow bench particles``: the particle detector per imaging condition, in domain and
held out.

Rows (each: precision, recall, F1 at mask IoU ≥ 0.5, the classical baseline's F1, ms per frame):

- liquid-cell TEM, 0.5 nm/px (the training simulator, unseen seeds), and at 1 nm/px; held
  out: particles lighter than any in training (mean free path 100 nm, half the contrast);
- atomic-resolution HRTEM and HAADF STEM from the training simulator
  (:mod:`scopeflow_lab.sim.atomic.parametric`, unseen seeds);
- **held out**: the atom-by-atom multislice microscope (:mod:`scopeflow_lab.sim.atomic.
  multislice`, never trained on): HRTEM at 0.03 nm/px at 20, 100 and 1000 e⁻/Å², HRTEM at
  0.06 nm/px, HAADF at 10³–10⁵ e⁻/Å².

Baseline: Otsu's threshold on the smoothed contrast in noise units (the detector's own second
channel, binned as the detector bins), dark particles for TEM and HRTEM, bright for HAADF;
smoothing and least area tuned per modality on training-simulator frames.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference import backends
from scopeflow.inference.models import particle_detector as model
from scopeflow_lab.bench.models_detect_particles import OtsuParticles, heldout_particle_specs
from scopeflow_lab.sim.atomic import multislice
from scopeflow_lab.sim.insitu import InSituConfig
from scopeflow_lab.sim.truth import AnnotatedImage
from scopeflow_lab.training import particle_detector as training
from scopeflow_lab.training.detect_eval import Counts, Truth, count, particle_truths, rle_of

HELDOUT_SEED = 70_000


def otsu_baseline(bright: bool) -> OtsuParticles:
    """Otsu on the noise-unit channel, binned as the detector bins, with a fixed polarity."""
    return OtsuParticles(channel=1, bright=bright, sigmas=(1.0, 2.0, 3.0))


def _images(specs: list[Any]) -> Iterable[AnnotatedImage]:
    for _, _, image in training.frames(specs):
        yield image


def _row(
    name: str,
    images: Iterable[AnnotatedImage],
    detector: model.ParticleDetector,
    baseline: OtsuParticles,
    held_out: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    ours, theirs = Counts(), Counts()
    times: list[float] = []
    n = 0
    shape: tuple[int, ...] = ()
    for image in images:
        pixel = image.attributes.get("pixel_size_nm")
        truths = particle_truths(image)
        t = time.perf_counter()
        found = detector.detect(image.image, pixel)
        times.append(time.perf_counter() - t)
        ours.add(count([rle_of(d) for d in found], truths)[0])
        theirs.add(count([rle_of(d) for d in baseline.detect(image.image, pixel)], truths)[0])
        n += 1
        shape = image.image.shape
    r, rb = ours.report(), theirs.report()
    row = {
        "condition": name,
        "held_out": held_out,
        "frames": n,
        "frame_shape": list(shape),
        "precision": r["precision"],
        "recall": r["recall"],
        "f1_iou50": r["f1"],
        "counts": r,
        "baseline_f1_iou50": rb["f1"],
        "frame_ms_median": float(np.median(times)) * 1e3 if times else None,
    }
    progress(
        f"  {name:<44} {'held out' if held_out else 'in domain':<9} {n:>3} frames  "
        f"P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f}  (otsu {rb['f1']:.3f})  "
        f"{row['frame_ms_median']:.0f} ms"
    )
    return row


def _tuning(specs: list[Any]) -> list[tuple[np.ndarray, float | None, list[Truth]]]:
    return [
        (im.image, im.attributes.get("pixel_size_nm"), particle_truths(im)) for im in _images(specs)
    ]


def run_particles_bench(
    json_path: str | None = None,
    quick: bool = False,
    progress: Callable[[str], None] = print,
    weights_dir: Path | None = None,
) -> int:
    """Print the per-condition table and write it as JSON; exit status 0."""
    t0 = time.monotonic()
    detector = model.ParticleDetector(backends.load(model.NAME, "onnxruntime", weights_dir))
    progress("tuning the Otsu baselines on training-simulator frames")
    dark, bright = otsu_baseline(bright=False), otsu_baseline(bright=True)
    tem_tune = training.calibration_specs(quick)
    hrtem_tune = training.atomic_configs(training.ATOMIC_SEED, 2 if quick else 12, 0)
    haadf_tune = training.atomic_configs(training.ATOMIC_SEED + 300, 0, 2 if quick else 12)
    dark.tune(_tuning(tem_tune))
    hrtem_otsu = otsu_baseline(bright=False)
    hrtem_otsu.tune(_tuning(hrtem_tune))
    bright.tune(_tuning(haadf_tune))
    rows = []
    tem = training.test_specs(quick)
    rows.append(
        _row("liquid TEM 0.5 nm/px (500–5000 e⁻/px)", _images(tem), detector, dark, False, progress)
    )
    coarse = [
        training.SceneSpec(
            InSituConfig(
                frame_shape=(512, 512) if not quick else (256, 256),
                pixel_size_nm=1.0,
                seed=training.TEST_SEED + 700 + i,
            ),
            ((0, 2000.0), (20, 800.0)),
        )
        for i in range(2 if quick else 10)
    ]
    rows.append(_row("liquid TEM 1 nm/px", _images(coarse), detector, dark, False, progress))
    binned = model.ParticleDetector(detector.session, work_pixel_nm=1.0)
    name = "liquid TEM 0.5 nm/px analysed at 1 nm/px"
    rows.append(_row(name, _images(tem), binned, dark, False, progress))
    lighter = _images(heldout_particle_specs(quick))
    rows.append(
        _row("liquid TEM, lighter particles (λ 100 nm)", lighter, detector, dark, True, progress)
    )
    atomic = training.atomic_test_configs(quick)
    hrtem = [c for c in atomic if c.modality == "hrtem"]
    haadf = [c for c in atomic if c.modality == "haadf"]
    rows.append(
        _row("HRTEM, training simulator", _images(hrtem), detector, hrtem_otsu, False, progress)
    )
    rows.append(
        _row("HAADF, training simulator", _images(haadf), detector, bright, False, progress)
    )
    shape = (256, 256) if quick else (512, 512)
    per = 1 if quick else 8
    for dose in (20.0, 100.0, 1000.0):
        images = (
            multislice.render(
                multislice.test_frame(HELDOUT_SEED + int(dose) * 10 + i, "hrtem", dose, 0.03, shape)
            )
            for i in range(per)
        )
        rows.append(
            _row(
                f"multislice HRTEM 0.03 nm/px {dose:g} e⁻/Å²",
                images,
                detector,
                hrtem_otsu,
                True,
                progress,
            )
        )
    images = (
        multislice.render(
            multislice.test_frame(HELDOUT_SEED + 50_000 + i, "hrtem", 200.0, 0.06, shape)
        )
        for i in range(1 if quick else 6)
    )
    rows.append(
        _row("multislice HRTEM 0.06 nm/px 200 e⁻/Å²", images, detector, hrtem_otsu, True, progress)
    )
    images = (
        multislice.render(
            multislice.test_frame(HELDOUT_SEED + 60_000 + i, "haadf", dose, 0.03, shape)
        )
        for i in range(1 if quick else 4)
        for dose in (1e3, 1e4, 1e5)
    )
    rows.append(
        _row("multislice HAADF 0.03 nm/px 10³–10⁵ e⁻/Å²", images, detector, bright, True, progress)
    )
    report = {
        "benchmark": "particles",
        "quick": quick,
        "iou": 0.5,
        "rows": rows,
        "baseline": {
            "name": "otsu on the noise-unit contrast",
            "tuned": {
                "tem": {"sigma_px": dark.sigma_px, "min_area_px": dark.min_area},
                "hrtem": {"sigma_px": hrtem_otsu.sigma_px, "min_area_px": hrtem_otsu.min_area},
                "haadf": {"sigma_px": bright.sigma_px, "min_area_px": bright.min_area},
            },
        },
        "seconds": time.monotonic() - t0,
    }
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2))
        progress(f"wrote {json_path}")
    return 0
