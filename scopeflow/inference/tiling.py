"""Tiled inference with overlap for frames larger than a model's training size, without seams.

The frame is cut into tiles that overlap their neighbours by at least ``2 × overlap`` pixels.
Each tile's output is weighted by a window that is 1 in its interior, 0 over the outer half of
the overlap on every side that has a neighbour (where the network sees the tile's artificial
edge) and rises with a raised cosine in between; sides on the frame border keep full weight.
The weighted outputs are summed and divided by the summed weights. Where tiles meet, each
tile's edge zone lies inside its neighbour's full-weight interior, so for a network whose
receptive field is under ``overlap / 2`` the result equals the untiled one, and in general the
outputs blend continuously: no seam survives.
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


def _ramp(overlap: int) -> np.ndarray:
    """0 over the outer half of the overlap, then a raised cosine up to 1."""
    half = overlap // 2
    rise = overlap - half
    up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(rise) + 0.5) / rise)
    return np.concatenate([np.zeros(half), up]).astype(np.float32)


def _window(size: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    """Per-axis weight of a tile; ramps only on sides that have a neighbouring tile."""
    w = np.ones(size, np.float32)
    if overlap > 0:
        ramp = _ramp(overlap)
        if before:
            w[:overlap] = ramp
        if after:
            w[size - overlap :] = ramp[::-1]
    return w


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile starts covering ``length``, neighbours overlapping by ≥ 2·overlap."""
    if length <= tile:
        return [0]
    n = int(np.ceil((length - 2 * overlap) / (tile - 2 * overlap)))
    n = max(n, 2)
    return [round(v) for v in np.linspace(0, length - tile, n)]


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
    if not 0 <= 4 * overlap <= tile:
        raise ValueError("overlap must be at most a quarter of the tile")
    padded, (ph, pw) = pad_to_multiple(image, multiple)
    _, h, w = padded.shape
    if h <= tile and w <= tile:
        out = fn(padded)
        return out[:, : h - ph, : w - pw]
    t = tile - tile % multiple
    acc: np.ndarray | None = None
    weight = np.zeros((h, w), np.float32)
    ys, xs = _starts(h, t, overlap), _starts(w, t, overlap)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            th, tw = min(t, h), min(t, w)
            out = fn(padded[:, y : y + th, x : x + tw])
            wy = _window(th, overlap, i > 0, i < len(ys) - 1)
            wx = _window(tw, overlap, j > 0, j < len(xs) - 1)
            win = wy[:, None] * wx[None, :]
            if acc is None:
                acc = np.zeros((out.shape[0], h, w), np.float32)
            acc[:, y : y + th, x : x + tw] += out * win
            weight[y : y + th, x : x + tw] += win
    assert acc is not None
    result = acc / np.maximum(weight, 1e-12)
    return result[:, : h - ph, : w - pw]
