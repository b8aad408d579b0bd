"""Image formation in liquid-cell TEM: Beer–Lambert counts, transfer functions, noise, camera.

After Yao et al. 2020 (ACS Cent. Sci. 6, 1421; code: github.com/chenlabUIUC/simulatedLPTEM):

1. Mean counts per pixel (Beer–Lambert, mass-thickness contrast)::

       N = dose · exp(−(t_p/λ_p + (t_w − t_p)/λ_w + t_SiNx/λ_SiNx))

   A particle of projected thickness t_p displaces as much water (the liquid layer has a fixed
   thickness t_w between the windows); a gas bubble is a "particle" with λ = ∞. :class:`Canvas`
   draws each object only inside its bounding box, as a factor exp(−Δτ) on the empty cell's
   counts; a fast object's factor is blurred along its path during the exposure.
2. Defocus (optional, off at Δz = 0): the linear transfer of an amplitude object,
   ``cos(π λ_e Δz q²) · exp(−(π α Δz q)²)`` (spherical aberration neglected: at these
   resolutions ``π/2·Cs·λ³·q⁴`` < 0.05 rad), applied to the mean counts.
3. Poisson counting of the electrons (the SEM simulator's fast table sampler).
4. The empirical radial detector transfer function (a Lorentzian plus a floor, the form fitted
   to CCD/scintillator MTFs by Meyer & Kirkland 2000; Yao et al. measure theirs from the power
   spectrum of empty liquid frames and apply it after the noise, as here)::

       T(q) = floor + (1 − floor) / (1 + (q / q_half)²),   q in cycles/px, T(0) = 1

   It blurs the counted electrons, noise included: white noise of variance μ leaves with
   variance μ·mean(T²) over the frequency grid.
5. Read noise (e⁻ rms), camera gain to DN and offset, rounding, clipping to uint16.

Filters are built once per frame shape (and per defocus) and applied as circular convolutions
with OpenCV's real DFT, in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from scopeflow_lab.sim.insitu.particles import Shape
from scopeflow_lab.sim.sem.detector import shot_and_read_noise

_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
_LIGHT_SPEED_M_PER_S = 299_792_458.0
_UINT16_MAX = float(np.iinfo(np.uint16).max)
_DEFOCUS_FILTERS_KEPT = 4
_MAX_STREAK_PX = 4096.0


@dataclass(frozen=True)
class LiquidCell:
    """The liquid layer and the two SiNx windows the beam crosses (thicknesses and mean free
    paths in nm; defaults from Yao et al. 2020)."""

    water_thickness_nm: float = 150.0
    sinx_thickness_nm: float = 100.0
    lambda_water_nm: float = 185.0
    lambda_sinx_nm: float = 144.0

    def background_optical_depth(self) -> float:
        """Σ t/λ of the empty cell."""
        return (
            self.water_thickness_nm / self.lambda_water_nm
            + self.sinx_thickness_nm / self.lambda_sinx_nm
        )

    def excess_optical_depth(self, thickness_nm: np.ndarray, lambda_nm: float) -> np.ndarray:
        """Optical depth an object adds to the empty cell: its own, less the water it displaces
        (at most the whole layer). ``lambda_nm = inf`` is a gas bubble."""
        t = np.asarray(thickness_nm, np.float32)
        own = t * np.float32(1.0 / lambda_nm) if math.isfinite(lambda_nm) else np.zeros_like(t)
        displaced = np.minimum(t, np.float32(self.water_thickness_nm))
        return own - displaced * np.float32(1.0 / self.lambda_water_nm)

    def transmission(self, thickness_nm: float = 0.0, lambda_nm: float = math.inf) -> float:
        """Fraction of the dose reaching the camera through an object of this thickness."""
        excess = float(self.excess_optical_depth(np.float32(thickness_nm), lambda_nm))
        return math.exp(-(self.background_optical_depth() + excess))


def electron_wavelength_nm(voltage_kv: float) -> float:
    """Relativistic electron wavelength, nm (2.508 pm at 200 kV)."""
    energy_j = voltage_kv * 1e3 * _ELEMENTARY_CHARGE_C
    momentum = math.sqrt(
        2.0
        * _ELECTRON_MASS_KG
        * energy_j
        * (1.0 + energy_j / (2.0 * _ELECTRON_MASS_KG * _LIGHT_SPEED_M_PER_S**2))
    )
    return _PLANCK_J_S / momentum * 1e9


def detector_mtf(
    q_cycles_per_px: np.ndarray, q_half_cycles_per_px: float, floor: float
) -> np.ndarray:
    """The empirical radial transfer function ``floor + (1 − floor)/(1 + (q/q_half)²)``."""
    q = np.asarray(q_cycles_per_px, np.float64)
    return floor + (1.0 - floor) / (1.0 + (q / q_half_cycles_per_px) ** 2)


def defocus_transfer(
    q_per_nm: np.ndarray, defocus_um: float, wavelength_nm: float, illumination_mrad: float
) -> np.ndarray:
    """Amplitude-contrast transfer at defocus Δz: cos(π λ Δz q²) · exp(−(π α Δz q)²)."""
    q = np.asarray(q_per_nm, np.float64)
    dz_nm = defocus_um * 1e3
    chi = math.pi * wavelength_nm * dz_nm * q * q
    envelope = np.exp(-((math.pi * illumination_mrad * 1e-3 * dz_nm * q) ** 2))
    return np.cos(chi) * envelope


def radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """|q| in cycles/px on the half-plane grid of a real FFT (rows × (cols//2 + 1))."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.sqrt(fy * fy + fx * fx)


class FourierFilter:
    """A real, even filter applied as a circular convolution (OpenCV real DFT, float32).

    Built from the filter's values on the real-FFT half-plane; ``noise_gain`` is mean(T²) over
    the full frequency grid (= Σ kernel², Parseval): the variance factor for white noise.
    """

    def __init__(self, shape: tuple[int, int], half_plane_gain: np.ndarray) -> None:
        kernel = np.fft.irfft2(half_plane_gain, s=shape)
        self.shape = shape
        self.noise_gain = float(np.sum(kernel * kernel))
        self._spectrum = cv2.dft(kernel.astype(np.float32))

    def apply(self, image: np.ndarray) -> np.ndarray:
        spectrum = cv2.dft(np.ascontiguousarray(image, np.float32))
        cv2.mulSpectrums(spectrum, self._spectrum, 0, spectrum)  # in place
        return cv2.idft(spectrum, flags=cv2.DFT_SCALE | cv2.DFT_REAL_OUTPUT)


@dataclass(frozen=True)
class Optics:
    """Transfer-function parameters: detector MTF (``mtf_half_cycles_per_px``, ``mtf_floor``),
    and, for defocus, beam voltage and illumination semi-angle (spatial coherence)."""

    mtf_half_cycles_per_px: float = 0.25
    mtf_floor: float = 0.1
    voltage_kv: float = 200.0
    illumination_mrad: float = 0.5


@dataclass(frozen=True)
class CameraModel:
    """Counts to digital numbers: ``DN = offset + gain × (electrons + read noise)``, rounded and
    clipped to uint16. A counting direct detector has gain 1, offset 0, no read noise."""

    gain_dn_per_e: float = 1.0
    offset_dn: float = 0.0
    read_noise_e: float = 0.0

    def to_dn(self, electrons: np.ndarray, gauss: np.ndarray | None = None) -> np.ndarray:
        """uint16 frame from electrons per pixel (float32, modified in place)."""
        if gauss is not None and self.read_noise_e > 0:
            gauss *= np.float32(self.read_noise_e)
            electrons += gauss
        electrons *= np.float32(self.gain_dn_per_e)
        electrons += np.float32(self.offset_dn + 0.5)  # +0.5 then truncation rounds
        np.clip(electrons, 0.0, _UINT16_MAX, out=electrons)
        return electrons.astype(np.uint16)


class Imager:
    """Mean counts → uint16 frame, for one frame shape and pixel size. Caches its filters."""

    def __init__(
        self,
        shape: tuple[int, int],
        pixel_nm: float,
        optics: Optics,
        camera: CameraModel,
        *,
        transfer: bool = True,
    ) -> None:
        self.shape = shape
        self.pixel_nm = pixel_nm
        self.optics = optics
        self.camera = camera
        self.transfer = transfer
        self._mtf: FourierFilter | None = None
        self._defocus: dict[float, FourierFilter] = {}

    @property
    def mtf(self) -> FourierFilter:
        """The detector transfer function for this frame shape (built on first use)."""
        if self._mtf is None:
            o = self.optics
            gain = detector_mtf(radial_frequency(self.shape), o.mtf_half_cycles_per_px, o.mtf_floor)
            self._mtf = FourierFilter(self.shape, gain)
        return self._mtf

    def defocus_filter(self, defocus_um: float) -> FourierFilter:
        """The defocus transfer at ``defocus_um`` (built on first use; the last four kept)."""
        key = round(float(defocus_um), 6)
        if key not in self._defocus:
            if len(self._defocus) >= _DEFOCUS_FILTERS_KEPT:
                self._defocus.pop(next(iter(self._defocus)))
            q_per_nm = radial_frequency(self.shape) / self.pixel_nm
            gain = defocus_transfer(
                q_per_nm,
                key,
                electron_wavelength_nm(self.optics.voltage_kv),
                self.optics.illumination_mrad,
            )
            self._defocus[key] = FourierFilter(self.shape, gain)
        return self._defocus[key]

    def expose(
        self,
        mean_counts: np.ndarray,
        rng: np.random.Generator,
        *,
        ideal: bool = False,
        defocus_um: float = 0.0,
    ) -> np.ndarray:
        """One frame. ``ideal``: the noise-free Beer–Lambert counts, without any transfer
        function, in DN. ``mean_counts`` is left unchanged."""
        if ideal:
            return self.camera.to_dn(mean_counts.astype(np.float32, copy=True))
        mean = mean_counts
        if self.transfer and defocus_um != 0.0:
            mean = np.maximum(self.defocus_filter(defocus_um).apply(mean), np.float32(0.0))
        counts, gauss = shot_and_read_noise(mean, rng)
        if self.transfer:
            counts = self.mtf.apply(counts)
        return self.camera.to_dn(counts, gauss)


def line_kernel(dx_px: float, dy_px: float) -> np.ndarray:
    """Normalised anti-aliased segment from −(dx, dy)/2 to +(dx, dy)/2 about the kernel centre:
    the blur of uniform motion by (dx, dy) px during an exposure (point-symmetric, so
    correlation and convolution agree)."""
    half_w = math.ceil(abs(dx_px) / 2.0) + 1
    half_h = math.ceil(abs(dy_px) / 2.0) + 1
    kernel = np.zeros((2 * half_h + 1, 2 * half_w + 1), np.float32)
    scale = 16  # cv2.line's 4 fractional bits: endpoints to 1/16 px
    p0 = (round((half_w - dx_px / 2.0) * scale), round((half_h - dy_px / 2.0) * scale))
    p1 = (round((half_w + dx_px / 2.0) * scale), round((half_h + dy_px / 2.0) * scale))
    cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA, 4)
    # OpenCV's anti-aliased ends are not quite symmetric: symmetrise, so the streak's centroid
    # is the path's midpoint.
    kernel += kernel[::-1, ::-1].copy()
    total = float(kernel.sum())
    if total <= 0.0:
        kernel[half_h, half_w] = 1.0
        return kernel
    return kernel / np.float32(total)


class Projected(Protocol):
    """What the canvas needs of a shape: its bound and its projected thickness map."""

    def bound_radius_nm(self) -> float: ...

    def thickness_nm(
        self, dx_nm: np.ndarray, dy_nm: np.ndarray, pixel_nm: float
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Footprint:
    """Where one object landed: its bounding box, the footprint inside it, the centroid (px) and
    whether the frame edge cuts it."""

    rows: slice
    cols: slice
    inside: np.ndarray
    centroid_xy_px: tuple[float, float]
    truncated: bool

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The footprint as a full-frame boolean mask."""
        full = np.zeros(shape, bool)
        full[self.rows, self.cols] = self.inside
        return full


class Canvas:
    """Mean counts of one frame, built object by object: each object multiplies the empty-cell
    counts by exp(−Δτ) inside its bounding box only. Coordinates are frame pixels (x = column,
    y = row; pixel centres at integers)."""

    def __init__(
        self, shape: tuple[int, int], pixel_nm: float, cell: LiquidCell, background_counts: float
    ) -> None:
        self.shape = shape
        self.pixel_nm = pixel_nm
        self.cell = cell
        self.counts = np.full(shape, background_counts, np.float32)

    def draw(
        self, shape: Projected, x_px: float, y_px: float, lambda_nm: float
    ) -> Footprint | None:
        """Attenuate by an object centred at (x, y) px; None when it is out of view."""
        half = shape.bound_radius_nm() / self.pixel_nm + 1.0  # +1: anti-aliased edges
        box = self._box(x_px, y_px, half, half)
        if box is None:
            return None
        rows, cols, clipped = box
        dx, dy = self._offsets_nm(rows, cols, x_px, y_px)
        thickness, inside = shape.thickness_nm(dx, dy, self.pixel_nm)
        if not inside.any():
            return None
        self.counts[rows, cols] *= np.exp(-self.cell.excess_optical_depth(thickness, lambda_nm))
        return Footprint(
            rows, cols, inside, (x_px, y_px), self._truncated(inside, rows, cols, clipped)
        )

    def draw_streak(
        self,
        radius_nm: float,
        x_px: float,
        y_px: float,
        step_px: tuple[float, float],
        lambda_nm: float,
    ) -> Footprint | None:
        """A sphere moving uniformly by ``step_px`` during the exposure, centred at (x, y) px
        (the path's midpoint): its transmission change blurred along the path, since the
        camera integrates counts. The footprint is the area it swept."""
        dx_px, dy_px = (float(np.clip(v, -_MAX_STREAK_PX, _MAX_STREAK_PX)) for v in step_px)
        kernel = line_kernel(dx_px, dy_px)
        kh, kw = kernel.shape[0] // 2, kernel.shape[1] // 2
        r_px = radius_nm / self.pixel_nm + 1.0
        box = self._box(x_px, y_px, r_px + kw, r_px + kh)
        if box is None:
            return None
        rows, cols, clipped = box
        # Render the still sphere with the kernel's reach as margin, so the blur at the box edge
        # sees the sphere outside it; the margin is cut after filtering.
        dx, dy = self._offsets_nm(
            slice(rows.start - kh, rows.stop + kh),
            slice(cols.start - kw, cols.stop + kw),
            x_px,
            y_px,
        )
        thickness, inside = Shape("sphere", radius_nm).thickness_nm(dx, dy, self.pixel_nm)
        change = np.exp(-self.cell.excess_optical_depth(thickness, lambda_nm)) - np.float32(1.0)
        h, w = rows.stop - rows.start, cols.stop - cols.start
        blurred = cv2.filter2D(change, -1, kernel, borderType=cv2.BORDER_CONSTANT)[
            kh : kh + h, kw : kw + w
        ]
        swept = (
            cv2.filter2D(inside.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)[
                kh : kh + h, kw : kw + w
            ]
            > 1e-4
        )
        if not swept.any():
            return None
        self.counts[rows, cols] *= np.float32(1.0) + blurred
        return Footprint(
            rows, cols, swept, (x_px, y_px), self._truncated(swept, rows, cols, clipped)
        )

    def _box(
        self, x_px: float, y_px: float, half_w: float, half_h: float
    ) -> tuple[slice, slice, bool] | None:
        """The bounding box clipped to the frame, and whether it was clipped."""
        rows, cols = self.shape
        i0, i1 = math.floor(y_px - half_h), math.ceil(y_px + half_h) + 1
        j0, j1 = math.floor(x_px - half_w), math.ceil(x_px + half_w) + 1
        clipped = i0 < 0 or j0 < 0 or i1 > rows or j1 > cols
        i0, i1, j0, j1 = max(i0, 0), min(i1, rows), max(j0, 0), min(j1, cols)
        if i0 >= i1 or j0 >= j1:
            return None
        return slice(i0, i1), slice(j0, j1), clipped

    def _offsets_nm(
        self, rows: slice, cols: slice, x_px: float, y_px: float
    ) -> tuple[np.ndarray, np.ndarray]:
        p = self.pixel_nm
        dx = ((np.arange(cols.start, cols.stop) - x_px) * p).astype(np.float32)
        dy = ((np.arange(rows.start, rows.stop) - y_px) * p).astype(np.float32)
        return dx[None, :], dy[:, None]

    def _truncated(self, inside: np.ndarray, rows: slice, cols: slice, clipped: bool) -> bool:
        """Whether the footprint is cut by the frame edge."""
        if not clipped:
            return False
        return bool(
            (rows.start == 0 and inside[0].any())
            or (rows.stop == self.shape[0] and inside[-1].any())
            or (cols.start == 0 and inside[:, 0].any())
            or (cols.stop == self.shape[1] and inside[:, -1].any())
        )
