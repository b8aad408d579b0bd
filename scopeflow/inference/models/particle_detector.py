"""Particle detector: per-pixel particle vs background on in-situ TEM and STEM frames → instances.

- **Scale.** Frames finer than :data:`WORK_PIXEL_NM` (atomic-resolution HRTEM and HAADF, from
  the frame header's pixel size) are binned by an integer factor to about it: gold's {111}
  fringes (0.24 nm) stay 4 px apart, a 1 nm particle 16 px across, shot noise averages down,
  and a 512² frame at 0.03 nm/px costs a 256² pass. Probabilities are brought back to the
  frame's pixels before instances are cut.
- **Input** (two channels). A single-channel frame (H, W), uint16 (or uint8, or float in
  [0, 1] of full scale). After the camera offset, a robust smooth fit ``B`` of the empty
  field (:func:`~scopeflow.inference.models.flake_detector.robust_background`, degree 2 in log
  counts) and the pixel noise ``σ`` (from neighbour differences) give

  1. ``(I − B) / max(B, 4σ)``: the transmission contrast ``I/B − 1`` of mass-thickness and
     phase contrast — about −0.15 for an 8 nm gold particle in 150 nm of water — whatever the
     dose and gain, bounded where the field is dark (HAADF: bright particles on ~0 counts);
  2. ``(I − B) / 30σ``: the same in units of noise, blind to the camera's offset and gain,
     which the first channel is not.

- **Network**: the flake detector's U-Net (:func:`segnet`) with two input channels and two
  classes (background, particle). Decoys — gas bubbles and fast particles smeared into streaks
  during the exposure — are background.
- **Instances** (numpy, :class:`ParticleDetector`): pixels with particle probability above ½,
  8-connected components of at least :data:`MIN_AREA_PX` pixels (at the working scale), each a
  :class:`Detection` with its RLE mask, bbox, centroid, area and score (mean probability).
  Frames larger than :data:`TILE` at the working scale are tiled with overlap (:func:`~scopeflow.
  inference.models.flake_detector.segment`). Touching particles come out as one instance.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from scopeflow.inference.backends.base import Session
from scopeflow.inference.models.flake_detector import (
    as_unit_float,
    components,
    detection_from_mask,
    robust_background,
    segment,
    segnet,
)
from scopeflow.schemas.results import Detection

NAME = "particle_detector"
INPUT_NAMES = ("contrast",)
CHANNELS = 2  # contrast against the empty field, and in units of noise
OUTPUT_NAMES = ("probs",)
DYNAMIC_AXES = {
    "contrast": {0: "batch", 2: "height", 3: "width"},
    "probs": {0: "batch", 2: "height", 3: "width"},
}

CLASSES = ("background", "particle")
WIDTHS = (16, 32, 48, 64)
MULTIPLE = 2 ** len(WIDTHS)
CONTRAST_CLIP = (-1.0, 1.0)  # transmission contrast; beyond is noise or a bubble's rim
CONTRAST_SCALE = 0.1  # asinh(contrast / 0.1): near-linear over the particles' −0.05…−0.5
BACKGROUND_CELL_PX = 32
BACKGROUND_DEGREE = 2  # beam non-uniformity is a slow bump: degree 2 in log counts
MIN_AREA_PX = 8  # least instance area (pixels); a 2 nm particle at 0.5 nm/px covers ~12
MIN_SCORE = 0.8  # least mean probability: best F1 on validation scenes (choose_instance_thresholds)
TILE = 1024  # frames up to 1024² in one pass; larger ones tiled
DARK_FRACTION = 1e-4  # background below this fraction of full scale: no beam, no contrast
WORK_PIXEL_NM = 0.06  # finer frames are binned to about this: lattice fringes stay resolved
NOISE_FLOOR_SIGMAS = 4.0  # channel 1 divides by at least this many σ (dark fields: HAADF)
NOISE_SCALE_SIGMAS = 30.0  # channel 2: (I − B) in units of 30 σ, so ±1 (the clip) is 30 σ
OVERLAP = 64  # ≥ the U-Net's effective reach: tiled = one pass within 0.02 (tests)
#: TensorRT optimisation profile (min, opt, max): frames up to the tile in one pass
TENSORRT_PROFILE = {
    "contrast": [
        [1, CHANNELS, MULTIPLE, MULTIPLE],
        [1, CHANNELS, 512, 512],
        [1, CHANNELS, TILE, TILE],
    ]
}


def build() -> Any:
    """The particle network (torch), untrained."""
    return segnet(CHANNELS, len(CLASSES), WIDTHS, CONTRAST_CLIP, CONTRAST_SCALE)


def example_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random 512² contrast map (float32) for export, parity checks and backend timings."""
    return {"contrast": rng.normal(0.0, 0.1, (1, CHANNELS, 512, 512)).astype(np.float32)}


def bin_factor(pixel_size_nm: float | None, work_pixel_nm: float = WORK_PIXEL_NM) -> int:
    """The integer binning that brings a frame of this pixel size to about ``work_pixel_nm``
    (1 when the pixel size is unknown or already coarser)."""
    if pixel_size_nm is None or not math.isfinite(pixel_size_nm) or pixel_size_nm <= 0:
        return 1
    return max(1, round(work_pixel_nm / pixel_size_nm))


def noise_sigma(unit: np.ndarray) -> float:
    """Pixel noise σ of a frame from its neighbour differences: for Δ ~ N(0, 2σ²),
    E|Δ| = 2σ/√π. Blind to a smooth background, and never 0 on a noisy frame (a median of |Δ|
    is, on sparse HAADF counts)."""
    diff = np.abs(np.diff(unit, axis=1))
    return float(diff.mean()) * math.sqrt(math.pi) / 2.0 if diff.size else 0.0


def insitu_contrast(frame: np.ndarray, offset_dn: float = 0.0, bin_px: int = 1) -> np.ndarray:
    """The network's input (2, H/bin, W/bin) float32: contrast against the fitted empty field,
    and the same in units of noise."""
    unit = as_unit_float(frame, 1)
    if offset_dn:
        scale = np.iinfo(frame.dtype).max if frame.dtype in (np.uint8, np.uint16) else 1.0
        unit = unit - np.float32(offset_dn / scale)
    if bin_px > 1:
        h, w = unit.shape
        unit = cv2.resize(
            unit, (max(w // bin_px, 1), max(h // bin_px, 1)), interpolation=cv2.INTER_AREA
        )
    unit = np.maximum(unit, np.float32(0.0))
    background = robust_background(
        np.maximum(unit, 1e-6)[..., None], cell=BACKGROUND_CELL_PX, degree=BACKGROUND_DEGREE
    )[..., 0]
    sigma = noise_sigma(unit)
    excess = unit - background
    floor = np.maximum(background, np.float32(NOISE_FLOOR_SIGMAS * sigma))
    contrast = excess / np.maximum(floor, np.float32(1e-6))
    # Where no beam reaches the camera (a blank frame, a closed valve) there is no contrast to
    # read: 0, not the −1 that dividing noise by a near-zero background would give.
    if NOISE_FLOOR_SIGMAS * sigma < DARK_FRACTION:
        contrast[background < np.float32(DARK_FRACTION)] = 0.0
    if sigma > 0:
        in_noise = excess / np.float32(NOISE_SCALE_SIGMAS * sigma)
    else:  # a constant frame: no noise to measure contrast in
        in_noise = np.zeros_like(excess)
    return np.stack([contrast, in_noise]).astype(np.float32)


class ParticleDetector:
    """Finds particles in in-situ TEM and STEM frames with a loaded ``particle_detector`` session.

    ``offset_dn``: the camera's dark offset in the frame's units (0 for the simulator).
    ``work_pixel_nm``: frames finer than this are analysed binned to about it; the default keeps
    atomic lattice fringes. A coarser one trades the smallest particles for speed: liquid-cell
    frames at 0.5 nm/px analysed at 1 nm/px cost a quarter (``scopeflow bench particles``).
    """

    def __init__(
        self,
        session: Session,
        *,
        offset_dn: float = 0.0,
        min_area_px: int = MIN_AREA_PX,
        min_score: float = MIN_SCORE,
        tile: int = TILE,
        overlap: int = OVERLAP,
        work_pixel_nm: float = WORK_PIXEL_NM,
    ) -> None:
        if not (math.isfinite(work_pixel_nm) and work_pixel_nm > 0):
            raise ValueError(f"the working pixel size must be > 0 nm, got {work_pixel_nm}")
        self.session = session
        self.work_pixel_nm = float(work_pixel_nm)
        self.offset_dn = float(offset_dn)
        self.min_area_px = int(min_area_px)
        self.min_score = float(min_score)
        self.tile = int(tile)
        self.overlap = int(overlap)

    def probabilities(self, frame: np.ndarray, pixel_size_nm: float | None = None) -> np.ndarray:
        """Class probabilities (2, h, w) at the working scale (the frame binned by
        :func:`bin_factor`): background, particle."""
        bin_px = bin_factor(pixel_size_nm, self.work_pixel_nm)
        contrast = insitu_contrast(frame, self.offset_dn, bin_px)
        if not contrast.any():
            # A blank or constant frame (no beam, a closed valve) holds nothing to find; the
            # network was never shown one and must not be asked.
            blank = np.zeros((2, *contrast.shape[1:]), np.float32)
            blank[0] = 1.0
            return blank
        return segment(
            self.session,
            contrast,
            tile=self.tile,
            overlap=self.overlap,
            multiple=MULTIPLE,
        )

    def detect(self, frame: np.ndarray, pixel_size_nm: float | None = None) -> list[Detection]:
        """Particles in the frame, as wire-ready detections (category ``"particle"``) in the
        frame's pixels. ``pixel_size_nm`` (the header's): frames finer than
        :data:`WORK_PIXEL_NM` are analysed binned; None: as they come."""
        return self.detections(self.probabilities(frame, pixel_size_nm), frame.shape[:2])

    def detections(
        self, probs: np.ndarray, frame_shape: tuple[int, int] | None = None
    ) -> list[Detection]:
        """Instances from class probabilities (2, h, w), in a frame of ``frame_shape`` (default
        (h, w)); probabilities at a coarser working scale are interpolated to the frame's
        pixels first, and the least area scaled with them."""
        min_area = self.min_area_px
        if frame_shape is not None and tuple(frame_shape) != probs.shape[1:]:
            h, w = int(frame_shape[0]), int(frame_shape[1])
            area_ratio = (h * w) / float(probs.shape[1] * probs.shape[2])
            particle = cv2.resize(probs[1], (w, h), interpolation=cv2.INTER_LINEAR)
            probs = np.stack([1.0 - particle, particle])
            min_area = round(min_area * area_ratio)
        class_map = (probs[1] > 0.5).astype(np.uint8)
        shape = (int(probs.shape[1]), int(probs.shape[2]))
        found = []
        for comp in components(probs, class_map, (1,), min_area, self.min_score):
            x, y, _, _ = comp.bbox
            found.append(detection_from_mask(comp.mask, y, x, shape, "particle", comp.score, {}))
        return found
