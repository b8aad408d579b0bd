"""Flat field and white balance of one chip under one lamp, from the scan's own blank tiles.

The detector does not need them: it divides every tile by its own fitted substrate, so lamp
colour, vignetting and exposure cancel in the contrast it classifies (tested). People do: a
thumbnail or an overview with a yellow cast and dark corners is hard to judge by eye. So the
search collects tiles with no flake, no dirt and an even substrate as it goes, and from their
per-pixel median builds

- the **flat field**: each channel's illumination profile (vignetting), normalised to mean 1;
- the **white balance**: per-channel gains that make the bare substrate grey.

Thumbnails are written corrected (``correct``), the flat field and gains are saved beside the
catalog (``flat_field.json`` and ``flat_field.png``) with an id that the catalog records. A
given reference (``--flat-field FILE``: an image of bare substrate or a white target) replaces
the blank tiles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GRID = (30, 48)  # rows, cols of the stored profile: vignetting is smooth
MIN_BLANK_TILES = 3  # fewer and a stray object could still show in the median
MAX_BLANK_TILES = 25
EVEN_TOLERANCE = 0.08  # a blank tile's cells stay within ±8 % of a smooth fit (no flakes, no edge)


def _cells(pixels: np.ndarray) -> np.ndarray:
    """(GRID, 3) float32 cell means of an RGB frame, in fractions of full scale."""
    x = pixels.astype(np.float32)
    if pixels.dtype == np.uint8:
        x /= 255.0
    elif pixels.dtype == np.uint16:
        x /= 65535.0
    return cv2.resize(x, (GRID[1], GRID[0]), interpolation=cv2.INTER_AREA)


def _smooth(cells: np.ndarray, degree: int = 4) -> np.ndarray:
    """A degree-4 polynomial fit of log(cells) per channel: what vignetting and a lamp's
    gradient look like, and nothing a flake or the chip's edge does."""
    rows, cols = cells.shape[:2]
    y, x = np.mgrid[0:rows, 0:cols]
    x = x.ravel() / (cols - 1) * 2 - 1
    y = y.ravel() / (rows - 1) * 2 - 1
    design = np.stack(
        [x**i * y**j for i in range(degree + 1) for j in range(degree + 1 - i)], axis=1
    )
    logs = np.log(cells.reshape(-1, 3))
    coef, *_ = np.linalg.lstsq(design, logs, rcond=None)
    return np.exp(design @ coef).reshape(cells.shape).astype(np.float32)


class FlatField:
    """Accumulates blank tiles; gives the flat field and white balance once it has enough."""

    def __init__(self, reference: np.ndarray | None = None) -> None:
        self._cells: list[np.ndarray] = []
        self.source = "blank tiles"
        if reference is not None:
            self._cells = [_cells(reference)]
            self.source = "reference image"

    @property
    def tiles(self) -> int:
        return len(self._cells)

    @property
    def ready(self) -> bool:
        return self.source == "reference image" or len(self._cells) >= MIN_BLANK_TILES

    def offer(self, pixels: np.ndarray, detections: int) -> bool:
        """Take a tile as blank if it has no detection and an even substrate; True if taken."""
        if self.source != "blank tiles" or detections or len(self._cells) >= MAX_BLANK_TILES:
            return False
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            return False
        cells = _cells(pixels)
        if np.any(cells <= 0):
            return False
        smooth = _smooth(cells)
        if np.abs(cells / smooth - 1.0).max() > EVEN_TOLERANCE:
            return False  # something in it (a flake below the detector's floor, the chip edge)
        self._cells.append(cells)
        return True

    def profile(self) -> np.ndarray:
        """(GRID, 3) median of the blank tiles' cell means."""
        if not self._cells:
            raise ValueError("no blank tiles yet")
        return np.median(np.stack(self._cells), axis=0)

    def flat(self) -> np.ndarray:
        """(GRID, 3) illumination per channel, mean 1."""
        p = self.profile()
        return p / p.reshape(-1, 3).mean(axis=0)

    def gains(self) -> np.ndarray:
        """(3,) white balance: makes the substrate's mean grey at its brightest channel."""
        level = self.profile().reshape(-1, 3).mean(axis=0)
        return level.max() / level

    @property
    def id(self) -> str:
        body = np.round(self.profile(), 4).tobytes()
        return "ff-" + hashlib.sha256(body).hexdigest()[:10]

    def correct(self, pixels: np.ndarray) -> np.ndarray:
        """The frame (RGB, same dtype) divided by the flat field and white-balanced."""
        h, w = pixels.shape[:2]
        scale = cv2.resize(self.flat().astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        scale = self.gains().astype(np.float32) / np.maximum(scale, 1e-3)
        out = pixels.astype(np.float32) * scale
        top = float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind == "u" else 1.0
        return np.clip(out, 0, top).astype(pixels.dtype)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "tiles": self.tiles,
            "white_balance_rgb": [round(float(g), 5) for g in self.gains()],
            "corner_to_centre_rgb": [
                round(float(v), 4)
                for v in self.flat()[0, 0] / self.flat()[GRID[0] // 2, GRID[1] // 2]
            ],
            "grid": list(GRID),
            "flat_rgb": np.round(self.flat(), 5).tolist(),
        }

    def save(self, out: Path) -> Path:
        """``flat_field.json`` and a picture of the profile (``flat_field.png``)."""
        path = out / "flat_field.json"
        path.write_text(json.dumps(self.to_json()) + "\n")
        picture = np.clip(self.flat() / self.flat().max() * 255, 0, 255).astype(np.uint8)
        big = cv2.resize(picture, (GRID[1] * 8, GRID[0] * 8), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(out / "flat_field.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
        return path
