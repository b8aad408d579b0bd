"""Train the particle detector on simulated in-situ TEM frames (:class:`InSituScene`) and on
atomic-resolution HRTEM and HAADF STEM frames (:mod:`scopeflow_lab.sim.atomic.parametric`).

Data: frames of simulated liquid-cell videos (Beer–Lambert counts, Poisson noise, detector MTF,
particles diffusing and coalescing, bubbles and fast particles as decoys), each scene rendered
at a few times and at doses drawn log-uniformly from 500–5000 e⁻/px (:data:`DOSES`). Scenes vary
what a real cell varies: particle size (median 5–12 nm), mean free path λ 20–80 nm (gold-like
to lighter), water 100–250 nm, particle and decoy densities, pixel size (0.5 nm/px for most,
0.25–1 nm/px for a third). Atomic-resolution frames vary what instruments and specimens vary:
modality (HRTEM, HAADF), pixel size 0.015–0.2 nm/px, dose (HRTEM 5–2000 e⁻/Å², HAADF 10²–10⁵),
voltage, defocus and Cs (corrected or not), coherence, aperture, support thickness and
roughness, liquid, Au/Pt/Pd/Ag particles of 0.5–3 nm radius with or without lattice fringes,
detector blur, gain, offset, read noise, probe size, scan jitter. The runner's own input
(:func:`insitu_contrast`, binned by :func:`bin_factor` from the pixel size) is computed from
each frame; labels are binned with it. Labels: the union of the particle masks (decoys are
background). The atom-by-atom multislice microscope (:mod:`scopeflow_lab.sim.atomic.
multislice`) is never trained on: it is the held-out test device.

Scene seeds: training from :data:`TRAIN_SEED`, validation from :data:`VALIDATION_SEED`, the
held-out test set (``scopeflow bench models``: default 1024² scenes) from :data:`TEST_SEED`.

Optimisation: 32 crops of 96² per step (half centred on a particle; many small crops converge
faster than a few large ones), flips and 90° turns, class-weighted cross entropy (weights
∝ 1/√frequency), AdamW with a one-cycle schedule.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scopeflow.inference.models import particle_detector as model
from scopeflow_lab.sim.atomic import parametric
from scopeflow_lab.sim.insitu import InSituConfig, InSituScene
from scopeflow_lab.sim.truth import AnnotatedImage
from scopeflow_lab.training.common import seed_everything, write_json
from scopeflow_lab.training.flake_detector import fit_and_save

DOSES = (500.0, 5000.0)  # e⁻/px per frame, log-uniform
TRAIN_SEED = 20_000  # scene seeds of the training data start here …
VALIDATION_SEED = 25_000  # … validation scenes here …
TEST_SEED = 29_000  # … and the held-out test scenes here.
CROP = 96  # px: a 3 nm particle at the 0.06 nm/px working scale is 100 px across
BATCH = 32
STEPS = 8000  # planned; LOOP_BUDGET_S may end the run first on a busy machine
LOOP_BUDGET_S = 1900.0


ATOMIC_SEED = 40_000  # atomic-resolution training frames (+ 5 000 validation, + 9 000 test)
ATOMIC_PIXEL_NM = (0.015, 0.2)


@dataclass(frozen=True)
class SceneSpec:
    """One simulated scene and the frames taken from it (frame index, dose)."""

    config: InSituConfig
    frames: tuple[tuple[int, float], ...]


def random_scene(
    rng: np.random.Generator, seed: int, shape: tuple[int, int], n_frames: int
) -> SceneSpec:
    """A training scene: cell and particle parameters varied, frames at random times/doses."""
    pixel = 0.5 if rng.random() < 0.67 else float(np.exp(rng.uniform(np.log(0.25), np.log(1.0))))
    config = InSituConfig(
        frame_shape=shape,
        pixel_size_nm=pixel,
        seed=seed,
        particle_size_nm=float(rng.uniform(5.0, 12.0)),
        lambda_particle_nm=float(rng.uniform(20.0, 80.0)),
        water_thickness_nm=float(rng.uniform(100.0, 250.0)),
        particle_density_per_um2=float(rng.uniform(30.0, 90.0)),
        decoy_density_per_um2=float(rng.uniform(8.0, 25.0)),
    )
    times = np.sort(rng.choice(40, size=n_frames, replace=False))
    doses = np.exp(rng.uniform(math.log(DOSES[0]), math.log(DOSES[1]), n_frames))
    return SceneSpec(config, tuple((int(t), float(d)) for t, d in zip(times, doses, strict=True)))


def atomic_configs(
    seed0: int, n_hrtem: int, n_haadf: int, pixel_nm: tuple[float, float] = ATOMIC_PIXEL_NM
) -> list[parametric.AtomicConfig]:
    """Atomic-resolution frames, each big enough to stay ≥ 160 px a side once binned."""
    rng = np.random.default_rng([seed0, 0xA7])
    out = []
    for i, modality in enumerate(["hrtem"] * n_hrtem + ["haadf"] * n_haadf):
        p = float(np.exp(rng.uniform(np.log(pixel_nm[0]), np.log(pixel_nm[1]))))
        side = int(np.clip(160 * model.bin_factor(p), 256, 1024))
        out.append(parametric.random_config(rng, seed0 + i, modality, (side, side), (p, p)))
    return out


Spec = SceneSpec | parametric.AtomicConfig


def frames(specs: list[Spec]) -> Iterator[tuple[Spec, float, AnnotatedImage]]:
    """Every frame of every scene or atomic configuration: (spec, dose, annotated frame);
    the frame's pixel size is in its attributes (``pixel_size_nm``)."""
    for spec in specs:
        if isinstance(spec, parametric.AtomicConfig):
            yield spec, spec.dose_e_per_a2, parametric.render(spec)
            continue
        scene = InSituScene(spec.config)
        stage = (spec.config.start_stage_x_um, spec.config.start_stage_y_um)
        for index, dose in spec.frames:
            scene.advance_to(index)
            image = scene.render(stage, dose_e_per_px=dose)
            attributes = {**image.attributes, "pixel_size_nm": spec.config.pixel_size_nm}
            yield spec, dose, AnnotatedImage(image.image, image.objects, attributes)


def particle_labels(image: AnnotatedImage) -> np.ndarray:
    """1 where any particle lies, 0 elsewhere (decoys included)."""
    labels = np.zeros(image.image.shape[:2], np.uint8)
    for obj in image.objects:
        if obj.category == "particle":
            labels[obj.mask] = 1
    return labels


@dataclass
class Sample:
    contrast: np.ndarray  # (1, H, W) float16
    labels: np.ndarray  # (H, W) uint8


def sample_of(image: AnnotatedImage) -> Sample:
    """The runner's input for this frame (binned as its pixel size asks) and its labels."""
    contrast = model.insitu_contrast(
        image.image, bin_px=model.bin_factor(image.attributes.get("pixel_size_nm"))
    )
    labels = particle_labels(image)
    if labels.shape != contrast.shape[1:]:
        size = (contrast.shape[2], contrast.shape[1])
        labels = cv2.resize(labels.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    return Sample(contrast.astype(np.float16), labels.astype(np.uint8))


def samples(specs: list[Spec]) -> list[Sample]:
    return [sample_of(im) for _, _, im in frames(specs)]


def train_specs(quick: bool) -> list[Spec]:
    rng = np.random.default_rng([TRAIN_SEED, 0x5CE])
    if quick:
        return [random_scene(rng, TRAIN_SEED, (128, 128), 2)]
    tem: list[Spec] = [random_scene(rng, TRAIN_SEED + i, (512, 512), 4) for i in range(150)]
    return tem + list(atomic_configs(ATOMIC_SEED, 300, 160))


def validation_specs(quick: bool) -> list[Spec]:
    rng = np.random.default_rng([VALIDATION_SEED, 0x5CE])
    if quick:
        return [random_scene(rng, VALIDATION_SEED, (128, 128), 1)]
    tem: list[Spec] = [random_scene(rng, VALIDATION_SEED + i, (512, 512), 2) for i in range(10)]
    return tem + list(atomic_configs(ATOMIC_SEED + 5_000, 16, 10))


def atomic_test_configs(quick: bool) -> list[parametric.AtomicConfig]:
    """In-domain atomic test frames: the training simulator, unseen seeds."""
    return atomic_configs(ATOMIC_SEED + 9_000, *((1, 1) if quick else (30, 20)))


def test_specs(quick: bool) -> list[SceneSpec]:
    """Held-out test scenes: the default cell (1024², 0.5 nm/px) at 500, 1000, 2000 and 5000
    e⁻/px, frames 0, 15 and 30 of each video."""
    doses = (500.0, 1000.0, 2000.0, 5000.0)
    if quick:
        return [SceneSpec(InSituConfig(frame_shape=(256, 256), seed=TEST_SEED), ((0, 1000.0),))]
    specs = []
    for i in range(12):
        dose = doses[i % 4]
        specs.append(
            SceneSpec(InSituConfig(seed=TEST_SEED + i), tuple((t, dose) for t in (0, 15, 30)))
        )
    return specs


def calibration_specs(quick: bool) -> list[SceneSpec]:
    """Scenes for tuning baselines: training seeds, the test set's default cell and doses."""
    if quick:
        return [SceneSpec(InSituConfig(frame_shape=(256, 256), seed=TRAIN_SEED), ((0, 1000.0),))]
    doses = (500.0, 1000.0, 2000.0, 5000.0)
    return [
        SceneSpec(
            InSituConfig(frame_shape=(512, 512), seed=TRAIN_SEED + i),
            ((0, doses[i % 4]), (20, doses[(i + 1) % 4])),
        )
        for i in range(8)
    ]


class CropSampler:
    """Random crops, half of them centred on a particle pixel."""

    def __init__(self, data: list[Sample], rng: np.random.Generator, crop: int) -> None:
        self.data, self.rng, self.crop = data, rng, crop
        fg = []
        for i, s in enumerate(data):
            rows, cols = np.nonzero(s.labels)
            keep = slice(None, None, 8)
            fg.append(np.stack([np.full(rows[keep].size, i), rows[keep], cols[keep]], 1))
        self.fg = np.concatenate(fg) if fg else np.zeros((0, 3), int)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        k = self.crop
        for _ in range(size):
            if len(self.fg) and self.rng.random() < 0.5:
                i, r, c = (int(v) for v in self.fg[self.rng.integers(len(self.fg))])
            else:
                i = int(self.rng.integers(len(self.data)))
                h, w = self.data[i].labels.shape
                r, c = int(self.rng.integers(h)), int(self.rng.integers(w))
            s = self.data[i]
            h, w = s.labels.shape
            r0 = int(np.clip(r - k // 2 + self.rng.integers(-k // 4, k // 4 + 1), 0, h - k))
            c0 = int(np.clip(c - k // 2 + self.rng.integers(-k // 4, k // 4 + 1), 0, w - k))
            x = s.contrast[:, r0 : r0 + k, c0 : c0 + k].astype(np.float32)
            y = s.labels[r0 : r0 + k, c0 : c0 + k]
            turns = int(self.rng.integers(4))
            x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
            if self.rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return np.stack(xs), np.stack(ys)


def class_weights(data: list[Sample]) -> np.ndarray:
    """Cross-entropy weights ∝ 1/√(pixel frequency) of background and particle, mean 1."""
    counts = np.zeros(len(model.CLASSES))
    for s in data:
        counts += np.bincount(s.labels.ravel(), minlength=len(model.CLASSES))
    w = 1.0 / np.sqrt(np.maximum(counts / max(counts.sum(), 1), 1e-12))
    return (w / w.mean()).astype(np.float32)


def pixel_report(net: Any, data: list[Sample]) -> dict[str, float]:
    """Pixel IoU, precision and recall of the particle class on whole frames."""
    import torch

    tp = fp = fn = 0
    net.eval()
    with torch.inference_mode():
        for s in data:
            h, w = s.labels.shape
            m = model.MULTIPLE  # the U-Net takes multiples of this: pad, then crop back
            pad = ((0, 0), (0, -h % m), (0, -w % m))
            x = np.pad(s.contrast.astype(np.float32), pad, mode="reflect")
            probs = net(torch.from_numpy(x[None]))[0, 1].numpy()[:h, :w]
            pred, truth = probs > 0.5, s.labels.astype(bool)
            tp += int((pred & truth).sum())
            fp += int((pred & ~truth).sum())
            fn += int((~pred & truth).sum())
    return {
        "pixel_iou": tp / max(tp + fp + fn, 1),
        "pixel_precision": tp / max(tp + fp, 1),
        "pixel_recall": tp / max(tp + fn, 1),
    }


def train(
    out_dir: Path, seed: int = 0, quick: bool = False, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train, write ``particle_detector.pt``, ``loss_curve.png`` and ``metrics.json`` to
    ``out_dir``; return the metrics. ``quick``: a smoke run of a few seconds on small frames."""

    seed_everything(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]  # the machine is shared: timings depend on it
    specs = train_specs(quick)
    n_frames = sum(len(s.frames) if isinstance(s, SceneSpec) else 1 for s in specs)
    progress(f"rendering {n_frames} training frames")
    data = samples(specs)
    val = samples(validation_specs(quick))
    data_s = time.monotonic() - t0
    progress(f"  {len(data)} frames in {data_s:.0f} s; training")

    steps, batch, lr = (4, 2, 3e-3) if quick else (STEPS, BATCH, 3e-3)
    crop = 64 if quick else CROP
    sampler = CropSampler(data, np.random.default_rng([seed, 0x9A7]), crop)
    net = model.build()
    budget = LOOP_BUDGET_S - data_s
    fitted = fit_and_save(
        net,
        sampler.batch,
        class_weights(data),
        out_dir,
        model.NAME,
        "particle detector: cross entropy",
        steps=steps,
        batch=batch,
        lr=lr,
        crop=crop,
        budget_s=budget,
        progress=progress,
    )
    report = pixel_report(net, val)
    metrics = {
        "model": model.NAME,
        "seed": seed,
        "quick": quick,
        **fitted,
        "train_frames": len(data),
        "atomic_frames": sum(isinstance(s, parametric.AtomicConfig) for s in specs),
        "doses_e_per_px": list(DOSES),
        "scene_seeds": [s.config.seed for s in specs if isinstance(s, SceneSpec)],
        "validation": report,
        "data_seconds": data_s,
        "total_seconds": time.monotonic() - t0,
        "load_average_1min_at_start": load_start,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    write_json(out_dir / "metrics.json", metrics)
    progress(
        f"  validation pixel IoU {report['pixel_iou']:.4f}; {metrics['total_seconds']:.0f} s in all"
    )
    return metrics


AREA_GRID_PX = (8, 12, 16, 24, 32, 48)  # least instance areas tried
SCORE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)  # least mean particle probabilities tried


def choose_instance_thresholds(
    session: Any, specs: list[Spec], progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """The least instance area and score giving the best F1 at IoU 0.5 on ``specs``
    (validation scenes: never the test set), with the benchmark's matching rule; the network
    runs once per frame. The runner's :data:`~scopeflow.inference.models.particle_detector.
    MIN_AREA_PX` and ``MIN_SCORE`` hold the values chosen for the shipped model."""
    from scopeflow_lab.training.detect_eval import Counts, count, particle_truths, rle_of

    runner = model.ParticleDetector(session)
    seen = [
        (
            runner.probabilities(im.image, im.attributes.get("pixel_size_nm")),
            im.image.shape,
            particle_truths(im),
        )
        for _, _, im in frames(specs)
    ]
    table = []
    for area in AREA_GRID_PX:
        for score in SCORE_GRID:
            tuned = model.ParticleDetector(session, min_area_px=area, min_score=score)
            total = Counts()
            for probs, shape, truths in seen:
                found = tuned.detections(probs, shape)
                total.add(count([rle_of(d) for d in found], truths)[0])
            table.append({"min_area_px": area, "min_score": score, **total.report()})
    best = max(table, key=lambda r: r["f1"])
    progress(
        f"  instance thresholds on {len(seen)} validation frames: area ≥ "
        f"{best['min_area_px']} px, score ≥ {best['min_score']} (F1 {best['f1']:.3f})"
    )
    return {"chosen": best, "frames": len(seen), "grid": table}
