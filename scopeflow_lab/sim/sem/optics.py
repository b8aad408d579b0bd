"""Probe optics: the defocus/astigmatism point-spread function and spatially varying blur.

Geometric optics of a converging probe with semi-angle α: a point at defocus Δz is imaged as a
uniform disk of diameter 2α|Δz|. With two-fold astigmatism the two line foci sit a distance ``a``
apart, so along the astigmatism axis the disk diameter is 2α|Δz + a/2| and across it 2α|Δz − a/2|:
the ellipse's long axis turns by 90° through focus, the single-image cue for the sign of Δz. The
disk is convolved with a Gaussian for the finite probe size. At Δz = pixel/α (the depth of field
per side, :func:`scopeflow.schemas.state.depth_of_field_um`) the disk spans two pixels.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# Smallest Gaussian σ of a kernel (pixels): stands for the integration over a pixel during the
# scan and keeps a point-sampled kernel smooth; the specimen resampling adds a similar amount.
SIGMA_FLOOR_PX = 0.5
# Blur disks this many pixels wide or more are convolved on a coarser grid (2×, 4×...): a
# strongly blurred image has no fine detail, and the kernel stays small, so cost stays flat.
COARSE_MIN_DIAMETER_PX = 8.0
# Approximate variance (px²) the anti-aliased resampling adds at any grid spacing; used to keep
# the total blur equal when a level is rendered on a coarse grid.
RESAMPLING_VARIANCE_PX2 = 0.25


def blur_diameters_px(
    defocus_um: float, semiangle_mrad: float, pixel_nm: float, astigmatism_um: float = 0.0
) -> tuple[float, float]:
    """Geometric blur-disk diameters in pixels, (along, across) the astigmatism axis.

    ``2α|Δz + a/2| / p`` along and ``2α|Δz − a/2| / p`` across; without astigmatism both are
    ``2α|Δz| / p``. Δz and a in µm, α in mrad, p in nm.
    """
    alpha = semiangle_mrad * 1e-3
    along = 2.0 * alpha * abs(defocus_um + astigmatism_um / 2.0) * 1e3 / pixel_nm
    across = 2.0 * alpha * abs(defocus_um - astigmatism_um / 2.0) * 1e3 / pixel_nm
    return along, across


def probe_sigma_px(probe_fwhm_nm: float, pixel_nm: float) -> float:
    """Gaussian σ (pixels) of the in-focus probe, floored at :data:`SIGMA_FLOOR_PX`."""
    return math.hypot(probe_fwhm_nm / FWHM_PER_SIGMA / pixel_nm, SIGMA_FLOOR_PX)


@dataclass(frozen=True)
class BlurSpec:
    """The blur at one defocus, in pixels of the frame."""

    along_px: float
    across_px: float
    angle_deg: float
    sigma_px: float

    def coarse_factor(self, max_factor: int) -> int:
        """Power-of-two grid factor at which this blur is rendered (1 = full resolution)."""
        factor = 1
        while (
            min(self.along_px, self.across_px) / (2 * factor) >= COARSE_MIN_DIAMETER_PX
            and 2 * factor <= max_factor
        ):
            factor *= 2
        return factor

    def on_grid(self, factor: int) -> BlurSpec:
        """The same total blur expressed on a grid ``factor`` times coarser.

        Second moments are matched: on the coarse grid the Gaussian floor and the resampling
        softening are larger in frame pixels, so the disk shrinks to keep the per-axis variance
        (d²/16 + σ² + resampling) what it is at full resolution.
        """
        if factor == 1:
            return self
        f2 = factor * factor
        sigma = SIGMA_FLOOR_PX
        extra = (
            (self.sigma_px**2 + RESAMPLING_VARIANCE_PX2) / f2 - sigma**2 - RESAMPLING_VARIANCE_PX2
        )

        def shrink(d: float) -> float:
            return math.sqrt(max(d * d / f2 + 16.0 * extra, 0.0))

        return BlurSpec(shrink(self.along_px), shrink(self.across_px), self.angle_deg, sigma)

    def capped(self, max_px: float) -> BlurSpec:
        """The same ellipse scaled down so that its long axis is at most ``max_px``.

        A disk much wider than the field only averages it; capping keeps kernels small.
        """
        longest = max(self.along_px, self.across_px)
        if longest <= max_px:
            return self
        scale = max_px / longest
        return BlurSpec(
            self.along_px * scale, self.across_px * scale, self.angle_deg, self.sigma_px
        )


def psf_kernel(spec: BlurSpec) -> np.ndarray:
    """The point-spread function sampled at pixel centres (float32, sums to 1).

    An elliptical uniform disk (anti-aliased edge, drawn on a grid up to 4× finer) is convolved
    with the Gaussian and point-sampled; the kernel changes continuously with the diameters,
    down to a point.
    """
    # Fine sampling matters for small disks; large ones are smooth at the pixel scale already.
    s = max(1, min(4, math.ceil(32.0 / max(spec.along_px, spec.across_px, 1.0))))
    radius = math.ceil(max(spec.along_px, spec.across_px) / 2 + 4 * spec.sigma_px)
    grid = np.arange(2 * radius * s + 1, dtype=np.float32) - radius * s  # fine samples
    theta = math.radians(spec.angle_deg)
    xx, yy = grid[None, :], grid[:, None]
    u = xx * math.cos(theta) + yy * math.sin(theta)  # along the astigmatism axis
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    a = max(spec.along_px * s / 2, 1e-3)
    b = max(spec.across_px * s / 2, 1e-3)
    # A thin ellipse gets a minor semi-axis of at least one fine sample (or its major one, if
    # smaller): the edge's distance estimate below breaks down for a thinner one (a line focus
    # at an oblique angle came out several times too wide), and two samples across still let
    # the line taper towards its ends as a collapsed disk does. The width this adds is far
    # below the Gaussian floor; small round disks are drawn as before.
    a, b = max(a, min(b, 1.0)), max(b, min(a, 1.0))
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(rho, 1e-12)
    signed = (rho - 1.0) / np.maximum(grad, 1e-12)  # ≈ distance to the edge, fine samples
    disk = np.clip(0.5 - signed, 0.0, 1.0).astype(np.float32)
    fine = cv2.GaussianBlur(
        disk,
        (0, 0),
        sigmaX=spec.sigma_px * s,
        sigmaY=spec.sigma_px * s,
        borderType=cv2.BORDER_CONSTANT,
    )
    kernel = np.ascontiguousarray(fine[::s, ::s])
    return kernel / kernel.sum(dtype=np.float64)


class KernelCache:
    """Kernels per quantized blur (0.02 px or 0.5 %, whichever is coarser), least recently used."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._kernels: OrderedDict[tuple[float, float, float, float], np.ndarray] = OrderedDict()

    @staticmethod
    def _quantize(d: float) -> float:
        step = max(0.02, 0.005 * d)
        return round(round(d / step) * step, 6)

    def get(self, spec: BlurSpec) -> np.ndarray:
        key = (
            self._quantize(spec.along_px),
            self._quantize(spec.across_px),
            round(spec.angle_deg % 180.0, 3),
            round(spec.sigma_px, 4),
        )
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = psf_kernel(BlurSpec(key[0], key[1], key[2], key[3])).astype(np.float32)
            self._kernels[key] = kernel
            if len(self._kernels) > self._size:
                self._kernels.popitem(last=False)
        else:
            self._kernels.move_to_end(key)
        return kernel


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve (the kernels are point-symmetric, so OpenCV's correlation is a convolution)."""
    if kernel.shape == (1, 1):
        return image
    return cv2.filter2D(image, cv2.CV_32F, kernel, borderType=cv2.BORDER_REPLICATE)


def defocus_levels(
    dz_min_um: float, dz_max_um: float, px_per_um: float, max_levels: int
) -> list[float]:
    """Defocus values at which to render blur for a field spanning [dz_min, dz_max].

    ``px_per_um`` converts defocus to blur-disk diameter (2α/p). One level when the diameter
    varies by less than half a pixel across the field; else up to ``max_levels`` evenly spaced
    (about one per 2 px of blur), with Δz = 0 added when focus lies inside the field because the
    blur is V-shaped in Δz and interpolation across the minimum would miss the sharp band.
    """
    spread_px = (dz_max_um - dz_min_um) * px_per_um
    if spread_px < 0.5 or max_levels < 2:
        return [(dz_min_um + dz_max_um) / 2.0]
    count = int(min(max_levels, max(2, math.ceil(spread_px / 2.0) + 1)))
    levels = list(np.linspace(dz_min_um, dz_max_um, count))
    if dz_min_um < 0.0 < dz_max_um:
        nearest = min(range(1, count - 1), key=lambda i: abs(levels[i]), default=None)
        if nearest is not None:
            levels[nearest] = 0.0
        else:
            levels.insert(1, 0.0)
    return [float(z) for z in levels]


def blend_levels(
    images: list[np.ndarray], levels_um: list[float], defocus_map_um: np.ndarray
) -> np.ndarray:
    """Per-pixel linear interpolation between images blurred at ``levels_um`` (ascending).

    Each image gets a hat-shaped weight in defocus (1 at its own level, 0 at its neighbours);
    beyond the outer levels the outer images are used as they are.
    """
    if len(images) == 1:
        return images[0]
    out = np.zeros(images[0].shape, np.float32)
    last = len(levels_um) - 1
    for k, image in enumerate(images):
        weight = np.ones(out.shape, np.float32)
        if k > 0:
            rising = (defocus_map_um - np.float32(levels_um[k - 1])) * np.float32(
                1.0 / (levels_um[k] - levels_um[k - 1])
            )
            np.minimum(weight, rising, out=weight)
        if k < last:
            falling = (np.float32(levels_um[k + 1]) - defocus_map_um) * np.float32(
                1.0 / (levels_um[k + 1] - levels_um[k])
            )
            np.minimum(weight, falling, out=weight)
        np.maximum(weight, 0.0, out=weight)
        weight *= image
        out += weight
    return out
