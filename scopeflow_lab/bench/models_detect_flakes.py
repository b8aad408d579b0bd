"""The flake detector section of the detection benchmark (:mod:`scopeflow_lab.bench.models_detect`):
flake truths and scoring, the contrast-GMM baseline, and the held-out chip evaluation.
"""

from __future__ import annotations

import dataclasses
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
from scopeflow_lab.sim.optical import ChipConfig, SpectralModel
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
        k = flake_training.class_of(obj.attributes)
        if k == flake_training.IGNORE:  # a film no one could see on this oxide: not counted
            continue
        name = flake_model.CLASSES[k]
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
        "hBN_thin": 3,
        "hBN_medium": 3,
        "hBN_thick": 4,
        "MoS2_1L": 2,
        "MoS2_2L": 2,
        "MoS2_thick": 4,
        "WSe2_1L": 2,
        "WSe2_2L": 2,
        "WSe2_thick": 4,
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
        self.materials: tuple[str, ...] | None = None

    def fit(self, data: list[flake_training.Sample], rng: np.random.Generator) -> None:
        """One mixture per class on contrast vectors inside eroded truth masks."""
        from sklearn.mixture import GaussianMixture

        kernel = np.ones((3, 3), np.uint8)
        pools: list[list[np.ndarray]] = [[] for _ in flake_model.CLASSES]
        counts = np.zeros(len(flake_model.CLASSES))
        for s in data:
            c = s.contrast.astype(np.float32).reshape(3, -1).T
            for k in range(len(flake_model.CLASSES)):
                m8 = (s.labels == k).astype(np.uint8)
                mask = cv2.erode(m8, kernel).ravel().astype(bool)
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
        if self.materials is not None:  # told the chip's materials, as the network is
            keep = flake_model.restrict_to_materials(
                np.ones((len(flake_model.CLASSES), 1, 1)), self.materials
            )[:, 0, 0]
            loglik = np.where(keep[:, None, None] > 0, loglik, -1e9)
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


#: Test chips: graphene and hBN (the default chip's mix), and the two TMDs.
TEST_CHIPS = (ChipConfig(), ChipConfig(materials=("MoS2", "WSe2"), material_weights=(0.5, 0.5)))
#: In-domain test conditions (trained oxides and lamps, unseen chips), per oxide and lamp.
IN_DOMAIN = (
    ("90 nm, halogen", 90.0, SpectralModel()),
    ("90 nm, LED", 90.0, SpectralModel(illuminant="led")),
    ("285 nm, halogen", 285.0, SpectralModel()),
    ("285 nm, LED", 285.0, SpectralModel(illuminant="led")),
)
#: Held-out conditions: oxide bands and a warm LED never trained on, on a Bayer camera with a
#: colour matrix.
HELD_OUT = (
    ("300 nm, halogen", 300.0, SpectralModel()),
    ("300 nm, warm LED", 300.0, flake_training.HELDOUT_LED),
    ("245 nm, halogen", 245.0, SpectralModel()),
    ("245 nm, warm LED", 245.0, flake_training.HELDOUT_LED),
)


def condition_specs(
    label: str,
    oxide_nm: float,
    spectrum: SpectralModel,
    chips: int,
    tiles: int,
    *,
    held_out: bool,
    shape: tuple[int, int] = (1200, 1920),
    seed_offset: int = 0,
) -> list[flake_training.ChipSpec]:
    """Test chips (seeds from TEST_SEED, never trained on) of one condition, alternately a
    graphene + hBN chip and a MoS₂ + WSe₂ chip (a chip holds what was exfoliated on it; the
    detector is told which); the default camera in domain, a Bayer sensor with a colour matrix
    when held out."""
    base = (
        flake_training.TEST_SEED
        + seed_offset
        + 100 * ([c[0] for c in IN_DOMAIN + HELD_OUT].index(label) + 1)
    )
    return [
        flake_training.ChipSpec(
            oxide_nm,
            base + i,
            tiles,
            shape=shape,
            chip=TEST_CHIPS[i % len(TEST_CHIPS)],
            spectrum=spectrum,
            bayer=held_out,
            colour_matrix=flake_training.sensor_colour_matrix(0.6) if held_out else None,
        )
        for i in range(chips)
    ]


def _evaluate_flakes(
    detector: Any,
    gmm: ContrastGMM | None,
    specs: list[flake_training.ChipSpec],
    progress: Callable[[str], None],
    label: str,
) -> tuple[dict, dict | None]:
    ours, theirs = FlakeScore.empty(), FlakeScore.empty()
    n = 0
    for spec, image, _ in flake_training.samples(specs):
        truths = flake_truths(image)
        detector.materials = spec.chip.materials  # the user says what is on the chip
        ours.add(detector.detect(image.image), truths)
        if gmm is not None:
            gmm.materials = spec.chip.materials
            theirs.add(gmm.detect(image.image), truths)
        n += 1
    a = ours.per_class["graphene_1L"].report()
    b = theirs.per_class["graphene_1L"].report()
    progress(
        f"    {label}: {n} tiles; graphene 1L P/R {a['precision']:.3f}/{a['recall']:.3f}"
        + (f" (gmm {b['precision']:.3f}/{b['recall']:.3f})" if gmm is not None else "")
    )
    return ours.report(), (theirs.report() if gmm is not None else None)


def fit_gmm(
    fit_specs: list[flake_training.ChipSpec],
    tune_specs: list[flake_training.ChipSpec],
    rng: np.random.Generator,
    progress: Callable[[str], None],
) -> ContrastGMM:
    """The contrast-GMM baseline fitted on ``fit_specs`` and tuned on ``tune_specs``."""
    gmm = ContrastGMM()
    gmm.fit([s for _, _, s in flake_training.samples(fit_specs)], rng)
    gmm.tune(
        [
            (s.contrast.astype(np.float32), image)
            for _, image, s in flake_training.samples(tune_specs)
        ],
        progress,
    )
    return gmm


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    tmd_1l = [report[c] for c in ("MoS2_1L", "WSe2_1L")]
    return {
        "graphene_1L": report["graphene_1L"],
        "layer_accuracy": report["layer_accuracy"],
        "f1": report["f1"],
        "MoS2_1L_recall": tmd_1l[0]["recall"],
        "WSe2_1L_recall": tmd_1l[1]["recall"],
    }


def flake_section(
    quick: bool = False, progress: Callable[[str], None] = print, weights_dir: Path | None = None
) -> dict[str, Any]:
    """The ``flake_detector`` section of the models benchmark: every in-domain and held-out
    condition, the network beside the contrast-GMM baseline (fitted on training tiles)."""
    rng = np.random.default_rng(0)
    detector = flake_model.FlakeDetector(
        backends.load(flake_model.NAME, "onnxruntime", weights_dir)
    )
    progress("  flake detector: fitting the contrast-GMM baseline on training tiles")
    train_specs = flake_training.train_specs(quick)
    if quick:
        gmm = fit_gmm(train_specs, train_specs, rng, progress)
    else:
        twenty = [s for s in train_specs if s.magnification == 20.0]
        gmm = fit_gmm(
            twenty[::3],
            [dataclasses.replace(s, tiles=2) for s in twenty[1::6]],
            rng,
            progress,
        )

    small = (256, 384)
    chips, tiles = (1, 2) if quick else (2, 15)
    shape = small if quick else (1200, 1920)
    conditions = []
    pooled_specs: dict[bool, list[flake_training.ChipSpec]] = {False: [], True: []}
    for held_out, table in ((False, IN_DOMAIN), (True, HELD_OUT)):
        for label, oxide, spectrum in table:
            specs = condition_specs(
                label, oxide, spectrum, chips, tiles, held_out=held_out, shape=shape
            )
            pooled_specs[held_out] += specs
            ours, theirs = _evaluate_flakes(detector, gmm, specs, progress, label)
            assert theirs is not None
            conditions.append(
                {
                    "condition": label,
                    "held_out": held_out,
                    "tiles": chips * tiles,
                    **_summary(ours),
                    "per_class": ours,
                    "baseline": _summary(theirs),
                }
            )

    # Throughput on full tiles, end to end, ONNX Runtime.
    frames = [
        im.image
        for _, im, _ in flake_training.samples(
            condition_specs(*IN_DOMAIN[2], 1, 2 if quick else 4, held_out=False, seed_offset=50)
        )
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
    main = [c for c in conditions if not c["held_out"]]
    held = [c for c in conditions if c["held_out"]]
    return {
        **_mean_summary(main),
        "megapixels_per_s": mpx / per_tile,
        "tile_ms": per_tile * 1e3,
        "tile_shape": list(frames[0].shape),
        "network": speed,
        "conditions": conditions,
        "baseline": {
            "name": gmm.name,
            **_mean_summary([{**c["baseline"]} for c in main]),
            "megapixels_per_s": mpx / gmm_s,
            "setup": gmm.setup(),
        },
        "heldout_conditions": {
            **_mean_summary(held),
            "baseline": _mean_summary([{**c["baseline"]} for c in held]),
        },
        "test_set": {
            "tiles_per_condition": chips * tiles,
            "chip_seeds": sorted({s.seed for v in pooled_specs.values() for s in v}),
            "tile_shape": list(shape),
            "min_truth_area_px": FLAKE_MIN_TRUTH_PX,
            "iou": IOU,
        },
    }


def _mean_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-condition figures averaged over conditions (macro: each condition counts once)."""
    if not rows:
        return {}

    def mean(get: Callable[[dict[str, Any]], float]) -> float:
        return float(np.mean([get(r) for r in rows]))

    return {
        "graphene_1L": {
            "precision": mean(lambda r: r["graphene_1L"]["precision"]),
            "recall": mean(lambda r: r["graphene_1L"]["recall"]),
        },
        "layer_accuracy": mean(lambda r: r["layer_accuracy"]),
        "f1": mean(lambda r: r["f1"]),
        "MoS2_1L_recall": mean(lambda r: r["MoS2_1L_recall"]),
        "WSe2_1L_recall": mean(lambda r: r["WSe2_1L_recall"]),
    }
