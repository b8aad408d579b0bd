"""Tiled inference with overlap for frames larger than a model's training size, without seams.

The frame is cut into overlapping tiles; each tile's output is weighted by a window that is one
in its interior and falls smoothly (raised cosine) to near zero across the overlap, and the
weighted sum is divided by the summed weights. Where tiles overlap, the outputs blend
continuously, so no seam survives; every pixel is covered by at least one tile's interior
weight, so the result does not depend on tile edges.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def pad_to_multiple(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad (C, H, W) so H and W are multiples of ``multiple``; returns the pad sizes."""
    _, h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, (0, 0)
    mode = "reflect" if h > ph and w > pw else "edge"
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode=mode), (ph, pw)


def _window(size: int, overlap: int) -> np.ndarray:
    """1 in the middle, a raised-cosine ramp over ``overlap`` pixels at each end (never 0)."""
    w = np.ones(size, np.float32)
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap] = ramp
        w[size - overlap:] = ramp[::-1]
    return w


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)  # the last tile ends at the border
    return starts


def tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    tile: int,
    overlap: int,
    multiple: int = 1,
) -> np.ndarray:
    """Apply ``fn`` ((C, h, w) → (C', h, w)) over ``image`` (C, H, W) in overlapping tiles.

    Frames no larger than ``tile`` go through in one pass. ``multiple``: the model's size
    constraint (e.g. 2^depth for a U-Net); inputs are reflect-padded to it and cropped back.
    """
    if image.ndim != 3:
        raise ValueError(f"expected (C, H, W), got shape {image.shape}")
    if not 0 <= 2 * overlap < tile:
        raise ValueError("overlap must be less than half the tile")
    padded, (ph, pw) = pad_to_multiple(image, multiple)
    _, h, w = padded.shape
    if h <= tile and w <= tile:
        out = fn(padded)
        return out[:, : h - ph, : w - pw]
    t = tile - tile % multiple
    step = t - 2 * overlap
    acc: np.ndarray | None = None
    weight = np.zeros((h, w), np.float32)
    ys, xs = _starts(h, t, step), _starts(w, t, step)
    for y in ys:
        for x in xs:
            th, tw = min(t, h), min(t, w)
            out = fn(padded[:, y:y + th, x:x + tw])
            wy = _window(th, overlap if len(ys) > 1 else 0)
            wx = _window(tw, overlap if len(xs) > 1 else 0)
            win = wy[:, None] * wx[None, :]
            if acc is None:
                acc = np.zeros((out.shape[0], h, w), np.float32)
            acc[:, y:y + th, x:x + tw] += out * win
            weight[y:y + th, x:x + tw] += win
    assert acc is not None
    result = acc / weight
    return result[:, : h - ph, : w - pw]
