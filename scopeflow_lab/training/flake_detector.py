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
from scopeflow.inference.models import flake_physics
from scopeflow_lab.sim.optical import (
    CameraConfig,
    ChipConfig,
    FlakeChipSource,
    OpticalConfig,
    SpectralModel,
)
from scopeflow_lab.sim.truth import AnnotatedImage
from scopeflow_lab.training.common import TrainLog, save_loss_curve, seed_everything, write_json

#: Oxide thicknesses trained on: the common chip oxides, each ± :data:`OXIDE_JITTER_NM` (a
#: wafer's thickness tolerance). Not a continuous range: the network sees the contrast against
#: the substrate, not the oxide, and over a continuous range one contrast means different
#: classes on different oxides (a first run trained on 85–315 nm confused bulk graphene, bulk
#: TMDs and hBN: 1L graphene validation IoU 0.20). Other oxides are what calibration is for.
TRAIN_OXIDES_NM = (90.0, 100.0, 270.0, 285.0)
OXIDE_JITTER_NM = 5.0
#: Oxide bands never trained on (the held-out conditions, with :data:`HELDOUT_LED`).
HELDOUT_OXIDE_BANDS_NM = ((235.0, 255.0), (295.0, 305.0))
HELDOUT_OXIDE_NM = 300.0  # the held-out oxide the model card has always reported
#: A warm white LED never trained on (training LEDs: blue 440–455 nm, phosphor 540–575 nm,
#: ratio 1.0–2.2).
HELDOUT_LED = SpectralModel(
    illuminant="led", led_blue_nm=460.0, led_phosphor_nm=590.0, led_phosphor_ratio=3.0
)
DEFAULT_SPECTRUM = SpectralModel()  # a 3200 K halogen lamp, the default camera bands
TRAIN_SEED = 100  # chip seeds of the training data start here …
VALIDATION_SEED = 5_000  # … validation chips here …
TEST_SEED = 9_000  # … and the held-out test chips here.
IGNORE = 255  # label of what no one could see: invisible films (|contrast| < 0.02), hBN < 3 nm
VISIBLE_CONTRAST = 0.02
#: Training chips: more thin flakes than the default chip (same shapes, sizes and decoys), all
#: four materials.
TRAIN_CHIP = ChipConfig(
    materials=("graphene", "hBN", "MoS2", "WSe2"),
    material_weights=(0.45, 0.2, 0.175, 0.175),
    few_layer_weights=(0.30, 0.20, 0.15, 0.06, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02),
    bulk_weight=0.30,
)
#: The default chip's mix with TMDs added, for test chips.
TEST_CHIP = ChipConfig(
    materials=("graphene", "hBN", "MoS2", "WSe2"), material_weights=(0.4, 0.3, 0.15, 0.15)
)
# Many small crops rather than a few large ones: 48 crops of 64² (37 µm) show ~4× as many
# objects per step as 12 of 128², and colour classes converge several times faster.
CROP = 64  # training crop, network pixels per side
BATCH = 48
# Class weights ∝ frequency^−power. Balanced (1) rather than √: blurred edges make the colours
# of neighbouring layer counts overlap, and a class prior tilted towards the commoner class
# moves the 2L/3L boundary onto 2L.
WEIGHT_POWER = 1.0
STEPS = 5000  # planned; LOOP_BUDGET_S may end the run first on a busy machine
LOOP_BUDGET_S = 1500.0  # data + optimisation: 25 minutes (export and report after)
#: Objectives drawn for training chips: (magnification, NA, weight); the network sees every
#: one at about the same pixel (:func:`flake_model.downsample_factor`).
TRAIN_OBJECTIVES = ((20.0, 0.40, 0.7), (10.0, 0.25, 0.15), (50.0, 0.55, 0.15))


def sensor_colour_matrix(saturation: float) -> tuple[float, ...]:
    """A camera colour-correction matrix (I + s·(I − 1·wᵀ), w the luminance weights): rows
    sum to 1 (grey stays grey), off-diagonals negative, as real sensors' matrices are; the
    physics prior spans the same family (:func:`flake_physics.colour_matrix`)."""
    return tuple(float(v) for v in flake_physics.colour_matrix(saturation).ravel())


@dataclass(frozen=True)
class ChipSpec:
    """One simulated chip and the microscope that images it: oxide, seed, how many tiles,
    illuminant and camera bands (``spectrum``), the camera's colour pipeline (white balance,
    bit depth, Bayer mosaic, colour matrix, vignetting, exposure level) and the objective."""

    oxide_nm: float
    seed: int
    tiles: int
    white_balance: str | None = "mirror"
    bit_depth: int = 8
    shape: tuple[int, int] = (1200, 1920)
    chip: ChipConfig = TRAIN_CHIP
    spectrum: SpectralModel = DEFAULT_SPECTRUM
    bayer: bool = False
    colour_matrix: tuple[float, ...] | None = None
    vignetting_corner: float = 0.8
    auto_level: float = 0.4
    magnification: float = 20.0
    numerical_aperture: float = 0.40

    def config(self) -> OpticalConfig:
        camera = CameraConfig(
            shape=self.shape,
            white_balance=self.white_balance,
            bit_depth=self.bit_depth,
            bayer=self.bayer,
            colour_matrix=self.colour_matrix,
            vignetting_corner=self.vignetting_corner,
            auto_level=self.auto_level,
        )
        chip = dataclasses.replace(self.chip, oxide_nm=self.oxide_nm)
        return OpticalConfig(
            chip=chip,
            camera=camera,
            spectrum=self.spectrum,
            magnification=self.magnification,
            numerical_aperture=self.numerical_aperture,
        )

    def source(self) -> FlakeChipSource:
        return FlakeChipSource(self.config(), seed=self.seed)

    @property
    def factor(self) -> int:
        """How far the detector averages this chip's tiles down (from the pixel size)."""
        return model.downsample_factor(self.config().pixel_um * 1e3)

    def describe(self) -> dict[str, Any]:
        """The condition, JSON-ready (for metrics and reports)."""
        sp = self.spectrum
        return {
            "oxide_nm": round(self.oxide_nm, 1),
            "illuminant": sp.illuminant
            if sp.illuminant == "halogen"
            else f"led {sp.led_blue_nm:g}/{sp.led_phosphor_nm:g}/{sp.led_phosphor_ratio:g}",
            "bayer": self.bayer,
            "colour_matrix": self.colour_matrix is not None,
            "white_balance": self.white_balance,
            "magnification": self.magnification,
        }


def heldout_oxide(oxide_nm: float) -> bool:
    """Whether ``oxide_nm`` lies in a held-out band."""
    return any(lo <= oxide_nm <= hi for lo, hi in HELDOUT_OXIDE_BANDS_NM)


def random_spec(
    rng: np.random.Generator,
    seed: int,
    tiles: int,
    *,
    oxide_nm: float | None = None,
    spectrum: SpectralModel | None = None,
    chip: ChipConfig = TRAIN_CHIP,
    shape: tuple[int, int] = (1200, 1920),
    objective: tuple[float, float] | None = None,
) -> ChipSpec:
    """A chip under conditions drawn as real setups vary: oxide (a training oxide ± 5 nm
    unless given), halogen lamp 2700–3600 K or a white LED of varied phosphor, camera bands
    ±10–12 nm and 60–110 nm wide, Bayer or not, a colour matrix or none, white balance by
    lamp preset, on the substrate or none, vignetting to 0.55 at the corners, exposure level
    0.25–0.6 of the range, 8- or 16-bit, and an objective from :data:`TRAIN_OBJECTIVES`."""
    if oxide_nm is None:
        oxide_nm = float(TRAIN_OXIDES_NM[int(rng.integers(len(TRAIN_OXIDES_NM)))])
        oxide_nm += float(rng.uniform(-OXIDE_JITTER_NM, OXIDE_JITTER_NM))
    if spectrum is None:
        bands = (
            (
                610.0 + float(rng.uniform(-12, 12)),
                540.0 + float(rng.uniform(-10, 10)),
                465.0 + float(rng.uniform(-10, 10)),
            ),
            tuple(float(rng.uniform(60, 110)) for _ in range(3)),
        )
        if rng.random() < 0.5:
            spectrum = SpectralModel("halogen", float(rng.uniform(2700, 3600)), bands[0], bands[1])
        else:
            spectrum = SpectralModel(
                "led",
                band_centres_nm=bands[0],
                band_fwhm_nm=bands[1],
                led_blue_nm=float(rng.uniform(440, 455)),
                led_phosphor_nm=float(rng.uniform(540, 575)),
                led_phosphor_ratio=float(rng.uniform(1.0, 2.2)),
            )
    if objective is None:
        weights = np.array([w for _, _, w in TRAIN_OBJECTIVES])
        mag, na, _ = TRAIN_OBJECTIVES[int(rng.choice(len(weights), p=weights / weights.sum()))]
    else:
        mag, na = objective
    wb = ("mirror", "substrate", None)[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    return ChipSpec(
        oxide_nm,
        seed,
        tiles,
        white_balance=wb,
        bit_depth=16 if rng.random() < 1 / 6 else 8,
        shape=shape,
        chip=chip,
        spectrum=spectrum,
        bayer=bool(rng.random() < 0.5),
        colour_matrix=None
        if rng.random() < 0.5
        else sensor_colour_matrix(float(rng.uniform(0.2, 1.0))),
        vignetting_corner=float(rng.uniform(0.55, 1.0)),
        auto_level=float(rng.uniform(0.25, 0.6)),
        magnification=mag,
        numerical_aperture=na,
    )


def class_of(attributes: dict[str, Any]) -> int:
    """Class index of a truth object (graphene and the TMDs by layers, hBN by thickness,
    residue, dirt), or :data:`IGNORE` for a film no one could see (every channel's contrast
    within :data:`VISIBLE_CONTRAST`, or hBN under 3 nm)."""
    material = attributes["material"]
    if material == "dirt":
        return model.CLASSES.index("dirt")
    contrast = attributes.get("expected_contrast_rgb")
    if contrast is not None and max(abs(float(c)) for c in contrast) < VISIBLE_CONTRAST:
        return IGNORE
    if material == "residue":
        return model.CLASSES.index("residue")
    if material == "hBN":
        nm = float(attributes["thickness_nm"])
        for name, (lo, hi) in model.HBN_CLASSES_NM.items():
            if nm >= lo and (hi is None or nm < hi):
                return model.CLASSES.index(name)
        return IGNORE
    layers = int(attributes["layers"])
    if material == "graphene":
        return model.CLASSES.index("graphene_thick" if layers >= 4 else f"graphene_{layers}L")
    return model.CLASSES.index(f"{material}_thick" if layers >= 3 else f"{material}_{layers}L")


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
            factor = spec.factor
            contrast = model.flake_contrast(image.image, factor=factor).astype(np.float16)
            yield spec, image, Sample(contrast, label_map(image, factor))


def train_specs(quick: bool) -> list[ChipSpec]:
    """The training chips: 60 chips of 5 tiles, each under its own drawn conditions."""
    if quick:
        return [
            ChipSpec(285.0, TRAIN_SEED, 2, shape=(256, 384)),
            ChipSpec(90.0, TRAIN_SEED + 1, 2, shape=(256, 384)),
        ]
    rng = np.random.default_rng([TRAIN_SEED, 0xC0DE])
    return [random_spec(rng, TRAIN_SEED + i, 5) for i in range(60)]


def validation_specs(quick: bool) -> list[ChipSpec]:
    if quick:
        return [ChipSpec(285.0, VALIDATION_SEED, 1, shape=(256, 384))]
    rng = np.random.default_rng([VALIDATION_SEED, 0xC0DE])
    return [random_spec(rng, VALIDATION_SEED + i, 3) for i in range(10)]


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
        labels = sampler.batch(batch)[1].ravel()
        counts += np.bincount(labels[labels != IGNORE], minlength=len(model.CLASSES))
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
        torch.nn.CrossEntropyLoss(weight=torch.from_numpy(weights), ignore_index=IGNORE),
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
            seen = s.labels.ravel() != IGNORE
            truth = s.labels.ravel()[seen].astype(np.int64)
            confusion += np.bincount(truth * k + pred.ravel()[seen], minlength=k * k).reshape(k, k)
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
        f"({len(specs)} chips, oxides {min(s.oxide_nm for s in specs):.0f}–"
        f"{max(s.oxide_nm for s in specs):.0f} nm)"
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
        "train_oxides_nm": list(TRAIN_OXIDES_NM),
        "oxide_jitter_nm": OXIDE_JITTER_NM,
        "heldout_oxide_bands_nm": [list(b) for b in HELDOUT_OXIDE_BANDS_NM],
        "heldout_led": dataclasses.asdict(HELDOUT_LED),
        "train_conditions": [s.describe() for s in specs],
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
