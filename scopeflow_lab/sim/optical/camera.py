"""A colour machine-vision camera: illumination falloff, exposure, shot and read noise, full
well, gain, white balance, black level, 8- or 16-bit output.

Signal chain per pixel and channel c (R, G, B):

    electrons e_c = reflectance_c × V(r) × mirror_e_per_s × raw_c × exposure_s
    noisy       = min(e_c + sqrt(e_c + read_noise²)·z, full_well),  z ~ N(0, 1)
    DN_c        = black_level + gain × wb_c × noisy, rounded and clipped to the output range

With ``bayer``, each pixel keeps only its own channel of an RGGB mosaic and the other two are
interpolated from its neighbours (bilinear demosaicing, what a camera's ISP or a driver does at
the least); with ``colour_matrix`` (3×3, rows summing to 1 keep grey grey) the white-balanced
signal is mixed across channels before the black level is added, as the colour-correction
matrix of a camera's pipeline does. Both change a flake's per-channel contrast, which is why
the detector must not learn one camera's colours.

``raw_c`` is the channel's relative response to a perfect mirror under the illuminant
(:meth:`SpectralModel.raw_response`), V(r) the relative illumination (vignetting). Shot noise is
Poisson; its normal approximation with variance e_c is used, exact to well under 1 % of the
variance at the hundreds to tens of thousands of electrons of a microscope image. The white
balance is digital (it scales noise with signal), as in the camera's ISP.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

_BIT_DEPTHS = {8: np.dtype(np.uint8), 16: np.dtype(np.uint16)}


@dataclass(frozen=True)
class CameraConfig:
    """Camera parameters; defaults after a Sony IMX174 colour sensor (1920 × 1200, 5.86 µm
    pixels, ≈ 32 ke⁻ full well, ≈ 6–7 e⁻ read noise; e.g. FLIR Blackfly S BFS-U3-23S3C).

    ``shape`` (rows, cols); ``bit_depth`` 8 or 16 (the full range is used in both);
    ``exposure_s``; ``mirror_e_per_s``: electrons per second per pixel in the strongest raw
    channel when imaging a perfect mirror (lamp power × optics × QE); ``gain_dn_per_e`` (None:
    automatic, the white-balanced substrate at the chip centre reads ``auto_level`` of the range
    above the black level); ``black_level_dn`` (None: 1 % of the range); ``white_balance``:
    "mirror" (gains making a perfect reflector grey, the lamp preset: the oxide shows its own
    colour), "substrate" (the bare substrate at the chip centre made grey, as after a
    white-balance click on an empty area), explicit (R, G, B) gains, or None;
    ``vignetting_corner``: relative
    illumination at the sensor corners (cos⁴-law profile; 1 = none); ``bayer``: an RGGB mosaic
    sensor, demosaiced bilinearly; ``colour_matrix``: the 3×3 colour-correction matrix
    (row-major; None: identity).
    """

    shape: tuple[int, int] = (1200, 1920)
    pixel_um: float = 5.86
    bit_depth: int = 8
    exposure_s: float = 0.01
    mirror_e_per_s: float = 5.0e6
    full_well_e: float = 32_000.0
    read_noise_e: float = 6.5
    gain_dn_per_e: float | None = None
    auto_level: float = 0.4
    black_level_dn: float | None = None
    white_balance: str | tuple[float, float, float] | None = "mirror"
    vignetting_corner: float = 0.8
    bayer: bool = False
    colour_matrix: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if not (8 <= rows <= 8192 and 8 <= cols <= 8192):
            raise ValueError(f"camera shape must be 8–8192 px per side, got {self.shape}")
        if self.bit_depth not in _BIT_DEPTHS:
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth!r}")
        for name in ("pixel_um", "exposure_s", "mirror_e_per_s", "full_well_e"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        if not (math.isfinite(self.read_noise_e) and self.read_noise_e >= 0):
            raise ValueError("read_noise_e must be a finite non-negative number")
        if not 0.0 < self.auto_level < 1.0:
            raise ValueError("auto_level must lie within (0, 1)")
        if not 0.0 < self.vignetting_corner <= 1.0:
            raise ValueError("vignetting_corner must lie within (0, 1]")
        if self.colour_matrix is not None and (
            len(self.colour_matrix) != 9 or not all(math.isfinite(v) for v in self.colour_matrix)
        ):
            raise ValueError("colour_matrix must be nine finite numbers (3×3, row-major)")
        wb = self.white_balance
        if not (
            wb is None
            or wb in ("mirror", "substrate")
            or (isinstance(wb, tuple) and len(wb) == 3 and all(g > 0 for g in wb))
        ):
            raise ValueError(
                "white_balance must be 'mirror', 'substrate', None or three positive gains"
            )

    @property
    def dtype(self) -> np.dtype:
        return _BIT_DEPTHS[self.bit_depth]

    @property
    def full_scale_dn(self) -> float:
        return float(np.iinfo(self.dtype).max)


def relative_illumination(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], corner: float
) -> np.ndarray:
    """cos⁴-law falloff 1/(1 + (r/r₀)²)² at pixel (rows, cols), with r the distance from the
    sensor centre in half-diagonals and r₀ chosen so that the corners get ``corner``."""
    if corner >= 1.0:
        return np.ones(np.broadcast_shapes(np.shape(rows), np.shape(cols)))
    h, w = shape
    half_diag = math.hypot(h - 1, w - 1) / 2
    r2 = (
        (np.asarray(rows, float) - (h - 1) / 2) ** 2 + (np.asarray(cols, float) - (w - 1) / 2) ** 2
    ) / half_diag**2
    inv_r0_2 = corner**-0.5 - 1.0
    return 1.0 / (1.0 + r2 * inv_r0_2) ** 2


@functools.cache
def _normal_lut() -> np.ndarray:
    """256 equiprobable standard-normal quantiles, rescaled to unit variance (float32)."""
    inv = NormalDist().inv_cdf
    lut = np.array([inv((i + 0.5) / 256) for i in range(256)])
    lut /= lut.std()
    lut = (lut / math.sqrt(2.0)).astype(np.float32)  # two are summed
    lut.setflags(write=False)
    return lut


def standard_normals(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float32 N(0, 1) variates, ~5× faster than ``rng.standard_normal``.

    Each is the sum of two table quantiles indexed by random bytes (65 536 equiprobable values,
    tails to ±4σ); OpenCV's LUT does the look-ups.
    """
    count = rows * cols
    words = rng.bit_generator.random_raw((2 * count + 7) // 8)
    raw = words.view(np.uint8)[: 2 * count].reshape(2 * rows, cols)
    table = cv2.LUT(raw, _normal_lut())
    return cv2.add(table[:rows], table[rows:], dst=table[:rows])


# RGGB: which channel each pixel of a 2×2 cell measures (row, col) → channel.
_RGGB = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}
_BILINEAR = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], np.float32)


def demosaic_bilinear(rgb: np.ndarray) -> np.ndarray:
    """Sample ``rgb`` (rows, cols, 3) float32 through an RGGB mosaic and interpolate each
    channel bilinearly from the pixels that measured it (normalised convolution)."""
    rows, cols, _ = rgb.shape
    out = np.empty_like(rgb)
    for channel in range(3):
        mask = np.zeros((rows, cols), np.float32)
        for (r, c), ch in _RGGB.items():
            if ch == channel:
                mask[r::2, c::2] = 1.0
        num = cv2.filter2D(rgb[..., channel] * mask, -1, _BILINEAR, borderType=cv2.BORDER_REFLECT)
        den = cv2.filter2D(mask, -1, _BILINEAR, borderType=cv2.BORDER_REFLECT)
        out[..., channel] = num / den
    return out


class Camera:
    """The camera of :class:`CameraConfig` with its gains resolved.

    ``raw_rgb``: relative channel response to a perfect mirror; ``reference_rgb``: reflectance
    of the bare substrate at the chip centre (sets automatic gain and white balance).
    ``ideal`` turns off noise, vignetting, white balance, the black level and the full well;
    its automatic gain maps a perfect mirror in the strongest channel to full scale, so the
    image is linear in reflectance and never saturates.
    """

    def __init__(
        self,
        config: CameraConfig,
        raw_rgb: np.ndarray,
        reference_rgb: np.ndarray,
        *,
        ideal: bool = False,
    ) -> None:
        self.config = config
        self.ideal = ideal
        self.raw_rgb = np.asarray(raw_rgb, float)
        self.e_per_reflectance = config.mirror_e_per_s * config.exposure_s * self.raw_rgb
        reference_e = self.e_per_reflectance * np.asarray(reference_rgb, float)
        wb = config.white_balance
        if ideal or wb is None:
            self.white_balance = np.ones(3)
        elif wb == "mirror":
            self.white_balance = self.raw_rgb.max() / self.raw_rgb
        elif wb == "substrate":
            self.white_balance = reference_e.max() / reference_e
        else:
            self.white_balance = np.array(wb, float)
        full = config.full_scale_dn
        if ideal:
            self.black_level_dn = 0.0
        elif config.black_level_dn is None:
            self.black_level_dn = round(0.01 * full)
        else:
            self.black_level_dn = float(config.black_level_dn)
        if config.gain_dn_per_e is not None:
            self.gain_dn_per_e = float(config.gain_dn_per_e)
        elif ideal:  # linear, and a perfect mirror just fills the range: nothing saturates
            self.gain_dn_per_e = full / float(self.e_per_reflectance.max())
        else:
            brightest = float((reference_e * self.white_balance).max())
            self.gain_dn_per_e = config.auto_level * (full - self.black_level_dn) / brightest
        self._vignetting: dict[tuple[int, int], np.ndarray] = {}

    @property
    def dn_per_e_rgb(self) -> np.ndarray:
        """Digital numbers per electron in each channel: gain × white balance."""
        return self.gain_dn_per_e * self.white_balance

    def vignetting(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Relative illumination at the given sensor pixels (1 everywhere when ideal)."""
        if self.ideal:
            return np.ones(np.broadcast_shapes(np.shape(rows), np.shape(cols)))
        return relative_illumination(rows, cols, self.config.shape, self.config.vignetting_corner)

    def expected_dn(self, electrons: np.ndarray) -> np.ndarray:
        """The noise-free image in DN (float32, clipped like the output), from mean electrons
        of shape (rows, cols, 3)."""
        e = electrons if self.ideal else np.minimum(electrons, np.float32(self.config.full_well_e))
        dn = cv2.multiply(e, tuple(float(g) for g in self.dn_per_e_rgb) + (0.0,))
        dn = cv2.add(dn, (float(self.black_level_dn),) * 3 + (0.0,))
        return np.clip(dn, 0.0, self.config.full_scale_dn)

    def read_out(self, electrons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One exposure: mean electrons (rows, cols, 3) float32 → the output image (dtype of the
        config). Noise-free (rounded expectation) when ideal."""
        cfg = self.config
        rows, cols, _ = electrons.shape
        e = np.ascontiguousarray(electrons, np.float32).reshape(rows, cols * 3)
        # In-place OpenCV passes: a 1920 × 1200 × 3 frame is 28 MB of float32 per pass.
        if self.ideal:
            x = np.maximum(e, np.float32(0.0))
        else:
            x = cv2.add(e, float(cfg.read_noise_e**2))  # variance: shot + read
            cv2.sqrt(x, dst=x)
            cv2.multiply(x, standard_normals(rng, rows, cols * 3), dst=x)
            cv2.add(x, e, dst=x)
            np.clip(x, np.float32(0.0), np.float32(cfg.full_well_e), out=x)
        x3 = x.reshape(rows, cols, 3)
        if cfg.bayer and not self.ideal:
            x3 = demosaic_bilinear(x3)
        # Scalars for 3-channel images are 4-tuples: OpenCV 4 reads a number as (v, 0, 0, 0).
        cv2.multiply(x3, tuple(float(g) for g in self.dn_per_e_rgb) + (0.0,), dst=x3)
        if cfg.colour_matrix is not None and not self.ideal:
            matrix = np.asarray(cfg.colour_matrix, np.float32).reshape(3, 3)
            x3 = np.maximum(cv2.transform(x3, matrix), np.float32(0.0))
        if cfg.bit_depth == 8:  # adds, rounds and saturates in one pass (x ≥ 0 here)
            return cv2.convertScaleAbs(x3, alpha=1.0, beta=float(self.black_level_dn))
        cv2.add(x3, (float(self.black_level_dn) + 0.5,) * 3 + (0.0,), dst=x3)
        np.minimum(x3, np.float32(cfg.full_scale_dn), out=x3)
        return x3.astype(cfg.dtype)  # truncation after +0.5 rounds
