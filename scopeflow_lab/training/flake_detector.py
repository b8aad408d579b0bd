"""Train the flake detector on simulated chip tiles (:class:`FlakeChipSource`).

Data: full 1920×1200 tiles rendered by the optical simulator (noise, defocus within ±1 DoF,
vignetting, white balance, 8-bit unless stated), turned into the runner's own input — the
contrast against the fitted substrate at half resolution (:func:`flake_contrast`) — with the
truth masks mapped to :data:`CLASSES` (a network pixel takes the class covering most of its 2×2
block). Training oxides: 90, 100, 270 and 285 nm (:data:`TRAIN_OXIDES_NM`); 300 nm is held out
(:data:`HELDOUT_OXIDE_NM`). A third of the chips use the "substrate" white balance and a sixth
16-bit output. Training chips carry more thin graphene than the default chip
(:data:`TRAIN_CHIP`): monolayers are the rare class that matters most.

Chip seeds: training from :data:`TRAIN_SEED`, validation (reported in ``metrics.json``) from
:data:`VALIDATION_SEED`, held-out test (``scopeflow bench models``) from :data:`TEST_SEED`;
the ranges never meet.

Optimisation: 48 crops of 64² network pixels per step (37 µm; many small crops show more
objects per step than a few large ones), three in four centred on a pixel of a class drawn
uniformly (rare layer counts are seen as often as common ones); flips and 90° turns (the physics
has no preferred direction) and a ±5 % per-channel contrast gain (residual black-level and
spectral differences); class-balanced cross entropy (weights ∝ 1/frequency in the crops);
AdamW with a one-cycle schedule, :data:`STEPS` steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference.models import flake_detector as model
from scopeflow_lab.sim.optical import CameraConfig, ChipConfig, FlakeChipSource, OpticalConfig
from scopeflow_lab.sim.truth import AnnotatedImage
from scopeflow_lab.training.common import TrainLog, save_loss_curve, seed_everything, write_json

TRAIN_OXIDES_NM = (90.0, 100.0, 270.0, 285.0)
HELDOUT_OXIDE_NM = 300.0
TRAIN_SEED = 100  # chip seeds of the training data start here …
VALIDATION_SEED = 5_000  # … validation chips here …
TEST_SEED = 9_000  # … and the held-out test chips here.
#: Training chips: more thin graphene than the default chip (same shapes, sizes and decoys).
TRAIN_CHIP = ChipConfig(
    material_weights=(0.6, 0.4),
    few_layer_weights=(0.30, 0.20, 0.15, 0.06, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02),
    bulk_weight=0.30,
)
# Many small crops rather than a few large ones: 48 crops of 64² (37 µm) show ~4× as many
# objects per step as 12 of 128², and colour classes converge several times faster.
CROP = 64  # training crop, network pixels per side
BATCH = 48
# Class weights ∝ frequency^−power. Balanced (1) rather than √: blurred edges make the colours
# of neighbouring layer counts overlap, and a class prior tilted towards the commoner class
# moves the 2L/3L boundary onto 2L.
WEIGHT_POWER = 1.0
STEPS = 3000  # planned; LOOP_BUDGET_S may end the run first on a busy machine
LOOP_BUDGET_S = 840.0  # data + optimisation: 14 of the 15 minutes (export and report after)


@dataclass(frozen=True)
class ChipSpec:
    """One simulated chip: oxide, seed, camera variant and how many tiles to take from it."""

    oxide_nm: float
    seed: int
    tiles: int
    white_balance: str = "mirror"
    bit_depth: int = 8
    shape: tuple[int, int] = (1200, 1920)
    chip: ChipConfig = TRAIN_CHIP

    def source(self) -> FlakeChipSource:
        camera = CameraConfig(
            shape=self.shape, white_balance=self.white_balance, bit_depth=self.bit_depth
        )
        chip = dataclasses.replace(self.chip, oxide_nm=self.oxide_nm)
        return FlakeChipSource(OpticalConfig(chip=chip, camera=camera), seed=self.seed)


def class_of(attributes: dict[str, Any]) -> int:
    """Class index of a truth object (graphene by layers, hBN, residue, dirt)."""
    material = attributes["material"]
    if material == "graphene":
        layers = int(attributes["layers"])
        return model.CLASSES.index("graphene_thick" if layers >= 4 else f"graphene_{layers}L")
    if material == "hBN":
        return model.CLASSES.index("hBN")
    return model.CLASSES.index("dirt" if material == "dirt" else "residue")


def label_map(image: AnnotatedImage, factor: int = model.DOWNSAMPLE) -> np.ndarray:
    """Class per network pixel: the object covering most of each ``factor``² block."""
    h, w = image.image.shape[:2]
    small = (math.ceil(h / factor), math.ceil(w / factor))
    labels = np.zeros(small, np.uint8)
    for obj in image.objects:
        cover = model.downsample(obj.mask.astype(np.float32), factor)
        labels[cover >= 0.5] = class_of(obj.attributes)
    return labels


@dataclass
class Sample:
    """One tile at network resolution: contrast (3, h, w) float16 and labels (h, w) uint8."""

    contrast: np.ndarray
    labels: np.ndarray


def samples(specs: list[ChipSpec]) -> Iterator[tuple[ChipSpec, AnnotatedImage, Sample]]:
    """Every tile of every chip, with its network input and labels."""
    for spec in specs:
        for image in spec.source().images(spec.tiles):
            contrast = model.flake_contrast(image.image).astype(np.float16)
            yield spec, image, Sample(contrast, label_map(image))


def train_specs(quick: bool) -> list[ChipSpec]:
    """The training chips: each training oxide with several seeds and camera variants."""
    if quick:
        return [
            ChipSpec(285.0, TRAIN_SEED, 2, shape=(256, 384)),
            ChipSpec(90.0, TRAIN_SEED + 1, 2, shape=(256, 384)),
        ]
    specs = []
    for i in range(24):
        wb = "substrate" if i % 3 == 2 else "mirror"
        bits = 16 if i % 6 == 5 else 8
        specs.append(ChipSpec(TRAIN_OXIDES_NM[i % 4], TRAIN_SEED + i, 10, wb, bits))
    return specs


def validation_specs(quick: bool) -> list[ChipSpec]:
    if quick:
        return [ChipSpec(285.0, VALIDATION_SEED, 1, shape=(256, 384))]
    return [ChipSpec(ox, VALIDATION_SEED + i, 6) for i, ox in enumerate(TRAIN_OXIDES_NM)]


class CropSampler:
    """Random training crops. Three in four are centred on a pixel of a class drawn uniformly
    from the object classes, so that rare classes (2L and 3L graphene) are seen as often as
    common ones; the rest anywhere."""

    def __init__(self, data: list[Sample], rng: np.random.Generator, crop: int) -> None:
        self.data = data
        self.rng = rng
        self.crop = crop
        # (tile, row, col) of the pixels of each object class (a subsample is plenty).
        self.centres: list[np.ndarray] = []
        for k in range(1, len(model.CLASSES)):
            found = [np.zeros((0, 3), np.int64)]
            for i, s in enumerate(data):
                rows, cols = np.nonzero(s.labels == k)
                keep = slice(None, None, 8)
                found.append(np.stack([np.full(rows[keep].size, i), rows[keep], cols[keep]], 1))
            pool = np.concatenate(found)
            if len(pool):
                self.centres.append(pool)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(size):
            if self.centres and self.rng.random() < 0.75:
                pool = self.centres[int(self.rng.integers(len(self.centres)))]
                i, r, c = (int(v) for v in pool[self.rng.integers(len(pool))])
            else:
                i = int(self.rng.integers(len(self.data)))
                h, w = self.data[i].labels.shape
                r, c = int(self.rng.integers(h)), int(self.rng.integers(w))
            x, y = self._crop(self.data[i], r, c)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    def _crop(self, s: Sample, r: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = s.labels.shape
        k = self.crop
        r0 = int(np.clip(r - k // 2 + self.rng.integers(-k // 4, k // 4 + 1), 0, max(h - k, 0)))
        c0 = int(np.clip(c - k // 2 + self.rng.integers(-k // 4, k // 4 + 1), 0, max(w - k, 0)))
        x = s.contrast[:, r0 : r0 + k, c0 : c0 + k].astype(np.float32)
        y = s.labels[r0 : r0 + k, c0 : c0 + k]
        turns = int(self.rng.integers(4))
        x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
        if self.rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        gain = self.rng.uniform(0.95, 1.05, (3, 1, 1)).astype(np.float32)
        return np.ascontiguousarray(x * gain), np.ascontiguousarray(y)


def class_weights(
    sampler: CropSampler, batches: int = 50, batch: int = 12, power: float = WEIGHT_POWER
) -> np.ndarray:
    """Cross-entropy weights ∝ (pixel frequency in the crops the sampler draws)^−``power``,
    mean 1 over the classes present."""
    counts = np.zeros(len(model.CLASSES))
    for _ in range(batches):
        counts += np.bincount(sampler.batch(batch)[1].ravel(), minlength=len(model.CLASSES))
    freq = counts / max(counts.sum(), 1)
    weights = np.where(freq > 0, np.maximum(freq, 1e-12) ** -power, 0.0)
    return (weights / weights[weights > 0].mean()).astype(np.float32)


@dataclass
class Fit:
    """What :func:`fit_loop` did: steps taken, why it stopped, the loss history."""

    steps: int
    stopped_by: str
    log: TrainLog


def fit_loop(
    net: Any,
    batches: Callable[[int], tuple[np.ndarray, np.ndarray]],
    loss_fn: Any,
    *,
    steps: int,
    batch: int,
    lr: float,
    budget_s: float,
    progress: Callable[[str], None],
) -> Fit:
    """AdamW on ``net.logits`` for ``steps`` steps or ``budget_s`` seconds, whichever ends
    first. The learning rate warms up over the first 5 % and then follows a cosine to zero in
    *progress* = max(step / steps, elapsed / budget), so the schedule completes either way:
    on a busy machine the run is shorter, never longer."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    log = TrainLog(steps, progress)
    t0 = time.monotonic()
    net.train()
    step, stopped_by = 0, "steps"
    while step < steps:
        done = max(step / steps, (time.monotonic() - t0) / max(budget_s, 1e-9))
        if done >= 1.0:
            stopped_by = "time budget"
            break
        scale = done / 0.05 if done < 0.05 else 0.5 * (1 + math.cos(math.pi * (done - 0.05) / 0.95))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.01)
        x, y = batches(batch)
        loss = loss_fn(net.logits(torch.from_numpy(x)), torch.from_numpy(y.astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.log(step, loss=loss.item())
        step += 1
    net.eval()
    return Fit(step, stopped_by, log)


def fit_and_save(
    net: Any,
    batches: Callable[[int], tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    out_dir: Path,
    name: str,
    title: str,
    *,
    steps: int,
    batch: int,
    lr: float,
    crop: int,
    budget_s: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Both detectors' training tail: :func:`fit_loop` with class-weighted cross entropy, the
    weights (``<name>.pt``) and the loss curve saved in ``out_dir``, and the metrics every
    segmentation run reports about its optimisation."""
    import torch

    fit = fit_loop(
        net,
        batches,
        torch.nn.CrossEntropyLoss(weight=torch.from_numpy(weights)),
        steps=steps,
        batch=batch,
        lr=lr,
        budget_s=budget_s,
        progress=progress,
    )
    torch.save(net.state_dict(), out_dir / f"{name}.pt")
    save_loss_curve(fit.log.history, out_dir / "loss_curve.png", title)
    return {
        "steps_planned": steps,
        "steps": fit.steps,
        "stopped_by": fit.stopped_by,
        "loop_budget_s": budget_s,
        "batch": batch,
        "crop_px": crop,
        "learning_rate": lr,
        "torch_threads": torch.get_num_threads(),
        "class_weights": [float(w) for w in weights],
        "final_loss": float(np.mean([v for _, v in fit.log.history["loss"][-50:]])),
        "train_seconds": fit.log.seconds,
    }


def pixel_report(net: Any, data: list[Sample]) -> dict[str, Any]:
    """Pixel accuracy and per-class IoU of ``net`` on whole tiles."""
    import torch

    k = len(model.CLASSES)
    confusion = np.zeros((k, k), np.int64)
    net.eval()
    with torch.inference_mode():
        for s in data:
            x = s.contrast.astype(np.float32)
            from scopeflow.inference.tiling import pad_to_multiple

            padded, (ph, pw) = pad_to_multiple(x, model.MULTIPLE)
            logits = net.logits(torch.from_numpy(np.ascontiguousarray(padded[None])))[0]
            pred = logits.argmax(0).numpy()[: padded.shape[1] - ph, : padded.shape[2] - pw]
            confusion += np.bincount(
                s.labels.ravel().astype(np.int64) * k + pred.ravel(), minlength=k * k
            ).reshape(k, k)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = {
        name: (float(tp[i] / union[i]) if union[i] else None)
        for i, name in enumerate(model.CLASSES)
    }
    return {"pixel_accuracy": float(tp.sum() / max(confusion.sum(), 1)), "iou": iou}


def train(
    out_dir: Path, seed: int = 0, quick: bool = False, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train, write ``flake_detector.pt``, ``loss_curve.png`` and ``metrics.json`` to
    ``out_dir``; return the metrics. ``quick``: a smoke run of a few seconds on small tiles."""

    seed_everything(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]  # the machine is shared: timings depend on it
    specs = train_specs(quick)
    progress(
        f"rendering {sum(s.tiles for s in specs)} training tiles "
        f"(oxides {sorted({s.oxide_nm for s in specs})} nm)"
    )
    data = [s for _, _, s in samples(specs)]
    val = [s for _, _, s in samples(validation_specs(quick))]
    data_s = time.monotonic() - t0
    progress(f"  {len(data)} tiles in {data_s:.0f} s; training")

    steps, batch, lr = (4, 2, 3e-3) if quick else (STEPS, BATCH, 3e-3)
    crop = 32 if quick else CROP
    rng = np.random.default_rng([seed, 0xF1A])
    sampler = CropSampler(data, rng, crop)
    net = model.build()
    budget = LOOP_BUDGET_S - data_s  # the whole run stays within the 15 minutes
    fitted = fit_and_save(
        net,
        sampler.batch,
        class_weights(sampler),
        out_dir,
        model.NAME,
        "flake detector: cross entropy",
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
        "train_tiles": len(data),
        "train_oxides_nm": sorted({s.oxide_nm for s in specs}),
        "heldout_oxide_nm": HELDOUT_OXIDE_NM,
        "chip_seeds": [s.seed for s in specs],
        "validation": report,
        "data_seconds": data_s,
        "total_seconds": time.monotonic() - t0,
        "load_average_1min_at_start": load_start,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    write_json(out_dir / "metrics.json", metrics)
    progress(
        f"  validation pixel accuracy {report['pixel_accuracy']:.4f}; "
        f"{metrics['total_seconds']:.0f} s in all"
    )
    return metrics
