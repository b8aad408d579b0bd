"""Particle detector: per-pixel particle vs background on in-situ TEM frames → instances.

- **Input.** A single-channel frame (H, W), uint16 (or uint8, or float in [0, 1] of full
  scale), 512²–2048² and more. Mass-thickness contrast is multiplicative (Beer–Lambert), so the
  frame is divided by a robust smooth fit of the empty cell
  (:func:`~scopeflow.inference.models.flake_detector.robust_background`, degree 2 in log counts)
  after subtracting the camera offset: the network sees the transmission contrast
  ``I / B − 1`` — about −0.15 for an 8 nm gold particle in 150 nm of water — whatever the dose
  and gain. The noise (1/√counts: 9 % per pixel at 500 e⁻/px, 3 % at 5000) is left for the
  network to see through.
- **Network**: the flake detector's U-Net (:func:`segnet`) with one input channel and two
  classes (background, particle). Decoys — gas bubbles and fast particles smeared into streaks
  during the exposure — are background.
- **Instances** (numpy, :class:`ParticleDetector`): pixels with particle probability above ½,
  8-connected components of at least :data:`MIN_AREA_PX` pixels, each a :class:`Detection`
  with its RLE mask, bbox, centroid, area and score (mean probability). Frames larger than
  :data:`TILE` are tiled with overlap (:func:`~scopeflow.inference.models.flake_detector.
  segment`). Touching particles come out as one instance.
"""

from __future__ import annotations

from typing import Any

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
OVERLAP = 64  # ≥ the U-Net's effective reach: tiled = one pass within 0.02 (tests)
#: TensorRT optimisation profile (min, opt, max): frames up to the tile in one pass
TENSORRT_PROFILE = {"contrast": [[1, 1, MULTIPLE, MULTIPLE], [1, 1, 512, 512], [1, 1, TILE, TILE]]}


def build() -> Any:
    """The particle network (torch), untrained."""
    return segnet(1, len(CLASSES), WIDTHS, CONTRAST_CLIP, CONTRAST_SCALE)


def example_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random 512² contrast map (float32) for export, parity checks and backend timings."""
    return {"contrast": rng.normal(0.0, 0.1, (1, 1, 512, 512)).astype(np.float32)}


def insitu_contrast(frame: np.ndarray, offset_dn: float = 0.0) -> np.ndarray:
    """Transmission contrast (1, H, W) float32 against the fitted empty cell."""
    unit = as_unit_float(frame, 1)
    if offset_dn:
        scale = np.iinfo(frame.dtype).max if frame.dtype in (np.uint8, np.uint16) else 1.0
        unit = unit - np.float32(offset_dn / scale)
    unit = np.maximum(unit, np.float32(0.0))
    background = robust_background(
        np.maximum(unit, 1e-6)[..., None], cell=BACKGROUND_CELL_PX, degree=BACKGROUND_DEGREE
    )[..., 0]
    contrast = unit / np.maximum(background, np.float32(1e-6)) - np.float32(1.0)
    # Where no beam reaches the camera (a blank frame, a closed valve) there is no contrast to
    # read: 0, not the −1 that dividing noise by a near-zero background would give.
    contrast[background < np.float32(DARK_FRACTION)] = 0.0
    return contrast[None]


class ParticleDetector:
    """Finds particles in in-situ TEM frames with a loaded ``particle_detector`` session.

    ``offset_dn``: the camera's dark offset in the frame's units (0 for the simulator).
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
    ) -> None:
        self.session = session
        self.offset_dn = float(offset_dn)
        self.min_area_px = int(min_area_px)
        self.min_score = float(min_score)
        self.tile = int(tile)
        self.overlap = int(overlap)

    def probabilities(self, frame: np.ndarray) -> np.ndarray:
        """Class probabilities (2, H, W): background, particle."""
        return segment(
            self.session,
            insitu_contrast(frame, self.offset_dn),
            tile=self.tile,
            overlap=self.overlap,
            multiple=MULTIPLE,
        )

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Particles in the frame, as wire-ready detections (category ``"particle"``)."""
        return self.detections(self.probabilities(frame))

    def detections(self, probs: np.ndarray) -> list[Detection]:
        """Instances from class probabilities (2, H, W) of a frame (H, W)."""
        class_map = (probs[1] > 0.5).astype(np.uint8)
        shape = (int(probs.shape[1]), int(probs.shape[2]))
        found = []
        for comp in components(probs, class_map, (1,), self.min_area_px, self.min_score):
            x, y, _, _ = comp.bbox
            found.append(detection_from_mask(comp.mask, y, x, shape, "particle", comp.score, {}))
        return found
