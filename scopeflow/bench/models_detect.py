"""Detection benchmark: the flake and particle detectors on held-out simulated data, beside
their classical baselines run in the same process on the same frames.

**Matching** (both detectors): predicted and true masks at full resolution, one-to-one, greedy
by IoU (highest first), a pair counting when IoU ≥ 0.5 and the classes agree. A true flake
instance is the union of one flake's regions that fall in the same class (:func:`flake_truths`).
True objects smaller than a size floor (:data:`FLAKE_MIN_TRUTH_PX`,
:data:`PARTICLE_MIN_TRUTH_PX`: slivers cut by the frame edge, specks below what either method
resolves) are *ignored*: not counted as missed, and a detection matching one is not counted as
false. The rule is the same for the models and the baselines and was fixed before any result
was seen.

**Flakes.** Held-out chips (seeds from ``TEST_SEED``, the default chip: its own mix of
materials and thicknesses) on the training oxides 285 and 90 nm, and on 300 nm oxide, which no
training tile had (``heldout_substrate``). Per class precision / recall / F1; ``f1``: all four
graphene classes pooled (micro-average); ``layer_accuracy``: over graphene flakes matched
class-agnostically (any graphene prediction to any graphene truth), the share whose layer class
(1, 2, 3, thick) is right. ``megapixels_per_s``: end-to-end :meth:`FlakeDetector.detect` on
ONNX Runtime for full 1920×1200 tiles (preprocessing, network, instances, RLE), median.

**Flake baseline: contrast-GMM** (after 2DMatGMM, Uslu et al. 2024). Per-pixel contrast
against the background colour — the same fitted substrate and the same 2× averaging as the
detector, so both see identical inputs — then one scikit-learn ``GaussianMixture`` per class
(background included) fitted on the training tiles' contrast vectors (eroded truth masks).
Pixels are classified by posterior (class likelihood × training prior); a pixel whose best
flake class has a log-likelihood below a rejection threshold is background. Connected
components and the size/score floors are the detector's own. Rejection threshold, pre-smoothing
and size floor are tuned on training tiles for the best pooled graphene F1: a fair setup.

**Particles.** Held-out videos (seeds from ``TEST_SEED`` of the particle trainer; the default
cell, 1024², at 500–5000 e⁻/px), and a held-out material (``heldout``): particles with a
mean free path of 100 nm, lighter than any in training (20–80 nm), so about half the contrast.
**Otsu baseline**: the detector's own background
normalisation, Gaussian smoothing, ``cv2.threshold`` with ``THRESH_OTSU`` (particles are dark),
connected components, a size floor; smoothing and size floor tuned on training scenes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from scopeflow.acquisition.insitu import InSituConfig
from scopeflow.bench.timing import median_ms
from scopeflow.inference import backends
from scopeflow.inference.models import flake_detector as flake_model
from scopeflow.inference.models import particle_detector as particle_model
from scopeflow.inference.tiling import pad_to_multiple
from scopeflow.schemas.results import Detection
from scopeflow.training import flake_detector as flake_training
from scopeflow.training import particle_detector as particle_training

IOU = 0.5
FLAKE_MIN_TRUTH_PX = 100  # ≈ 8.6 µm² at 20×: below the flakes anyone would pick up
PARTICLE_MIN_TRUTH_PX = 20  # ≈ 5 nm² at 0.5 nm/px: edge slivers
HELDOUT_LAMBDA_NM = 100.0  # held-out particle material: lighter than training's 20–80 nm
# Evaluated: graphene 1L/2L/3L/thick and hBN (decoys are not reported).
FLAKE_CLASSES = tuple(c for c in flake_model.CLASSES[1:] if c not in flake_model.DECOYS)
GRAPHENE = tuple(c for c in FLAKE_CLASSES if c.startswith("graphene"))


# -- matching -------------------------------------------------------------------------------
@dataclass
class Truth:
    """A true object: class name, COCO RLE (bytes counts), area, whether it is ignored."""

    name: str
    rle: dict
    area: int
    ignored: bool


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def report(self) -> dict[str, float | int]:
        p = self.tp / max(self.tp + self.fp, 1)
        r = self.tp / max(self.tp + self.fn, 1)
        f1 = 2 * p * r / max(p + r, 1e-12)
        return {
            "precision": p,
            "recall": r,
            "f1": f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "truths": self.tp + self.fn,
        }


def encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def rle_of(det: Detection) -> dict:
    assert det.mask is not None
    return {"size": list(det.mask.size), "counts": det.mask.counts.encode("ascii")}


def ious(preds: list[dict], truths: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if not preds or not truths:
        return np.zeros((len(preds), len(truths)))
    return np.asarray(mask_utils.iou(preds, truths, [0] * len(truths)), float)


def greedy_match(iou: np.ndarray, threshold: float = IOU) -> list[tuple[int, int]]:
    """One-to-one pairs (pred, truth) with IoU ≥ threshold, highest IoU first."""
    if iou.size == 0:
        return []
    order = np.argsort(-iou, axis=None, kind="stable")
    used_p, used_t, pairs = set(), set(), []
    for flat in order:
        p, t = divmod(int(flat), iou.shape[1])
        if iou[p, t] < threshold:
            break
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        pairs.append((p, t))
    return pairs


def count(pred_rles: list[dict], truths: list[Truth]) -> tuple[Counts, list[tuple[int, int]]]:
    """TP/FP/FN of one class in one frame; ignored truths neither count as missed nor make
    the predictions that match them false."""
    iou = ious(pred_rles, [t.rle for t in truths])
    valid = np.array([not t.ignored for t in truths], bool)
    valid_idx = np.flatnonzero(valid)
    pairs = [
        (p, int(valid_idx[t])) for p, t in greedy_match(iou[:, valid] if len(truths) else iou, IOU)
    ]
    matched = {p for p, _ in pairs}
    fp = 0
    for p in range(len(pred_rles)):
        if p in matched:
            continue
        if (~valid).any() and iou[p, ~valid].max() >= IOU:
            continue  # it found an ignored object
        fp += 1
    return Counts(len(pairs), fp, int(valid.sum()) - len(pairs)), pairs


# -- flakes ---------------------------------------------------------------------------------
def flake_truths(image: Any) -> list[Truth]:
    """The tile's flakes as instances of the detector's classes: the parts of one flake that
    share a class are one instance (a bulk flake with a bulk terrace is one thick flake, as
    the class scheme sees it; a 3L flake with a 1L terrace is two). Decoys are left out: the
    detector does not report them."""
    masks: dict[tuple[int, str], np.ndarray] = {}
    for obj in image.objects:
        name = flake_model.CLASSES[flake_training.class_of(obj.attributes)]
        if name in flake_model.DECOYS:
            continue
        key = (int(obj.attributes["flake_id"]), name)
        masks[key] = masks[key] | obj.mask if key in masks else obj.mask
    found = []
    for (_, name), mask in masks.items():
        area = int(mask.sum())
        found.append(Truth(name, encode(mask), area, area < FLAKE_MIN_TRUTH_PX))
    return found


@dataclass
class FlakeScore:
    """Running counts per class, graphene layer accuracy."""

    per_class: dict[str, Counts]
    layer_right: int = 0
    layer_total: int = 0

    @classmethod
    def empty(cls) -> FlakeScore:
        return cls({name: Counts() for name in FLAKE_CLASSES})

    def add(self, dets: list[Detection], truths: list[Truth]) -> None:
        classes = [str(d.attributes["class"]) for d in dets]
        rles = [rle_of(d) for d in dets]
        for name in FLAKE_CLASSES:
            idx = [i for i, c in enumerate(classes) if c == name]
            c, _ = count([rles[i] for i in idx], [t for t in truths if t.name == name])
            self.per_class[name].add(c)
        g_pred = [i for i, c in enumerate(classes) if c in GRAPHENE]
        g_truth = [t for t in truths if t.name in GRAPHENE and not t.ignored]
        iou = ious([rles[i] for i in g_pred], [t.rle for t in g_truth])
        for p, t in greedy_match(iou):
            self.layer_total += 1
            self.layer_right += int(classes[g_pred[p]] == g_truth[t].name)

    def report(self) -> dict[str, Any]:
        pooled = Counts()
        for name in GRAPHENE:
            pooled.add(self.per_class[name])
        out: dict[str, Any] = {name: self.per_class[name].report() for name in FLAKE_CLASSES}
        out["layer_accuracy"] = self.layer_right / max(self.layer_total, 1)
        out["layer_matched"] = self.layer_total
        out["f1"] = pooled.report()["f1"]
        out["graphene_pooled"] = pooled.report()
        return out


class ContrastGMM:
    """The 2DMatGMM-style baseline: per-class Gaussian mixtures on contrast vectors."""

    name = "contrast-gmm"
    COMPONENTS: ClassVar[dict[str, int]] = {
        "background": 2,
        "graphene_1L": 2,
        "graphene_2L": 2,
        "graphene_3L": 2,
        "graphene_thick": 6,
        "hBN": 6,
        "residue": 4,
        "dirt": 4,
    }
    PIXELS_PER_CLASS = 20_000
    BACKGROUND_BAND = 0.02  # |contrast| below this in every channel: background (2.5 σ noise)

    def __init__(self) -> None:
        self.models: list[Any] = []
        self.log_prior = np.zeros(len(flake_model.CLASSES))
        self.reject = -math.inf
        self.smooth = 1
        self.min_area = flake_model.MIN_AREA_PX

    def fit(self, data: list[flake_training.Sample], rng: np.random.Generator) -> None:
        """One mixture per class on contrast vectors inside eroded truth masks."""
        from sklearn.mixture import GaussianMixture

        kernel = np.ones((3, 3), np.uint8)
        pools: list[list[np.ndarray]] = [[] for _ in flake_model.CLASSES]
        counts = np.zeros(len(flake_model.CLASSES))
        for s in data:
            c = s.contrast.astype(np.float32).reshape(3, -1).T
            for k in range(len(flake_model.CLASSES)):
                mask = cv2.erode((s.labels == k).view(np.uint8), kernel).ravel().astype(bool)
                counts[k] += (s.labels == k).sum()
                if mask.any():
                    pools[k].append(c[mask])
        self.models = []
        for k, name in enumerate(flake_model.CLASSES):
            if sum(len(p) for p in pools[k]) < 10 * self.COMPONENTS[name]:
                self.models.append(None)  # a class the training tiles lack: never predicted
                continue
            x = np.concatenate(pools[k])
            if len(x) > self.PIXELS_PER_CLASS:
                x = x[rng.choice(len(x), self.PIXELS_PER_CLASS, replace=False)]
            gmm = GaussianMixture(
                self.COMPONENTS[name], covariance_type="full", reg_covar=1e-5, random_state=0
            ).fit(x)
            self.models.append(gmm)
        self.log_prior = np.log(np.maximum(counts / counts.sum(), 1e-9))

    def log_likelihoods(self, contrast: np.ndarray, smooth: int) -> np.ndarray:
        """(K, h, w) log-likelihood of every pixel under every class. As in 2DMatGMM, pixels
        within :data:`BACKGROUND_BAND` of the background colour in every channel are
        background outright (and are not scored: most of a tile is bare substrate)."""
        c = contrast.transpose(1, 2, 0).astype(np.float32)
        if smooth > 1:
            c = cv2.blur(c, (smooth, smooth))
        h, w = c.shape[:2]
        flat = np.clip(c.reshape(-1, 3), *flake_model.CONTRAST_CLIP)
        scored = np.flatnonzero(np.abs(flat).max(axis=1) >= self.BACKGROUND_BAND)
        out = np.full((len(self.models), h * w), -1e9)
        out[0] = 0.0
        for k, m in enumerate(self.models):
            if m is not None and scored.size:
                out[k, scored] = m.score_samples(flat[scored])
        return out.reshape(len(self.models), h, w)

    def probabilities(self, loglik: np.ndarray, reject: float) -> np.ndarray:
        """Posteriors (K, h, w); pixels whose best flake class is below ``reject`` go to
        the background."""
        z = loglik + self.log_prior[:, None, None]
        z = z - z.max(axis=0, keepdims=True)
        post = np.exp(z)
        post /= post.sum(axis=0, keepdims=True)
        rejected = loglik[1:].max(axis=0) < reject
        post[:, rejected] = 0.0
        post[0, rejected] = 1.0
        return post

    def detect_from(
        self, loglik: np.ndarray, shape: tuple[int, int], reject: float, min_area: int
    ) -> list[Detection]:
        probs = self.probabilities(loglik, reject)
        return instances(probs, shape, min_area)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        contrast = flake_model.flake_contrast(frame)
        loglik = self.log_likelihoods(contrast, self.smooth)
        return self.detect_from(loglik, frame.shape[:2], self.reject, self.min_area)

    def tune(self, tiles: list[tuple[np.ndarray, Any]], progress: Callable[[str], None]) -> None:
        """Pick smoothing, rejection threshold and size floor for the best pooled graphene F1
        on training tiles."""
        best = (-1.0, 1, -math.inf, flake_model.MIN_AREA_PX)
        truths = [flake_truths(image) for _, image in tiles]
        for smooth in (1, 3):
            logliks = [self.log_likelihoods(contrast, smooth) for contrast, _ in tiles]
            for reject in (-math.inf, -5.0, 0.0, 3.0):
                for min_area in (flake_model.MIN_AREA_PX, 3 * flake_model.MIN_AREA_PX):
                    score = FlakeScore.empty()
                    for loglik, (_, image), truth in zip(logliks, tiles, truths, strict=True):
                        score.add(
                            self.detect_from(loglik, image.image.shape[:2], reject, min_area), truth
                        )
                    f1 = score.report()["f1"]
                    if f1 > best[0]:
                        best = (f1, smooth, reject, min_area)
        _, self.smooth, self.reject, self.min_area = best
        progress(
            f"    gmm tuned on {len(tiles)} training tiles: smoothing {self.smooth}, "
            f"reject {self.reject}, min area {self.min_area} px (graphene F1 {best[0]:.3f})"
        )

    def setup(self) -> dict[str, Any]:
        return {
            "components_per_class": self.COMPONENTS,
            "smoothing_px": self.smooth,
            "reject_log_likelihood": (None if self.reject == -math.inf else self.reject),
            "min_area_px": self.min_area,
            "priors": "training pixel frequencies",
            "fitted_on": "training tiles' contrast vectors (eroded truth masks)",
        }


def instances(probs: np.ndarray, shape: tuple[int, int], min_area: int) -> list[Detection]:
    """Detections from a probability map at network resolution, exactly as the detector
    builds them (argmax, components per class, size and score floors)."""
    class_map = probs.argmax(axis=0).astype(np.uint8)
    wanted = tuple(flake_model.CLASSES.index(c) for c in FLAKE_CLASSES)
    found = []
    for comp in flake_model.components(probs, class_map, wanted, min_area, flake_model.MIN_SCORE):
        name = flake_model.CLASSES[comp.class_index]
        mask, r0, c0 = flake_model.upsample_component(comp, flake_model.DOWNSAMPLE, shape)
        if mask.any():
            found.append(
                flake_model.detection_from_mask(
                    mask, r0, c0, shape, name, comp.score, {"class": name}
                )
            )
    return found


def _test_specs(
    oxide_nm: float, chips: int, tiles: int, shape: tuple[int, int] = (1200, 1920)
) -> list[flake_training.ChipSpec]:
    from scopeflow.acquisition.optical import ChipConfig

    base = flake_training.TEST_SEED + int(oxide_nm) * 10
    return [
        flake_training.ChipSpec(oxide_nm, base + i, tiles, shape=shape, chip=ChipConfig())
        for i in range(chips)
    ]


def _backend_times(
    name: str, inputs: dict[str, np.ndarray], repeats: int, weights_dir: Path | None
) -> dict[str, float]:
    """The network alone on one input: ONNX Runtime vs torch eager (same threads)."""
    import torch

    threads = os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ort = backends.load(name, "onnxruntime", weights_dir)
        ref = backends.load(name, "torch", weights_dir)
        diff = max(
            float(np.abs(ort.run(inputs)[k] - ref.run(inputs)[k]).max()) for k in ort.output_names
        )
        ort_s = median_ms(lambda: ort.run(inputs), repeats) / 1e3
        torch_s = median_ms(lambda: ref.run(inputs), repeats) / 1e3
    finally:
        torch.set_num_threads(before)
    return {
        "input_shape": list(next(iter(inputs.values())).shape),
        "threads": threads,
        "onnxruntime_ms": ort_s * 1e3,
        "torch_ms": torch_s * 1e3,
        "onnxruntime_speedup": torch_s / ort_s,
        "max_abs_diff": diff,
    }


def _evaluate_flakes(
    detector: Any,
    gmm: ContrastGMM,
    specs: list[flake_training.ChipSpec],
    progress: Callable[[str], None],
    label: str,
) -> tuple[dict, dict]:
    ours, theirs = FlakeScore.empty(), FlakeScore.empty()
    n = 0
    for _, image, _ in flake_training.samples(specs):
        truths = flake_truths(image)
        ours.add(detector.detect(image.image), truths)
        theirs.add(gmm.detect(image.image), truths)
        n += 1
    progress(
        f"    {label}: {n} tiles; graphene 1L P/R "
        f"{ours.per_class['graphene_1L'].report()['precision']:.3f}/"
        f"{ours.per_class['graphene_1L'].report()['recall']:.3f} "
        f"(gmm {theirs.per_class['graphene_1L'].report()['precision']:.3f}/"
        f"{theirs.per_class['graphene_1L'].report()['recall']:.3f})"
    )
    return ours.report(), theirs.report()


def flake_section(
    quick: bool = False, progress: Callable[[str], None] = print, weights_dir: Path | None = None
) -> dict[str, Any]:
    """The ``flake_detector`` section of the models benchmark."""
    rng = np.random.default_rng(0)
    detector = flake_model.FlakeDetector(
        backends.load(flake_model.NAME, "onnxruntime", weights_dir)
    )
    progress("  flake detector: fitting the contrast-GMM baseline on training tiles")
    train_specs = flake_training.train_specs(quick)
    fit_specs = train_specs if quick else train_specs[::3]  # 8 chips, every oxide
    gmm = ContrastGMM()
    gmm.fit([s for _, _, s in flake_training.samples(fit_specs)], rng)
    tune_specs = (
        train_specs
        if quick
        else [
            flake_training.ChipSpec(s.oxide_nm, s.seed, 3, s.white_balance, s.bit_depth)
            for s in train_specs[1::3]
        ]
    )
    gmm.tune(
        [
            (s.contrast.astype(np.float32), image)
            for _, image, s in flake_training.samples(tune_specs)
        ],
        progress,
    )

    small = (256, 384)
    chips, tiles = (1, 2) if quick else (4, 25)
    shape = small if quick else (1200, 1920)
    main_specs = _test_specs(285.0, chips, tiles, shape) + _test_specs(90.0, chips, tiles, shape)
    held_specs = _test_specs(flake_training.HELDOUT_OXIDE_NM, chips, tiles, shape)
    ours, theirs = _evaluate_flakes(detector, gmm, main_specs, progress, "285 + 90 nm")
    held_ours, held_theirs = _evaluate_flakes(
        detector, gmm, held_specs, progress, f"{flake_training.HELDOUT_OXIDE_NM:g} nm"
    )

    # Throughput on full tiles, end to end, ONNX Runtime.
    frames = [
        im.image for _, im, _ in flake_training.samples(_test_specs(285.0, 1, 2 if quick else 4))
    ]
    per_tile = (
        float(
            np.median(
                [median_ms(lambda f=f: detector.detect(f), 1 if quick else 3) for f in frames]
            )
        )
        / 1e3
    )
    mpx = frames[0].shape[0] * frames[0].shape[1] / 1e6
    gmm_s = median_ms(lambda: gmm.detect(frames[0]), 1 if quick else 3) / 1e3
    padded, _ = pad_to_multiple(flake_model.flake_contrast(frames[0]), flake_model.MULTIPLE)
    net_input = {"contrast": np.ascontiguousarray(padded[None])}
    speed = _backend_times(flake_model.NAME, net_input, 2 if quick else 10, weights_dir)
    out = {
        "graphene_1L": ours["graphene_1L"],
        "layer_accuracy": ours["layer_accuracy"],
        "megapixels_per_s": mpx / per_tile,
        "f1": ours["f1"],
        "per_class": ours,
        "tile_ms": per_tile * 1e3,
        "tile_shape": list(frames[0].shape),
        "network": speed,
        "baseline": {
            "name": gmm.name,
            "graphene_1L": theirs["graphene_1L"],
            "layer_accuracy": theirs["layer_accuracy"],
            "f1": theirs["f1"],
            "per_class": theirs,
            "megapixels_per_s": mpx / gmm_s,
            "setup": gmm.setup(),
        },
        "heldout_substrate": {
            "oxide_nm": flake_training.HELDOUT_OXIDE_NM,
            "graphene_1L": held_ours["graphene_1L"],
            "layer_accuracy": held_ours["layer_accuracy"],
            "f1": held_ours["f1"],
            "per_class": held_ours,
            "baseline": {
                "name": gmm.name,
                "graphene_1L": held_theirs["graphene_1L"],
                "layer_accuracy": held_theirs["layer_accuracy"],
                "f1": held_theirs["f1"],
            },
        },
        "test_set": {
            "oxides_nm": [285.0, 90.0],
            "tiles": len(main_specs) * tiles,
            "heldout_tiles": len(held_specs) * tiles,
            "chip_seeds": [s.seed for s in main_specs + held_specs],
            "tile_shape": list(shape),
            "min_truth_area_px": FLAKE_MIN_TRUTH_PX,
            "iou": IOU,
        },
    }
    return out


# -- particles ------------------------------------------------------------------------------
class OtsuParticles:
    """Otsu threshold of the smoothed transmission contrast + connected components."""

    name = "otsu"

    def __init__(self, sigma_px: float = 1.5, min_area: int = particle_model.MIN_AREA_PX) -> None:
        self.sigma_px = sigma_px
        self.min_area = min_area

    def detect(self, frame: np.ndarray) -> list[Detection]:
        contrast = particle_model.insitu_contrast(frame)[0]
        smooth = cv2.GaussianBlur(contrast, (0, 0), self.sigma_px)
        lo, hi = np.percentile(smooth, (0.1, 99.9))
        scaled = np.clip((smooth - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
        _, binary = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        found = []
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < self.min_area:
                continue
            mask = labels[y : y + h, x : x + w] == i
            found.append(
                flake_model.detection_from_mask(mask, y, x, frame.shape[:2], "particle", 1.0, {})
            )
        return found

    def tune(
        self, frames: list[tuple[np.ndarray, list[Truth]]], progress: Callable[[str], None]
    ) -> None:
        best = (-1.0, self.sigma_px, self.min_area)
        for sigma in (1.0, 1.5, 2.0, 3.0):
            for min_area in (8, 20, 40):
                self.sigma_px, self.min_area = sigma, min_area
                total = Counts()
                for frame, truths in frames:
                    total.add(count([rle_of(d) for d in self.detect(frame)], truths)[0])
                f1 = total.report()["f1"]
                if f1 > best[0]:
                    best = (f1, sigma, min_area)
        _, self.sigma_px, self.min_area = best
        progress(
            f"    otsu tuned on {len(frames)} training frames: σ {self.sigma_px} px, "
            f"min area {self.min_area} px (F1 {best[0]:.3f})"
        )


def particle_truths(image: Any) -> list[Truth]:
    found = []
    for obj in image.objects:
        if obj.category != "particle":
            continue
        area = int(obj.mask.sum())
        found.append(Truth("particle", encode(obj.mask), area, area < PARTICLE_MIN_TRUTH_PX))
    return found


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
        (im.image, particle_truths(im))
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
        "network": _backend_times(particle_model.NAME, net_input, 2 if quick else 10, weights_dir),
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


def run(
    quick: bool = False, progress: Callable[[str], None] = print, weights_dir: Path | None = None
) -> dict[str, Any]:
    """``flake_detector`` and ``particle_detector`` sections of ``scopeflow bench models``."""
    return {
        "flake_detector": flake_section(quick, progress, weights_dir),
        "particle_detector": particle_section(quick, progress, weights_dir),
    }
