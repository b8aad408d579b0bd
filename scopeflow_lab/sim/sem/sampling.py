"""SEM specimens as images: a flat specimen from a texture image (:func:`specimen_from_texture`),
and anti-aliased fields of view cut from any periodic specimen at any pixel size
(:class:`SpecimenSampler`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from scopeflow_lab.sim.sem.specimen import Specimen

# Textures are mapped onto this yield range.
TEXTURE_YIELD_MIN = 0.05
TEXTURE_YIELD_MAX = 1.0


def load_texture(texture: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
    """A 2D float32 image from an array or an image file (colour files are converted to grey)."""
    if isinstance(texture, (str, os.PathLike)):
        path = Path(texture)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(
                f"cannot read texture image {path}: missing or not an image format "
                "OpenCV reads (PNG, TIFF, JPEG...)"
            )
        if image.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            image = cv2.cvtColor(image, code)
    else:
        image = np.asarray(texture)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(
            f"a texture must be a 2D image of at least 2×2 pixels, got shape {image.shape}"
        )
    image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise ValueError("a texture must contain finite values only")
    return image


def specimen_from_texture(
    texture: np.ndarray | str | os.PathLike[str], pixel_nm: float
) -> Specimen:
    """A flat specimen whose SE yield is the image, each image pixel ``pixel_nm`` wide.

    Intensities are mapped linearly onto yields 0.05–1.0 (a constant image maps to 1.0). The image
    tiles the plane periodically; where its opposite edges differ, a seam shows in fields of view
    larger than the image.
    """
    if not (math.isfinite(pixel_nm) and pixel_nm > 0):
        raise ValueError(f"texture pixel size must be a positive number of nm, got {pixel_nm}")
    image = load_texture(texture)
    lo, hi = float(image.min()), float(image.max())
    norm = (image - lo) / (hi - lo) if hi > lo else np.ones_like(image)
    se_yield = TEXTURE_YIELD_MIN + (TEXTURE_YIELD_MAX - TEXTURE_YIELD_MIN) * norm
    return Specimen(
        name="texture",
        height_nm=np.zeros_like(se_yield),
        se_yield=np.ascontiguousarray(se_yield, dtype=np.float32),
        sample_nm=float(pixel_nm),
    )


class SpecimenSampler:
    """Cuts anti-aliased fields of view out of a periodic specimen at any pixel size.

    A box-filter pyramid (2× per level) holds the yield at coarser samplings. For a pixel size p,
    the finest level with samples ≤ p is low-pass filtered for the remaining factor r = p/s < 2
    (Gaussian σ = ½√(r²−1) samples, cached per pixel size) and then sampled bilinearly, so
    downsampling does not alias; pixels smaller than the specimen samples interpolate it.
    """

    def __init__(self, specimen: Specimen, cache_size: int = 8) -> None:
        self.specimen = specimen
        self._levels: list[tuple[np.ndarray, float, float]] = []  # (map, sample_y, sample_x)
        level = specimen.se_yield
        period_y, period_x = specimen.period_nm
        while True:
            self._levels.append((level, period_y / level.shape[0], period_x / level.shape[1]))
            if min(level.shape) < 32:
                break
            level = _half(level)
        self._filtered: dict[tuple[int, float, float], np.ndarray] = {}
        self._cache_size = cache_size

    def _level_index(self, pixel_nm: float) -> int:
        """The coarsest pyramid level whose samples are not larger than the pixel."""
        index = 0
        for i, (_, sy, sx) in enumerate(self._levels):
            if max(sy, sx) <= pixel_nm * (1 + 1e-9):
                index = i
        return index

    def _prepared(
        self, pixel_nm: float, rows: int, cols: int
    ) -> tuple[np.ndarray, float, float, tuple[int, int]]:
        """(filtered level extended by wrapping, sample_y, sample_x, period in samples).

        The level is extended by at least ``rows × cols`` samples so that any field that size
        starting inside the first period lies within the array: OpenCV's wrapping border mode
        is several times slower than reading in bounds.
        """
        index = self._level_index(pixel_nm)
        level, sy, sx = self._levels[index]
        sig_y = 0.5 * math.sqrt(max((pixel_nm / sy) ** 2 - 1.0, 0.0))
        sig_x = 0.5 * math.sqrt(max((pixel_nm / sx) ** 2 - 1.0, 0.0))
        key = (index, round(sig_y, 4), round(sig_x, 4))
        extended = self._filtered.pop(key, None)
        ny, nx = level.shape
        if extended is None or extended.shape[0] < ny + rows or extended.shape[1] < nx + cols:
            filtered = level if extended is None else extended[:ny, :nx]
            if extended is None and max(sig_y, sig_x) > 0.05:
                pad = math.ceil(4 * max(sig_y, sig_x)) + 1
                padded = np.pad(level, pad, mode="wrap")
                filtered = cv2.GaussianBlur(
                    padded, (0, 0), sigmaX=max(sig_x, 1e-3), sigmaY=max(sig_y, 1e-3)
                )[pad:-pad, pad:-pad]
            extended = np.ascontiguousarray(np.pad(filtered, ((0, rows), (0, cols)), mode="wrap"))
            while len(self._filtered) >= self._cache_size:
                self._filtered.pop(next(iter(self._filtered)))
        self._filtered[key] = extended  # re-inserted last: least recently used goes first
        return extended, sy, sx, (ny, nx)

    def sample(
        self, centre_x_nm: float, centre_y_nm: float, shape: tuple[int, int], pixel_nm: float
    ) -> np.ndarray:
        """The SE yield on a ``shape`` grid of ``pixel_nm`` pixels centred on (x, y) nm."""
        rows, cols = shape
        base, sy, sx = self._levels[self._level_index(pixel_nm)]
        # Source samples the field spans at that level, with room for interpolation.
        span_rows = math.ceil(rows * pixel_nm / sy) + 4
        span_cols = math.ceil(cols * pixel_nm / sx) + 4
        # A field many periods wide (a tiny texture) would need a huge extension: wrap instead.
        extend = span_rows <= 4 * base.shape[0] and span_cols <= 4 * base.shape[1]
        level, sy, sx, (ny, nx) = self._prepared(
            pixel_nm, span_rows if extend else 0, span_cols if extend else 0
        )
        # Physical x of output column j; level sample k is centred at (k + 0.5)·s.
        x0 = centre_x_nm - (cols - 1) / 2 * pixel_nm
        y0 = centre_y_nm - (rows - 1) / 2 * pixel_nm
        tx = (x0 / sx - 0.5) % nx  # start within the first period, read in bounds
        ty = (y0 / sy - 0.5) % ny
        m = np.array([[pixel_nm / sx, 0.0, tx], [0.0, pixel_nm / sy, ty]])
        return cv2.warpAffine(
            level,
            m,
            (cols, rows),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE if extend else cv2.BORDER_WRAP,
        )


def _half(level: np.ndarray) -> np.ndarray:
    """Halve a periodic map by 2×2 box averaging (area resampling for odd sizes)."""
    ny, nx = level.shape
    if ny % 2 == 0 and nx % 2 == 0:
        return level.reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3), dtype=np.float32)
    return cv2.resize(level, ((nx + 1) // 2, (ny + 1) // 2), interpolation=cv2.INTER_AREA)
