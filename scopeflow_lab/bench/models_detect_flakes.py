"""The flake detector section of the detection benchmark (:mod:`scopeflow_lab.bench.models_detect`):
flake truths and scoring, the contrast-GMM baseline, and the held-out chip evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from scopeflow.inference import backends
from scopeflow.inference.models import flake_detector as flake_model
from scopeflow.inference.tiling import pad_to_multiple
from scopeflow.schemas.results import Detection
from scopeflow_lab.bench.models_detect_common import backend_times
from scopeflow_lab.bench.timing import median_ms
from scopeflow_lab.training import flake_detector as flake_training
from scopeflow_lab.training.detect_eval import (
    IOU,
    Counts,
    Truth,
    count,
    encode,
    greedy_match,
    ious,
    rle_of,
)

FLAKE_MIN_TRUTH_PX = 100  # ≈ 8.6 µm² at 20×: below the flakes anyone would pick up
# Evaluated: graphene 1L/2L/3L/thick and hBN (decoys are not reported).
FLAKE_CLASSES = tuple(c for c in flake_model.CLASSES[1:] if c not in flake_model.DECOYS)
GRAPHENE = tuple(c for c in FLAKE_CLASSES if c.startswith("graphene"))


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
    from scopeflow_lab.sim.optical import ChipConfig

    base = flake_training.TEST_SEED + int(oxide_nm) * 10
    return [
        flake_training.ChipSpec(oxide_nm, base + i, tiles, shape=shape, chip=ChipConfig())
        for i in range(chips)
    ]


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
    speed = backend_times(flake_model.NAME, net_input, 2 if quick else 10, weights_dir)
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
