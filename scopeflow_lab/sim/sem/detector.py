"""Scan and detection: dose, shot and read noise, gain/offset, saturation, line jitter, charging.

The mean number of detected secondary electrons in a pixel is ``dose × SE yield`` (blurred by the
probe). The detector counts them with Poisson statistics, adds Gaussian read noise (e⁻ rms), then
maps electrons to digital numbers: ``DN = offset + gain × electrons``, rounded and clipped to the
output dtype, which is where bright features saturate.

Speed matters here (a frame must be ready within a few ms), so Poisson and normal variates come
from quantile tables indexed by the bits of one 64-bit random word per pixel, not from numpy's
per-sample Poisson sampler, which is about ten times slower.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

_U_BITS = 11  # quantile resolution of the Poisson table: 2048 levels of the CDF
_U_LEVELS = 1 << _U_BITS
_NORMAL_BITS = 15  # normal quantiles: 32768 levels, tails cut at ±4σ
_DITHER_BITS = 32 - _U_BITS - _NORMAL_BITS
# Table rows are evenly spaced in sqrt(mean), the variance-stabilising scale of the Poisson law:
# row j holds the mean (j/16)², so neighbouring rows differ by ≈ sqrt(mean)/8 e⁻.
_ROWS_PER_SQRT_E = 16
LAMBDA_TABLE_MAX = 4096.0  # larger means use the normal approximation (skewness < 1.6 %)


@functools.cache
def _poisson_table() -> np.ndarray:
    """``table[j, i]`` = the Poisson((j/16)²) quantile at probability (i+½)/4096 (uint16)."""
    rows = int(math.sqrt(LAMBDA_TABLE_MAX) * _ROWS_PER_SQRT_E) + 1
    means = (np.arange(rows) / _ROWS_PER_SQRT_E) ** 2
    k_max = int(means[-1] + 12 * math.sqrt(means[-1]) + 40)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, k_max + 1)))])
    u = (np.arange(_U_LEVELS) + 0.5) / _U_LEVELS
    table = np.zeros((rows, _U_LEVELS), np.uint16)
    for j, lam in enumerate(means[1:], start=1):
        lo = max(0, int(lam - 12 * math.sqrt(lam) - 10))
        hi = int(lam + 12 * math.sqrt(lam) + 40)
        k = np.arange(lo, hi + 1)
        cdf = np.cumsum(np.exp(k * math.log(lam) - lam - log_factorial[k]))
        table[j] = lo + np.minimum(np.searchsorted(cdf, u, side="left"), len(k) - 1)
    table.setflags(write=False)
    return table


@functools.cache
def _normal_table() -> np.ndarray:
    """Standard normal quantiles at (i+½)/16384 (float32)."""
    inv = NormalDist().inv_cdf
    levels = 1 << _NORMAL_BITS
    table = np.array([inv((i + 0.5) / levels) for i in range(levels)], np.float32)
    table.setflags(write=False)
    return table


_CHUNK = 32768  # pixels per pass: the temporaries and the used table rows stay in cache


def _noise_chunk(lam: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    table = _poisson_table()
    normals = _normal_table()
    n = lam.size
    bits = rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]
    dither = (bits >> np.uint32(32 - _DITHER_BITS)).astype(np.float32)
    dither *= np.float32(1.0 / (1 << _DITHER_BITS))
    dither += np.float32(0.5 / (1 << _DITHER_BITS))
    row_f = np.sqrt(lam)
    row_f *= np.float32(_ROWS_PER_SQRT_E)
    row_f += dither
    row = row_f.astype(np.int32)  # truncation is floor: everything is non-negative
    np.minimum(row, np.int32(table.shape[0] - 1), out=row)
    row <<= np.int32(_U_BITS)
    row |= (bits & np.uint32(_U_LEVELS - 1)).astype(np.int32)
    counts = table.take(row).astype(np.float32)
    gauss = normals.take((bits >> np.uint32(_U_BITS)) & np.uint32((1 << _NORMAL_BITS) - 1))
    big = lam > LAMBDA_TABLE_MAX
    if big.any():  # beyond the table the Poisson law is normal to < 2 % skewness
        # The quantile and dither bits are free here: 11 + 4 of them index a second normal.
        spare = ((bits[big] & np.uint32(_U_LEVELS - 1)) << np.uint32(4)) | (
            bits[big] >> np.uint32(28)
        )
        counts[big] = np.round(lam[big] + np.sqrt(lam[big]) * normals.take(spare))
    return counts, gauss


def _chunks(mean_e: np.ndarray):
    """Flat non-negative float32 chunks of ``mean_e`` with their slices."""
    flat = np.ravel(mean_e)
    for start in range(0, flat.size, _CHUNK):
        part = slice(start, min(start + _CHUNK, flat.size))
        lam = np.maximum(flat[part].astype(np.float32, copy=False), np.float32(0.0))
        yield part, lam


def shot_and_read_noise(
    mean_e: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts with the given means, and independent standard normals (both float32).

    One 32-bit random word per pixel: 11 bits pick the Poisson quantile, 15 bits the normal one,
    6 bits dither the choice between the two table rows around the mean (keeping the mean right;
    the extra variance is below 0.5 %). The quantile grid of 1/2048 cuts only the far tails
    (beyond ±3.5σ), which lowers the variance by about 0.2 %.
    """
    counts = np.empty(np.size(mean_e), np.float32)
    gauss = np.empty(np.size(mean_e), np.float32)
    for part, lam in _chunks(mean_e):
        counts[part], gauss[part] = _noise_chunk(lam, rng)
    return counts.reshape(np.shape(mean_e)), gauss.reshape(np.shape(mean_e))


def charging_factor(elapsed_s: float, fraction: float, tau_s: float) -> float:
    """Signal multiplier from specimen charging: 1 + fraction·(1 − exp(−t/τ))."""
    if fraction == 0.0 or elapsed_s <= 0.0:
        return 1.0
    return 1.0 + fraction * (1.0 - math.exp(-elapsed_s / tau_s))


def jitter_lines(image: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Shift each scan line horizontally by its own (sub-pixel) amount."""
    rows, cols = image.shape
    map_x = np.arange(cols, dtype=np.float32)[None, :] + shifts_px.astype(np.float32)[:, None]
    map_y = np.broadcast_to(np.arange(rows, dtype=np.float32)[:, None], (rows, cols))
    return cv2.remap(
        image, map_x, np.ascontiguousarray(map_y), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


@dataclass(frozen=True)
class Detector:
    """An SE detector chain: Poisson counting, read noise, gain, offset, rounding, clipping."""

    gain_dn_per_e: float
    offset_dn: float
    read_noise_e: float
    dtype: np.dtype

    @property
    def full_scale_dn(self) -> float:
        return float(np.iinfo(self.dtype).max)

    def expected_dn(self, mean_e: np.ndarray) -> np.ndarray:
        """The noise-free image in DN (float32, clipped like the real output)."""
        out = mean_e * np.float32(self.gain_dn_per_e) + np.float32(self.offset_dn)
        return np.clip(out, 0.0, self.full_scale_dn).astype(np.float32, copy=False)

    def detect(self, mean_e: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One noisy frame in the output dtype."""
        out = np.empty(np.size(mean_e), self.dtype)
        gain = np.float32(self.gain_dn_per_e)
        offset = np.float32(self.offset_dn + 0.5)  # +0.5, then truncation, rounds to nearest
        read_noise = np.float32(self.read_noise_e)
        for part, lam in _chunks(mean_e):
            electrons, gauss = _noise_chunk(lam, rng)
            if read_noise > 0:
                gauss *= read_noise
                electrons += gauss
            electrons *= gain
            electrons += offset
            np.clip(electrons, 0.0, self.full_scale_dn, out=electrons)
            out[part] = electrons  # float → integer assignment truncates
        return out.reshape(np.shape(mean_e))
