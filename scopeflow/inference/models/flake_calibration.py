"""Calibrating the flake detector to one setup (oxide, lamp, camera) from a few labelled tiles.

Contrast-based flake finders are recalibrated for every oxide thickness, camera and lamp,
because a flake's colour depends on all three. The shipped network has seen many setups, but
one it never saw can still shift its colours between classes. A :class:`FlakeCalibration`
holds what 3–10 labelled tiles of the user's own setup teach:

- **a contrast model per class**: the mean and covariance of each labelled class's pixels in
  the network's own input space (asinh of the contrast against the fitted substrate, 3×3
  smoothed, at network resolution), background included;
- **how much to trust the network** on this setup (``net_weight``), chosen by leave-one-image-
  out on the labelled tiles themselves: 0.05 trusts the contrast model almost alone (a
  2DMatGMM-style classifier), 1 weighs the network's probabilities fully.

At detection the class probabilities become, per pixel,
``softmax_k( net_weight·log p_net(k) + log N(z | μ_k, Σ_k) )`` for calibrated classes, with a
broad uniform density for classes the labels did not show (so a class the user did not label,
dirt say, can still be found by the network). No gradient step, no torch: fitting takes
seconds on a CPU, and the calibration is a small JSON file with an id that every catalog entry
records.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scopeflow.inference.models import flake_detector as model

CALIBRATION_FILE = "calibration.json"
FORMAT = "scopeflow.flake-calibration/1"
# The choices leave-one-image-out picks from; never quite 0, so that where no calibrated
# class fits, the network still decides among the classes the labels did not show.
NET_WEIGHTS = (0.05, 0.25, 0.5, 1.0)
MIN_PIXELS = 20  # a class with fewer labelled network pixels is not calibrated
SMOOTH_PX = 3  # box smoothing of the contrast before the Gaussians (as 2DMatGMM does)
SURE_BACKGROUND = 0.9  # network probability of substrate above which a pixel is not fused
RIDGE = 0.02  # added to the covariance diagonal (z units): noise the labels may not show
# Density of a class the labels did not show: uniform over the box the network input spans
# (asinh(contrast/0.03) within the clip: about −4 … +5.6 per channel).
_UNSEEN_LOG_DENSITY = -3.0 * math.log(9.6)


def feature_of(contrast: np.ndarray) -> np.ndarray:
    """Contrast values (any shape) in the network's input space: asinh(c / 0.03), clipped."""
    return np.arcsinh(np.clip(contrast, *model.CONTRAST_CLIP) / model.CONTRAST_SCALE)


def features(contrast: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32: the contrast map (3, h, w) in the network's input space
    (:func:`feature_of`), box-smoothed over :data:`SMOOTH_PX`."""
    z = feature_of(contrast).transpose(1, 2, 0).astype(np.float32)
    return cv2.blur(z, (SMOOTH_PX, SMOOTH_PX))


@dataclass(frozen=True)
class ClassGaussian:
    """One class's contrast model: mean (3,) and covariance (3, 3) in feature space."""

    mean: np.ndarray
    cov: np.ndarray
    pixels: int
    flakes: int

    def log_density(self, z: np.ndarray) -> np.ndarray:
        """log N(z | mean, cov) for z (..., 3)."""
        d = z - self.mean.astype(np.float32)
        inv = np.linalg.inv(self.cov).astype(np.float32)
        maha = np.einsum("...i,ij,...j->...", d, inv, d)
        _, logdet = np.linalg.slogdet(self.cov)
        return -0.5 * (maha + logdet + 3.0 * math.log(2.0 * math.pi))

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": [round(float(v), 6) for v in self.mean],
            "cov": [[round(float(v), 8) for v in row] for row in self.cov],
            "pixels": self.pixels,
            "flakes": self.flakes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassGaussian:
        cov = np.asarray(data["cov"], float)
        mean = np.asarray(data["mean"], float)
        if mean.shape != (3,) or cov.shape != (3, 3) or not np.all(np.isfinite(cov)):
            raise ValueError("a class model needs a 3-vector mean and a finite 3×3 covariance")
        if np.any(np.linalg.eigvalsh((cov + cov.T) / 2) <= 0):
            raise ValueError("a class covariance is not positive definite")
        return cls(mean, cov, int(data.get("pixels", 0)), int(data.get("flakes", 0)))


@dataclass
class FlakeCalibration:
    """A setup's calibration: per-class contrast models, the network's weight, provenance."""

    classes: dict[str, Any]  # ClassGaussian, or a physics ClassMixture
    net_weight: float
    images: list[str] = field(default_factory=list)
    created: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """A short content hash: the same models give the same id."""
        body = json.dumps(
            {
                "classes": {k: v.to_json() for k, v in sorted(self.classes.items())},
                "w": self.net_weight,
            },
            sort_keys=True,
        )
        return "cal-" + hashlib.sha256(body.encode()).hexdigest()[:10]

    def adjust(self, probs: np.ndarray, contrast: np.ndarray) -> np.ndarray:
        """The network's class probabilities (K, h, w) fused with the contrast models.

        Only pixels that might be something are fused: where the network is sure of bare
        substrate (p > :data:`SURE_BACKGROUND`) and the colour agrees (within 3σ of the
        background model), fusion would only confirm it, so the network's probabilities stay
        (most of a tile; fusing every pixel cost ~1 s per 1920×1200 tile)."""
        z = features(contrast)
        out = probs.astype(np.float32, copy=True)
        candidates = np.ones(z.shape[:2], bool)
        bg = self.classes.get("background")
        if isinstance(bg, ClassGaussian):
            d = z - bg.mean.astype(np.float32)
            inv = np.linalg.inv(bg.cov).astype(np.float32)
            maha = np.einsum("...i,ij,...j->...", d, inv, d)
            candidates = ~((maha < 9.0) & (probs[0] > SURE_BACKGROUND))
        if not candidates.any():
            return out
        zc = z[candidates]
        logp = np.log(np.maximum(probs[:, candidates], 1e-6)) * np.float32(self.net_weight)
        for k, name in enumerate(model.CLASSES):
            gauss = self.classes.get(name)
            logp[k] += gauss.log_density(zc) if gauss is not None else _UNSEEN_LOG_DENSITY
        logp -= logp.max(axis=0, keepdims=True)
        fused = np.exp(logp)
        fused /= fused.sum(axis=0, keepdims=True)
        out[:, candidates] = fused
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "created": self.created,
            "model": model.NAME,
            "net_weight": self.net_weight,
            "images": self.images,
            "classes": {k: v.to_json() for k, v in self.classes.items()},
            "report": self.report,
        }

    def save(self, out: Path) -> Path:
        """Write ``out/calibration.json`` (``out`` is created); returns the file."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FlakeCalibration:
        """Read a calibration (its folder or the JSON file); ValueError with the reason when
        it is not one."""
        p = Path(path)
        if p.is_dir():
            p = p / CALIBRATION_FILE
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ValueError(f"no calibration at {p}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read calibration {p}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{p} is not a flake-detector calibration ({FORMAT})")
        unknown = set(data["classes"]) - set(model.CLASSES)
        if unknown:
            raise ValueError(f"calibration {p} names classes the detector lacks: {sorted(unknown)}")
        from scopeflow.inference.models.flake_physics import ClassMixture

        cal = cls(
            {
                k: ClassMixture.from_json(v) if "components" in v else ClassGaussian.from_json(v)
                for k, v in data["classes"].items()
            },
            float(data["net_weight"]),
            list(data.get("images", [])),
            str(data.get("created", "")),
            dict(data.get("report", {})),
        )
        if data.get("id") not in (None, cal.id):
            raise ValueError(f"calibration {p} was edited: its id does not match its contents")
        return cal


# -- fitting ---------------------------------------------------------------------------------------
@dataclass
class LabelledTile:
    """One labelled tile at network resolution: the network's probabilities (K, h, w), the
    contrast (3, h, w) and a class index per pixel (h, w; 255 = unlabelled edge)."""

    name: str
    probs: np.ndarray
    contrast: np.ndarray
    labels: np.ndarray
    flakes: dict[str, int]


UNLABELLED = 255


def class_name_for(category: str, attributes: dict[str, Any]) -> str | None:
    """The detector class an annotation names: its category when it is a class name, else
    from ``material`` and ``layers`` (or hBN's ``thickness_nm``); None when it is none."""
    if category in model.CLASSES:
        return category
    material = str(attributes.get("material", category))
    if material in ("residue", "dirt"):
        return material
    if material == "hBN":
        nm = attributes.get("thickness_nm")
        if nm is None:
            return None
        for name, (lo, hi) in model.HBN_CLASSES_NM.items():
            if float(nm) >= lo and (hi is None or float(nm) < hi):
                return name
        return None
    layers = attributes.get("layers")
    if material not in ("graphene", "MoS2", "WSe2") or layers is None:
        return None
    if isinstance(layers, str):
        return f"{material}_thick" if layers == "thick" else None
    thick_from = 4 if material == "graphene" else 3
    return f"{material}_thick" if int(layers) >= thick_from else f"{material}_{int(layers)}L"


def labelled_tile(
    name: str,
    frame: np.ndarray,
    objects: Sequence[tuple[str, np.ndarray]],
    detector: model.FlakeDetector,
    pixel_size_nm: float | None = None,
) -> LabelledTile:
    """Run the network on ``frame`` and map its labelled ``objects`` (class name, full-size
    boolean mask) to network pixels: a pixel takes the class covering most of it; pixels
    within 2 network pixels of an object's edge are left unlabelled (blurred edges carry
    neither class's colour)."""
    factor = model.downsample_factor(pixel_size_nm)
    contrast = model.flake_contrast(frame, detector.black_level, factor)
    probs = model.segment(
        detector.session,
        contrast,
        tile=detector.tile,
        overlap=detector.overlap,
        multiple=model.MULTIPLE,
    )
    h, w = contrast.shape[1:]
    labels = np.zeros((h, w), np.uint8)
    edge = np.zeros((h, w), bool)
    flakes: dict[str, int] = {}
    kernel = np.ones((5, 5), np.uint8)
    for cls, mask in objects:
        cover = model.downsample(mask.astype(np.float32), factor)[:h, :w] >= 0.5
        if not cover.any():
            continue
        labels[cover] = model.CLASSES.index(cls)
        flakes[cls] = flakes.get(cls, 0) + 1
        m8 = cover.view(np.uint8)
        edge |= (cv2.dilate(m8, kernel) - cv2.erode(m8, kernel)).astype(bool)
    labels[edge] = UNLABELLED
    return LabelledTile(name, probs, contrast, labels, flakes)


def _fit_gaussians(tiles: Sequence[LabelledTile]) -> dict[str, ClassGaussian]:
    pools: dict[int, list[np.ndarray]] = {}
    flakes: dict[str, int] = {}
    for t in tiles:
        z = features(t.contrast)
        for k in np.unique(t.labels):
            if k == UNLABELLED:
                continue
            pools.setdefault(int(k), []).append(z[t.labels == k])
        for name, n in t.flakes.items():
            flakes[name] = flakes.get(name, 0) + n
    out = {}
    for k, parts in pools.items():
        x = np.concatenate(parts).astype(np.float64)
        if len(x) < MIN_PIXELS:
            continue
        name = model.CLASSES[k]
        cov = np.cov(x, rowvar=False) + RIDGE * np.eye(3)
        out[name] = ClassGaussian(x.mean(axis=0), cov, len(x), flakes.get(name, 0))
    return out


def _pixel_score(cal: FlakeCalibration, tile: LabelledTile) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, labelled + predicted) per class of one tile: the parts of a Dice."""
    pred = cal.adjust(tile.probs, tile.contrast).argmax(axis=0)
    seen = tile.labels != UNLABELLED
    k = len(model.CLASSES)
    truth, guess = tile.labels[seen].astype(np.int64), pred[seen]
    tp = np.bincount(truth[truth == guess], minlength=k)
    both = np.bincount(truth, minlength=k) + np.bincount(guess, minlength=k)
    return tp, both


def fit(
    tiles: Sequence[LabelledTile], progress: Callable[[str], None] = lambda _m: None
) -> FlakeCalibration:
    """A calibration from labelled tiles. The network's weight is chosen by leave-one-image-
    out mean Dice over the flake classes present (all tiles when there is only one)."""
    if not tiles:
        raise ValueError("calibration needs at least one labelled tile")
    classes = _fit_gaussians(tiles)
    flake_classes = [c for c in classes if c not in ("background", *model.DECOYS)]
    if not flake_classes:
        raise ValueError(
            "the labels hold no flake class with enough pixels "
            f"(≥ {MIN_PIXELS} network pixels); label at least one flake"
        )
    scores = {}
    for w in NET_WEIGHTS:
        tp = np.zeros(len(model.CLASSES))
        both = np.zeros(len(model.CLASSES))
        for i, held in enumerate(tiles):
            rest = [t for j, t in enumerate(tiles) if j != i] or list(tiles)
            cal = FlakeCalibration(_fit_gaussians(rest), w)
            a, b = _pixel_score(cal, held)
            tp += a
            both += b
        idx = [model.CLASSES.index(c) for c in flake_classes]
        dice = [2 * tp[k] / both[k] for k in idx if both[k] > 0]
        scores[w] = float(np.mean(dice)) if dice else 0.0
        progress(f"  network weight {w:g}: leave-one-out mean Dice {scores[w]:.3f}")
    best = max(NET_WEIGHTS, key=lambda w: (scores[w], w))  # ties: trust the network more
    return FlakeCalibration(
        classes,
        best,
        [t.name for t in tiles],
        _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        {
            "leave_one_out_dice": {f"{w:g}": round(s, 4) for w, s in scores.items()},
            "flakes_per_class": {c: g.flakes for c, g in classes.items()},
            "pixels_per_class": {c: g.pixels for c, g in classes.items()},
        },
    )
