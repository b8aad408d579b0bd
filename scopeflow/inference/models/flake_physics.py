"""The flake detector's physics prior: each class's colour on *this* chip, from thin-film optics.

A flake's contrast against the substrate is set by interference in the flake / SiO₂ / Si stack
(Blake et al., APL 91, 063124 (2007)); it changes with the oxide thickness far more than with
anything else, so a detector trained on a few oxides reads flakes on another oxide as the wrong
class (on 300 nm SiO₂ our network, trained on 90/100/270/285 nm, found no monolayer at all).
Labs know this and recalibrate per oxide; this module does it without labels:

1. :func:`contrast_table` predicts, with the transfer-matrix model of :mod:`scopeflow.optics.
   thinfilm`, the contrast of every class (graphene 1–3 layers and bulk, hBN by thickness
   class, MoS₂/WSe₂ 1–2 layers and bulk, polymer residue) on an oxide grid of
   :data:`OXIDE_GRID_NM`, for an ensemble of plausible lamps, camera bands and colour matrices
   (:data:`SPECTRA`): a user rarely knows their camera's spectral response, so the model must
   not need it.
2. :func:`estimate_oxide` finds the oxide thickness that best explains the contrasts of the
   flakes the network segmented on a few tiles (a mixture likelihood over classes, thicknesses
   and setups), with the range of thicknesses that explain them almost as well.
3. :func:`physics_calibration` turns the prediction at that oxide (or one the user gives:
   chips are sold as "285 nm SiO₂") into a :class:`~scopeflow.inference.models.
   flake_calibration.FlakeCalibration` whose per-class contrast models are mixtures, so the
   detector's existing fusion (network × contrast model) classifies with it.

The optics are the same as the simulator's, on purpose: they are the physics of real chips
(refractive indices from the literature, cited in :mod:`scopeflow.optics.thinfilm`); the
setups the ensemble spans are deliberately broader than any one simulated camera.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scopeflow.inference.models import flake_calibration as calib
from scopeflow.inference.models import flake_detector as model
from scopeflow.optics.thinfilm import (
    GRAPHENE,
    HBN,
    MOS2,
    RESIDUE,
    WSE2,
    Material,
    SpectralModel,
    film_spectrum,
)

#: Oxide thicknesses the prior knows, nm (thermal SiO₂ of exfoliation chips: 90–300 nm and a
#: margin).
OXIDE_GRID_NM = np.arange(60.0, 340.1, 2.0)
OXIDE_MIN_NM, OXIDE_MAX_NM = float(OXIDE_GRID_NM[0]), float(OXIDE_GRID_NM[-1])


def _bulk(material: Material, first_layers: int, top_nm: float, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.geomspace(first_layers * material.layer_nm, top_nm, n))


#: Per class: the film and the thicknesses (nm) that stand for it.
CLASS_FILMS: dict[str, tuple[Material, tuple[float, ...]]] = {
    "graphene_1L": (GRAPHENE, (GRAPHENE.thickness_nm(1),)),
    "graphene_2L": (GRAPHENE, (GRAPHENE.thickness_nm(2),)),
    "graphene_3L": (GRAPHENE, (GRAPHENE.thickness_nm(3),)),
    "graphene_thick": (GRAPHENE, _bulk(GRAPHENE, 4, 300.0, 14)),
    "hBN_thin": (HBN, tuple(float(v) for v in np.linspace(3.0, 10.0, 5))),
    "hBN_medium": (HBN, tuple(float(v) for v in np.geomspace(10.0, 50.0, 9))),
    "hBN_thick": (HBN, tuple(float(v) for v in np.geomspace(50.0, 300.0, 12))),
    "MoS2_1L": (MOS2, (MOS2.thickness_nm(1),)),
    "MoS2_2L": (MOS2, (MOS2.thickness_nm(2),)),
    "MoS2_thick": (MOS2, _bulk(MOS2, 3, 300.0, 12)),
    "WSe2_1L": (WSE2, (WSE2.thickness_nm(1),)),
    "WSe2_2L": (WSE2, (WSE2.thickness_nm(2),)),
    "WSe2_thick": (WSE2, _bulk(WSE2, 3, 300.0, 12)),
    "residue": (RESIDUE, tuple(float(v) for v in np.geomspace(1.0, 30.0, 6))),
}
PHYSICS_CLASSES = tuple(CLASS_FILMS)


def _band_shift(shift_nm: float) -> dict[str, Any]:
    return {"band_centres_nm": tuple(c + shift_nm for c in (610.0, 540.0, 465.0))}


def _led(blue_nm: float, phosphor_nm: float, ratio: float) -> dict[str, Any]:
    return {
        "illuminant": "led",
        "led_blue_nm": blue_nm,
        "led_phosphor_nm": phosphor_nm,
        "led_phosphor_ratio": ratio,
    }


# Two halogen lamps, and cool, neutral, warm and very warm white LEDs (a warm white's
# phosphor peaks near 600 nm and outweighs the blue).
_LAMPS = (
    {"illuminant": "halogen", "colour_temperature_k": 2800.0},
    {"illuminant": "halogen", "colour_temperature_k": 3400.0},
    _led(445.0, 550.0, 1.2),
    _led(450.0, 560.0, 1.6),
    _led(455.0, 575.0, 2.2),
    _led(455.0, 605.0, 3.5),
)
#: The setups the prior spans: lamps (two halogen temperatures, four white LEDs) × camera
#: bands (nominal, 8 nm bluer, 8 nm redder).
SPECTRA: tuple[SpectralModel, ...] = tuple(
    SpectralModel(**lamp, **_band_shift(shift)) for lamp in _LAMPS for shift in (-8.0, 0.0, 8.0)
)
#: Colour-correction strengths spanned (0: a raw camera; see :func:`colour_matrix`).
COLOUR_SATURATIONS = (0.0, 0.5, 1.0)
#: Flake-level model error: σ = ABS + REL·|c| per channel (blur at edges, residual white
#: balance, index uncertainty).
SIGMA_ABS, SIGMA_REL = 0.012, 0.10
OUTLIER_DENSITY = 1e-3  # per flake: a colour no class explains (dust on a flake, a fold)
MIN_FLAKE_PX = 30  # network pixels a segment needs to vote on the oxide
COMPONENTS = 4  # mixture components per class in a physics calibration
KEEP_SETUPS = 3  # setups a calibration keeps: those that explain the chip's flakes best


def colour_matrix(saturation: float) -> np.ndarray:
    """A camera colour-correction matrix I + s·(I − 1·wᵀ) (rows sum to 1, grey stays grey)."""
    w = np.array([0.30, 0.59, 0.11])
    return (1.0 + saturation) * np.eye(3) - saturation * np.outer(np.ones(3), w)


@dataclass(frozen=True)
class ContrastTable:
    """Predicted contrast per class: ``contrast[name]`` has shape (setups, thicknesses, oxides,
    3); setups are :data:`SPECTRA` × :data:`COLOUR_SATURATIONS`; oxides ``oxide_nm``."""

    oxide_nm: np.ndarray
    contrast: dict[str, np.ndarray]


def _setup_contrast(films: np.ndarray, bare: np.ndarray) -> np.ndarray:
    """Contrast (setups, samples, oxides, 3) of film spectra (samples, oxides, λ) on the bare
    substrate (oxides, λ), through every lamp, camera and colour matrix. The colour matrix acts
    on white-balanced signals (a mirror is grey), which are proportional to reflectance."""
    out = []
    for spectrum in SPECTRA:
        weights = spectrum.weights()  # (3, λ), rows sum to 1
        film_rgb = films @ weights.T  # (samples, oxides, 3)
        bare_rgb = bare @ weights.T  # (oxides, 3)
        for s in COLOUR_SATURATIONS:
            m = colour_matrix(s)
            out.append((film_rgb @ m.T) / (bare_rgb @ m.T) - 1.0)
    return np.stack(out)


@functools.lru_cache(maxsize=4)
def contrast_table(oxide_nm: tuple[float, ...] | None = None) -> ContrastTable:
    """The predicted contrasts on ``oxide_nm`` (default :data:`OXIDE_GRID_NM`); cached."""
    oxides = np.asarray(OXIDE_GRID_NM if oxide_nm is None else oxide_nm, float)
    bare = film_spectrum(None, 0.0, oxides)
    table = {}
    for name, (material, thicknesses) in CLASS_FILMS.items():
        films = np.stack([film_spectrum(material, t, oxides) for t in thicknesses])
        table[name] = _setup_contrast(films, bare)
    return ContrastTable(oxides, table)


# -- the chip's own flakes ---------------------------------------------------------------------
@dataclass(frozen=True)
class FlakeColour:
    """One segmented flake's contrast: the median over its interior (3,), and its size."""

    contrast: np.ndarray
    pixels: int


def flake_colours(probs: np.ndarray, contrast: np.ndarray) -> list[FlakeColour]:
    """Flakes the network segmented in one tile (any flake class or residue, not background or
    dirt), each as the median contrast over its interior (2 network pixels in from the edge,
    where blur mixes in the substrate)."""
    dirt = model.CLASSES.index("dirt")
    class_map = probs.argmax(axis=0)
    fg = ((class_map != 0) & (class_map != dirt)).astype(np.uint8)
    interior = cv2.erode(fg, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(interior, connectivity=8)
    out = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < MIN_FLAKE_PX:
            continue
        sel = labels == i
        out.append(
            FlakeColour(np.median(contrast[:, sel], axis=1), int(stats[i, cv2.CC_STAT_AREA]))
        )
    return out


def _classes_for(materials: Sequence[str] | None) -> list[str]:
    return [
        name
        for name in PHYSICS_CLASSES
        if materials is None
        or name == "residue"
        or model.CLASS_ATTRIBUTES[name]["material"] in materials
    ]


@dataclass(frozen=True)
class OxideEstimate:
    """The oxide thickness that best explains a chip's flakes.

    ``oxide_nm``: the best; ``range_nm``: every thickness whose log-likelihood is within 2 of
    the best (a wide or split range means the flakes did not decide); ``flakes``: how many
    voted; ``setups``: indices into the setups (:data:`SPECTRA` × :data:`COLOUR_SATURATIONS`)
    that explain them best at that oxide, best first; ``log_likelihood``: per grid
    thickness."""

    oxide_nm: float
    range_nm: tuple[float, float]
    flakes: int
    setups: tuple[int, ...]
    log_likelihood: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "oxide_nm": self.oxide_nm,
            "range_nm": list(self.range_nm),
            "flakes": self.flakes,
        }


def _flake_log_likelihood(
    colours: Sequence[FlakeColour], table: ContrastTable, classes: Sequence[str]
) -> np.ndarray:
    """log p(flake colours | oxide, setup), summed over flakes: (setups, oxides). The sum is
    additive, so a caller that sees flakes arrive tile by tile adds each tile's part to a
    running total (:class:`SelfCalibration`) instead of redoing every flake."""
    c = np.stack([f.contrast for f in colours]).astype(np.float64)  # (F, 3)
    sigma = SIGMA_ABS + SIGMA_REL * np.abs(c)  # (F, 3)
    norm = -np.log(sigma).sum(axis=1) - 1.5 * math.log(2 * math.pi)  # (F,)
    total = None
    for name in classes:
        pred = table.contrast[name]  # (S, T, O, 3)
        d = (pred[None] - c[:, None, None, None, :]) / sigma[:, None, None, None, :]
        dens = np.exp(-0.5 * (d * d).sum(axis=-1) + norm[:, None, None, None])  # (F, S, T, O)
        per_class = dens.mean(axis=2) / len(classes)  # thicknesses equally likely
        total = per_class if total is None else total + per_class
    assert total is not None
    # A flake's vote is capped: big flakes should not outvote many small ones.
    weights = np.array([min(1.0, f.pixels / 200.0) + 0.5 for f in colours])
    logp = np.log(total + OUTLIER_DENSITY)  # (F, S, O)
    return np.einsum("f,fso->so", weights, logp)


def flake_log_likelihood(
    colours: Sequence[FlakeColour], materials: Sequence[str] | None = None
) -> np.ndarray:
    """log p(``colours`` | oxide, setup) on the prior's grid, (setups, oxides); additive over
    flakes."""
    return _flake_log_likelihood(colours, contrast_table(), _classes_for(materials))


def oxide_from_log_likelihood(
    ll: np.ndarray, flakes: int, bounds_nm: tuple[float, float] = (OXIDE_MIN_NM, OXIDE_MAX_NM)
) -> OxideEstimate:
    """The estimate a summed :func:`flake_log_likelihood` of ``flakes`` flakes points to."""
    table = contrast_table()
    ll = np.array(ll, float)
    outside = (table.oxide_nm < bounds_nm[0] - 1e-9) | (table.oxide_nm > bounds_nm[1] + 1e-9)
    ll[:, outside] = -np.inf
    per_oxide = ll.max(axis=0)
    best = int(per_oxide.argmax())
    near = table.oxide_nm[per_oxide >= per_oxide[best] - 2.0]
    return OxideEstimate(
        float(table.oxide_nm[best]),
        (float(near.min()), float(near.max())),
        int(flakes),
        _top(ll[:, best]),
        per_oxide,
    )


def estimate_oxide(
    colours: Sequence[FlakeColour],
    materials: Sequence[str] | None = None,
    bounds_nm: tuple[float, float] = (OXIDE_MIN_NM, OXIDE_MAX_NM),
) -> OxideEstimate:
    """The oxide thickness (on :data:`OXIDE_GRID_NM`, within ``bounds_nm``) that best explains
    ``colours``; every setup of the ensemble is allowed, the best one per oxide counts.
    ValueError when there are no flakes to go by."""
    if not colours:
        raise ValueError("no flakes to estimate the oxide from: scan tiles that hold flakes")
    return oxide_from_log_likelihood(
        flake_log_likelihood(colours, materials), len(colours), bounds_nm
    )


# -- a calibration from the physics --------------------------------------------------------------
@dataclass(frozen=True)
class ClassMixture:
    """A class's contrast model as a Gaussian mixture in the network's feature space (the
    interface of :class:`~scopeflow.inference.models.flake_calibration.ClassGaussian`)."""

    weights: np.ndarray
    components: tuple[calib.ClassGaussian, ...]
    pixels: int = 0
    flakes: int = 0

    def log_density(self, z: np.ndarray) -> np.ndarray:
        pairs = zip(self.weights, self.components, strict=True)
        parts = np.stack([math.log(w) + g.log_density(z) for w, g in pairs])
        top = parts.max(axis=0)
        return top + np.log(np.exp(parts - top).sum(axis=0))

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": [round(float(w), 6) for w in self.weights],
            "components": [g.to_json() for g in self.components],
            "pixels": self.pixels,
            "flakes": self.flakes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassMixture:
        comps = tuple(calib.ClassGaussian.from_json(c) for c in data["components"])
        w = np.asarray(data["weights"], float)
        if len(comps) == 0 or w.shape != (len(comps),) or np.any(w <= 0):
            raise ValueError("a mixture needs one positive weight per component")
        return cls(w / w.sum(), comps, int(data.get("pixels", 0)), int(data.get("flakes", 0)))


def _kmeans(x: np.ndarray, k: int, iterations: int = 20) -> np.ndarray:
    """Cluster labels of ``x`` (n, 3): k-means from farthest-point seeds (deterministic)."""
    k = min(k, len(x))
    centres = [x[0]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(axis=1) for c in centres], axis=0)
        centres.append(x[int(d.argmax())])
    cen = np.stack(centres)
    labels = np.zeros(len(x), int)
    for _ in range(iterations):
        labels = ((x[:, None, :] - cen[None]) ** 2).sum(axis=-1).argmin(axis=1)
        cen = np.stack(
            [x[labels == j].mean(axis=0) if np.any(labels == j) else cen[j] for j in range(k)]
        )
    return labels


def _class_mixture(samples_c: np.ndarray, noise_z: np.ndarray) -> ClassMixture:
    """A mixture over predicted contrasts (n, 3): clusters in feature space, each with its
    scatter, plus the pixel noise carried through the feature's slope at its mean."""
    z = calib.feature_of(samples_c)
    labels = _kmeans(z, COMPONENTS)
    comps, weights = [], []
    for j in np.unique(labels):
        zj, cj = z[labels == j], samples_c[labels == j]
        mean = zj.mean(axis=0)
        scatter = np.cov(zj, rowvar=False) if len(zj) > 1 else np.zeros((3, 3))
        # Pixel noise is in contrast units; the feature (asinh) compresses it where |c| is large.
        slope = 1.0 / np.sqrt(1.0 + (cj.mean(axis=0) / model.CONTRAST_SCALE) ** 2)
        cov = scatter + np.diag(slope) @ noise_z @ np.diag(slope) + calib.RIDGE * np.eye(3)
        comps.append(calib.ClassGaussian(mean, cov, 0, 0))
        weights.append(len(zj))
    w = np.asarray(weights, float)
    return ClassMixture(w / w.sum(), tuple(comps))


def background_noise(probs: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Covariance (3, 3) of the substrate's features in one tile (pixels the network calls
    background above :data:`flake_calibration.SURE_BACKGROUND`), as the detector smooths them:
    the pixel noise of this camera."""
    z = calib.features(contrast)
    sel = probs[0] > calib.SURE_BACKGROUND
    x = z[sel].astype(np.float64)
    if len(x) < 100:
        return np.eye(3) * 0.1
    return np.cov(x[:: max(1, len(x) // 20000)], rowvar=False)


def physics_calibration(
    oxide_nm: float,
    noise_z: np.ndarray,
    materials: Sequence[str] | None = None,
    setups: Sequence[int] | None = None,
    net_weight: float = 0.25,
    estimate: OxideEstimate | None = None,
) -> calib.FlakeCalibration:
    """A calibration whose class models are the physics' prediction at ``oxide_nm`` for the
    setups ``setups`` (indices into the ensemble; None: all), with ``noise_z`` (the substrate's
    feature covariance, :func:`background_noise`) as pixel noise. Dirt is left to the network."""
    if not OXIDE_MIN_NM <= oxide_nm <= OXIDE_MAX_NM:
        raise ValueError(
            f"oxide {oxide_nm:g} nm is outside what the prior knows "
            f"({OXIDE_MIN_NM:g}–{OXIDE_MAX_NM:g} nm)"
        )
    table = contrast_table((float(oxide_nm),))
    noise_z = np.asarray(noise_z, float)
    classes: dict[str, Any] = {
        "background": calib.ClassGaussian(np.zeros(3), noise_z + calib.RIDGE * np.eye(3), 0, 0)
    }
    for name in _classes_for(materials):
        pred = table.contrast[name][:, :, 0, :]  # (setups, thicknesses, 3)
        if setups is not None:
            pred = pred[list(setups)]
        classes[name] = _class_mixture(pred.reshape(-1, 3), noise_z)
    report: dict[str, Any] = {"physics": {"oxide_nm": float(oxide_nm)}}
    if estimate is not None:
        report["physics"]["estimate"] = estimate.to_json()
    return calib.FlakeCalibration(
        classes,
        net_weight,
        [],
        _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        report,
    )


def _top(setup_log_likelihood: np.ndarray) -> tuple[int, ...]:
    """The :data:`KEEP_SETUPS` best setups, best first."""
    return tuple(int(i) for i in np.argsort(setup_log_likelihood)[::-1][:KEEP_SETUPS])


def best_setups(
    oxide_nm: float, colours: Sequence[FlakeColour], materials: Sequence[str] | None = None
) -> tuple[int, ...]:
    """The setups that explain ``colours`` best on ``oxide_nm``, best first."""
    table = contrast_table((float(oxide_nm),))
    return _top(_flake_log_likelihood(colours, table, _classes_for(materials))[:, 0])


def parse_oxide(text: str) -> float | tuple[float, float]:
    """``--oxide-nm``: a thickness in nm (``"285"``: use it), a range to estimate within
    (``"270-300"``) or ``"auto"`` (estimate over everything the prior knows). ValueError with
    the reason otherwise."""
    text = str(text).strip().lower()
    if text == "auto":
        return (OXIDE_MIN_NM, OXIDE_MAX_NM)
    try:
        if "-" in text[1:]:
            lo, hi = (float(v) for v in text.split("-", 1))
            value: float | tuple[float, float] = (lo, hi)
            if not OXIDE_MIN_NM <= lo < hi <= OXIDE_MAX_NM:
                raise ValueError
        else:
            value = float(text)
            if not OXIDE_MIN_NM <= value <= OXIDE_MAX_NM:
                raise ValueError
    except ValueError:
        raise ValueError(
            f"--oxide-nm takes a SiO₂ thickness, a range LO-HI or 'auto', within "
            f"{OXIDE_MIN_NM:g}–{OXIDE_MAX_NM:g} nm; got {text!r}"
        ) from None
    return value


#: Self-calibration: flakes a first estimate needs, and after how many flakes (or tiles that
#: held flakes) the estimate is frozen, so that one calibration serves the rest of the chip.
MIN_VOTING_FLAKES = 3
FREEZE_FLAKES = 24
FREEZE_TILES = 12


class SelfCalibration:
    """A detector's calibration from the chip itself (thread-safe).

    With a given oxide the calibration is built on the first tile (whose substrate gives the
    camera's noise). With a range (or ``auto``), every tile's flakes vote on the oxide until
    :data:`FREEZE_FLAKES` flakes (or :data:`FREEZE_TILES` tiles with flakes) have; each tile is
    classified with the estimate that includes its own flakes, and the calibration is frozen
    after that. Tiles before the first :data:`MIN_VOTING_FLAKES` flakes get no calibration."""

    def __init__(
        self,
        oxide: float | tuple[float, float],
        materials: Sequence[str] | None = None,
        net_weight: float = 0.25,
    ) -> None:
        import threading

        # A number is the oxide (an int from Python callers included); a pair, bounds.
        self.oxide: float | tuple[float, float] = (
            float(oxide) if isinstance(oxide, (int, float)) else (float(oxide[0]), float(oxide[1]))
        )
        self.materials = tuple(materials) if materials is not None else None
        self.net_weight = float(net_weight)
        self.colours: list[FlakeColour] = []
        #: the running sum of the flakes' log-likelihoods (setups, oxides), when estimating
        self._log_likelihood: np.ndarray | None = None
        self.noises: list[np.ndarray] = []
        self.tiles_with_flakes = 0
        self.estimate: OxideEstimate | None = None
        self.calibration: calib.FlakeCalibration | None = None
        self.frozen = False
        self._lock = threading.Lock()

    def update(self, probs: np.ndarray, contrast: np.ndarray) -> calib.FlakeCalibration | None:
        """The calibration for this tile (the network's probabilities, restricted to the chip's
        materials, and the contrast), after the tile has had its say."""
        with self._lock:
            if self.frozen:
                return self.calibration
            if len(self.noises) < 5:
                self.noises.append(background_noise(probs, contrast))
            noise = np.median(np.stack(self.noises), axis=0)
            found = flake_colours(probs, contrast)
            if found:
                self.colours += found
                self.tiles_with_flakes += 1
                if not isinstance(self.oxide, float):
                    part = flake_log_likelihood(found, self.materials)
                    ll = self._log_likelihood
                    self._log_likelihood = part if ll is None else ll + part
            if isinstance(self.oxide, float) and len(self.colours) < MIN_VOTING_FLAKES:
                # A given oxide needs no vote; until flakes pick the setup, span them all.
                self.calibration = physics_calibration(
                    self.oxide, noise, self.materials, None, self.net_weight
                )
                return self.calibration
            if len(self.colours) < MIN_VOTING_FLAKES:
                return None
            if isinstance(self.oxide, float):
                self.estimate = OxideEstimate(
                    self.oxide,
                    (self.oxide, self.oxide),
                    len(self.colours),
                    best_setups(self.oxide, self.colours, self.materials),
                    np.zeros(0),
                )
            else:
                assert self._log_likelihood is not None
                self.estimate = oxide_from_log_likelihood(
                    self._log_likelihood, len(self.colours), self.oxide
                )
            setups = self.estimate.setups
            self.calibration = physics_calibration(
                self.estimate.oxide_nm,
                noise,
                self.materials,
                setups,
                self.net_weight,
                self.estimate,
            )
            self.frozen = (
                len(self.colours) >= FREEZE_FLAKES or self.tiles_with_flakes >= FREEZE_TILES
            )
            return self.calibration


__all__ = [
    "ClassMixture",
    "ContrastTable",
    "FlakeColour",
    "OxideEstimate",
    "SelfCalibration",
    "background_noise",
    "best_setups",
    "contrast_table",
    "estimate_oxide",
    "flake_colours",
    "flake_log_likelihood",
    "oxide_from_log_likelihood",
    "parse_oxide",
    "physics_calibration",
]
