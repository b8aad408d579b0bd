"""A contact sheet: thumbnails of a dataset's images with the ground-truth outlines drawn on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from scopeflow_lab.sim.truth import AnnotatedImage

THUMB_PX = 320
MAX_TILES = 16
# BGR colours per category, in order of first appearance.
PALETTE = [
    (0, 255, 255),
    (255, 0, 255),
    (0, 200, 0),
    (255, 128, 0),
    (0, 0, 255),
    (255, 255, 0),
    (128, 0, 255),
    (255, 255, 255),
]


def to_display(image: np.ndarray) -> np.ndarray:
    """8-bit BGR for display. Colour images keep their colours (16-bit scaled linearly);
    grey 16-bit images are stretched between their 0.5 and 99.5 percentiles."""
    img = image.astype(np.float32)
    if image.dtype != np.uint8 and img.ndim == 3:
        img *= 255.0 / float(np.iinfo(image.dtype).max)
    elif image.dtype != np.uint8:
        lo, hi = np.percentile(img, (0.5, 99.5))
        img = (img - lo) * (255.0 / max(hi - lo, 1e-6))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def render(samples: Sequence[AnnotatedImage], labels: Sequence[str] | None = None) -> np.ndarray:
    """A grid of up to 16 thumbnails with each object's outline in its category's colour."""
    samples = list(samples)[:MAX_TILES]
    if not samples:
        raise ValueError("no images to show")
    colours: dict[str, tuple[int, int, int]] = {}
    tiles = []
    for k, sample in enumerate(samples):
        bgr = to_display(sample.image)
        scale = THUMB_PX / max(bgr.shape[:2])
        thumb = cv2.resize(
            bgr,
            (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
            interpolation=cv2.INTER_AREA,
        )
        for obj in sample.objects:  # outlines drawn on the thumbnail, so they stay crisp
            colour = colours.setdefault(obj.category, PALETTE[len(colours) % len(PALETTE)])
            contours, _ = cv2.findContours(
                obj.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            scaled = [np.round(c * scale).astype(np.int32) for c in contours]
            cv2.drawContours(thumb, scaled, -1, colour, 1)
        canvas = np.zeros((THUMB_PX, THUMB_PX, 3), np.uint8)
        canvas[: thumb.shape[0], : thumb.shape[1]] = thumb
        text = labels[k] if labels else f"#{k}"
        cv2.putText(
            canvas,
            text,
            (4, THUMB_PX - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        tiles.append(canvas)
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.zeros((rows * THUMB_PX, cols * THUMB_PX, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * THUMB_PX : (r + 1) * THUMB_PX, c * THUMB_PX : (c + 1) * THUMB_PX] = tile
    legend = np.zeros((24, sheet.shape[1], 3), np.uint8)
    x = 4
    for name, colour in colours.items():
        cv2.putText(legend, name, (x, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        x += 12 * len(name) + 20
    return np.vstack([sheet, legend])
