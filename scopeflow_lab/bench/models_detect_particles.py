"""The particle detector section of the detection benchmark
(:mod:`scopeflow_lab.bench.models_detect`): particle truths, the Otsu baseline, and the
held-out video evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scopeflow.inference import backends
from scopeflow.inference.models import flake_detector as flake_model
from scopeflow.inference.models import particle_detector as particle_model
from scopeflow.schemas.results import Detection
from scopeflow_lab.bench.models_detect_common import backend_times
from scopeflow_lab.sim.insitu import InSituConfig
from scopeflow_lab.training import particle_detector as particle_training
from scopeflow_lab.training.detect_eval import (
    IOU,
    PARTICLE_MIN_TRUTH_PX,
    Counts,
    Truth,
    count,
    particle_truths,
    rle_of,
)

HELDOUT_LAMBDA_NM = 100.0  # held-out particle material: lighter than training's 20–80 nm


class OtsuParticles:
    """Otsu threshold of the smoothed contrast + connected components.

    ``channel``: the detector's input channel thresholded (0: transmission contrast, 1: the
    same in units of noise); ``bright``: particles brighter than the field (HAADF) rather than
    darker; frames finer than the detector's working pixel are binned as the detector bins
    them. Smoothing (``sigmas``, px) and least area (``areas``, px at the working scale) are
    tuned by :meth:`tune`.
    """

    name = "otsu"

    def __init__(
        self,
        sigma_px: float = 1.5,
        min_area: int = particle_model.MIN_AREA_PX,
        *,
        channel: int = 0,
        bright: bool = False,
        sigmas: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0),
        areas: tuple[int, ...] = (8, 20, 40),
    ) -> None:
        self.sigma_px = sigma_px
        self.min_area = min_area
        self.channel, self.bright = channel, bright
        self.sigmas, self.areas = sigmas, areas

    def detect(self, frame: np.ndarray, pixel_nm: float | None = None) -> list[Detection]:
        b = particle_model.bin_factor(pixel_nm)
        contrast = particle_model.insitu_contrast(frame, bin_px=b)[self.channel]
        smooth = cv2.GaussianBlur(contrast, (0, 0), self.sigma_px)
        lo, hi = np.percentile(smooth, (0.1, 99.9))
        scaled = np.clip((smooth - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
        mode = cv2.THRESH_BINARY if self.bright else cv2.THRESH_BINARY_INV
        _, binary = cv2.threshold(scaled, 0, 1, mode + cv2.THRESH_OTSU)
        if b > 1:
            size = (frame.shape[1], frame.shape[0])
            binary = cv2.resize(binary, size, interpolation=cv2.INTER_NEAREST)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        found = []
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < self.min_area * b * b:
                continue
            mask = labels[y : y + h, x : x + w] == i
            found.append(
                flake_model.detection_from_mask(mask, y, x, frame.shape[:2], "particle", 1.0, {})
            )
        return found

    def tune(
        self,
        frames: list[tuple[np.ndarray, float | None, list[Truth]]],
        progress: Callable[[str], None] | None = None,
    ) -> float:
        """Set the smoothing and least area with the best F1 on ``frames`` (frame, pixel size,
        truths); return that F1."""
        best = (-1.0, self.sigma_px, self.min_area)
        for sigma in self.sigmas:
            for min_area in self.areas:
                self.sigma_px, self.min_area = sigma, min_area
                total = Counts()
                for frame, pixel_nm, truths in frames:
                    found = self.detect(frame, pixel_nm)
                    total.add(count([rle_of(d) for d in found], truths)[0])
                f1 = float(total.report()["f1"])
                if f1 > best[0]:
                    best = (f1, sigma, min_area)
        _, self.sigma_px, self.min_area = best
        if progress is not None:
            progress(
                f"    otsu tuned on {len(frames)} training frames: σ {self.sigma_px} px, "
                f"min area {self.min_area} px (F1 {best[0]:.3f})"
            )
        return best[0]


def _evaluate_particles(
    detector: particle_model.ParticleDetector,
    otsu: OtsuParticles,
    specs: list[particle_training.SceneSpec],
) -> dict[str, Any]:
    """Both methods on every frame of ``specs``: pooled and per-dose counts, detector times."""
    ours, theirs = Counts(), Counts()
    by_dose: dict[float, tuple[Counts, Counts]] = {}
    n = 0
    times = []
    shape: Iterable[int] = ()
    for _, dose, image in particle_training.frames(specs):
        truths = particle_truths(image)
        t = time.perf_counter()
        dets = detector.detect(image.image)
        times.append(time.perf_counter() - t)
        a = count([rle_of(d) for d in dets], truths)[0]
        b = count([rle_of(d) for d in otsu.detect(image.image)], truths)[0]
        ours.add(a)
        theirs.add(b)
        pair = by_dose.setdefault(dose, (Counts(), Counts()))
        pair[0].add(a)
        pair[1].add(b)
        n += 1
        shape = image.image.shape
    return {
        "ours": ours,
        "theirs": theirs,
        "by_dose": by_dose,
        "n": n,
        "times": times,
        "shape": shape,
    }


def heldout_particle_specs(quick: bool) -> list[particle_training.SceneSpec]:
    """Scenes outside the training ranges: lighter particles (mean free path 100 nm, training
    20–80 nm), so about half the contrast, in the default cell at the test doses."""
    if quick:
        return [
            particle_training.SceneSpec(
                InSituConfig(
                    frame_shape=(256, 256),
                    seed=particle_training.TEST_SEED + 500,
                    lambda_particle_nm=HELDOUT_LAMBDA_NM,
                ),
                ((0, 1000.0),),
            )
        ]
    doses = (500.0, 1000.0, 2000.0, 5000.0)
    return [
        particle_training.SceneSpec(
            InSituConfig(
                seed=particle_training.TEST_SEED + 500 + i, lambda_particle_nm=HELDOUT_LAMBDA_NM
            ),
            tuple((t, doses[i % 4]) for t in (0, 15, 30)),
        )
        for i in range(8)
    ]


def particle_section(
    quick: bool = False, progress: Callable[[str], None] = print, weights_dir: Path | None = None
) -> dict[str, Any]:
    """The ``particle_detector`` section of the models benchmark."""
    detector = particle_model.ParticleDetector(
        backends.load(particle_model.NAME, "onnxruntime", weights_dir)
    )
    otsu = OtsuParticles()
    calib = [
        (im.image, None, particle_truths(im))
        for _, _, im in particle_training.frames(particle_training.calibration_specs(quick))
    ]
    otsu.tune(calib, progress)
    main = _evaluate_particles(detector, otsu, particle_training.test_specs(quick))
    held = _evaluate_particles(detector, otsu, heldout_particle_specs(quick))
    ours, theirs, by_dose, n = main["ours"], main["theirs"], main["by_dose"], main["n"]
    times, shape = main["times"], main["shape"]
    r, rb = ours.report(), theirs.report()
    progress(f"    particles: {n} frames, F1 {r['f1']:.3f} (otsu {rb['f1']:.3f})")
    hr, hrb = held["ours"].report(), held["theirs"].report()
    progress(
        f"    particles, held-out λ {HELDOUT_LAMBDA_NM:g} nm: {held['n']} frames, F1 "
        f"{hr['f1']:.3f} (otsu {hrb['f1']:.3f})"
    )
    net_input = particle_model.example_inputs(np.random.default_rng(1))
    return {
        "f1_iou50": r["f1"],
        "precision": r["precision"],
        "recall": r["recall"],
        "counts": r,
        "by_dose": {
            f"{d:g}": {"f1_iou50": c[0].report()["f1"], "baseline_f1_iou50": c[1].report()["f1"]}
            for d, c in sorted(by_dose.items())
        },
        "frame_ms": float(np.median(times)) * 1e3,
        "frame_shape": list(shape),
        "network": backend_times(particle_model.NAME, net_input, 2 if quick else 10, weights_dir),
        "baseline": {
            "name": otsu.name,
            "f1_iou50": rb["f1"],
            "precision": rb["precision"],
            "recall": rb["recall"],
            "setup": {
                "sigma_px": otsu.sigma_px,
                "min_area_px": otsu.min_area,
                "normalisation": "the detector's fitted background",
                "tuned_on": "training scenes (seeds from TRAIN_SEED)",
            },
        },
        "heldout_f1_iou50": hr["f1"],
        "heldout": {
            "f1_iou50": hr["f1"],
            "precision": hr["precision"],
            "recall": hr["recall"],
            "baseline_f1_iou50": hrb["f1"],
            "frames": held["n"],
            "lambda_particle_nm": HELDOUT_LAMBDA_NM,
            "what": "particles lighter than any in training (λ 100 nm vs 20–80 nm)",
        },
        "test_set": {
            "frames": n,
            "scene_seeds": [s.config.seed for s in particle_training.test_specs(quick)],
            "doses_e_per_px": sorted(by_dose),
            "min_truth_area_px": PARTICLE_MIN_TRUTH_PX,
            "iou": IOU,
        },
    }
