"""Thin-film optics of a flake on an oxidised silicon chip, and its colour in an RGB camera.

At normal incidence the reflection coefficient of a stack of films on a substrate follows from
the Airy recursion: seen from a medium of index n_m, a film of index n_j and thickness d_j over
whatever lies beneath (reflection coefficient r) reflects

    r' = (r_mj + r·e^(−2iΦ_j)) / (1 + r_mj·r·e^(−2iΦ_j)),  r_mj = (n_m − n_j)/(n_m + n_j),
    Φ_j = 2π n_j d_j / λ.

For air / flake (n₁, d₁) / SiO₂ (n₂, d₂) / Si (n₃) this is exactly the formula of Blake et al.,
APL 91, 063124 (2007) (:func:`blake_reflectance`). Indices are complex, n − ik (absorbing media
have k > 0), the convention of Blake et al.

Colour: the reflectance spectrum is weighted by the illuminant spectrum S(λ) times each camera
channel's spectral sensitivity Q_c(λ) and integrated over 400–750 nm (the window of the usual
UV/IR-cut filter). Per channel, R_c = ∫S·Q_c·R dλ / ∫S·Q_c dλ and the contrast of a flake is
R_c,flake / R_c,substrate − 1. :class:`ContrastTable` precomputes these per oxide thickness so
images never integrate spectra per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Wavelength grid of every spectral computation, nm (400–750 nm every 5 nm).
WAVELENGTHS_NM = np.arange(400.0, 751.0, 5.0)
WAVELENGTHS_NM.setflags(write=False)

IndexFunction = Callable[[np.ndarray], np.ndarray]

# Crystalline Si at 300 K, λ (nm), n, k: M. A. Green, Sol. Energ. Mat. Sol. Cells 92, 1305
# (2008), every 10 nm from 400 to 750 nm (refractiveindex.info, "Si/Green-2008").
_SI_GREEN_2008 = np.array(
    [
        (400, 5.613, 0.296),
        (410, 5.330, 0.227),
        (420, 5.119, 0.176),
        (430, 4.949, 0.138),
        (440, 4.812, 0.107),
        (450, 4.691, 0.0863),
        (460, 4.587, 0.0714),
        (470, 4.497, 0.0621),
        (480, 4.419, 0.0550),
        (490, 4.350, 0.0491),
        (500, 4.294, 0.0442),
        (510, 4.241, 0.0394),
        (520, 4.193, 0.0364),
        (530, 4.151, 0.0331),
        (540, 4.112, 0.0303),
        (550, 4.077, 0.0280),
        (560, 4.045, 0.0258),
        (570, 4.015, 0.0241),
        (580, 3.988, 0.0225),
        (590, 3.963, 0.0211),
        (600, 3.940, 0.0199),
        (610, 3.918, 0.0184),
        (620, 3.898, 0.0174),
        (630, 3.879, 0.0164),
        (640, 3.861, 0.0154),
        (650, 3.844, 0.0144),
        (660, 3.828, 0.0135),
        (670, 3.813, 0.0127),
        (680, 3.798, 0.0119),
        (690, 3.784, 0.0112),
        (700, 3.772, 0.0105),
        (710, 3.759, 0.0101),
        (720, 3.748, 0.0096),
        (730, 3.737, 0.0089),
        (740, 3.727, 0.0084),
        (750, 3.717, 0.0078),
    ]
)


def sio2_index(wavelength_nm: np.ndarray) -> np.ndarray:
    """Fused silica (thermal oxide), Malitson's Sellmeier formula (JOSA 55, 1205 (1965))."""
    lam2 = (np.asarray(wavelength_nm, float) * 1e-3) ** 2  # µm²
    n2 = 1.0 + (
        0.6961663 * lam2 / (lam2 - 0.0684043**2)
        + 0.4079426 * lam2 / (lam2 - 0.1162414**2)
        + 0.8974794 * lam2 / (lam2 - 9.896161**2)
    )
    return np.sqrt(n2).astype(complex)


def si_index(wavelength_nm: np.ndarray) -> np.ndarray:
    """Crystalline silicon, n − ik interpolated linearly in Green's 2008 table (400–750 nm)."""
    lam = np.asarray(wavelength_nm, float)
    if np.any(lam < 400.0) or np.any(lam > 750.0):
        raise ValueError("the Si table covers 400–750 nm only")
    n = np.interp(lam, _SI_GREEN_2008[:, 0], _SI_GREEN_2008[:, 1])
    k = np.interp(lam, _SI_GREEN_2008[:, 0], _SI_GREEN_2008[:, 2])
    return n - 1j * k


def hbn_index(wavelength_nm: np.ndarray) -> np.ndarray:
    """hBN in-plane index, single-oscillator fit n² − 1 = 3.263 λ²/(λ² − 0.1644²) (λ in µm) of
    Lee et al., Phys. Status Solidi B 256, 1800417 (2019): 2.18 at 450 nm, 2.14 at 550 nm,
    2.12 at 700 nm; transparent (k = 0). Fitted over 450–1200 nm; used down to 400 nm."""
    lam2 = (np.asarray(wavelength_nm, float) * 1e-3) ** 2
    return np.sqrt(1.0 + 3.263 * lam2 / (lam2 - 0.1644**2)).astype(complex)


def constant_index(value: complex) -> IndexFunction:
    """A wavelength-independent index."""

    def index(wavelength_nm: np.ndarray) -> np.ndarray:
        return np.full(np.shape(wavelength_nm), complex(value))

    return index


def lorentz_index(
    eps_inf: float, oscillators: Sequence[tuple[float, float, float]]
) -> IndexFunction:
    """n − ik from a Lorentz-oscillator dielectric function
    ε(E) = ε∞ + Σ f_j / (E_j² − E² − iγ_j·E), each oscillator given as (E_j eV, γ_j eV, peak
    ε₂ at resonance); f_j = peak·γ_j·E_j. The form of the excitonic fits of Li et al., PRB 90,
    205422 (2014)."""

    def index(wavelength_nm: np.ndarray) -> np.ndarray:
        energy = 1239.84193 / np.asarray(wavelength_nm, float)
        eps = np.full(energy.shape, eps_inf, complex)
        for e0, gamma, peak in oscillators:
            eps = eps + peak * gamma * e0 / (e0**2 - energy**2 - 1j * gamma * energy)
        n = np.sqrt(eps)
        return n.real - 1j * np.abs(n.imag)

    return index


@dataclass(frozen=True)
class Material:
    """A film material: its index n(λ) − ik(λ), the thickness of one layer and the source."""

    name: str
    layer_nm: float
    index: IndexFunction
    source: str

    def thickness_nm(self, layers: int) -> float:
        return layers * self.layer_nm


GRAPHENE = Material(
    "graphene",
    0.335,
    constant_index(2.6 - 1.3j),
    "n = 2.6 − 1.3i (graphite, wavelength independent) and 0.335 nm per layer, as used by "
    "Blake et al., APL 91, 063124 (2007)",
)
HBN = Material(
    "hBN",
    0.333,
    hbn_index,
    "Lee et al., Phys. Status Solidi B 256, 1800417 (2019), in-plane, k = 0; 0.333 nm per layer "
    "(interlayer spacing of bulk hBN)",
)
RESIDUE = Material(
    "residue",
    1.0,
    constant_index(1.49),
    "tape adhesive / polymer residue as a transparent film of n = 1.49 (PMMA at 589 nm, "
    "Sultanova et al., Acta Phys. Pol. A 116, 585 (2009)); thickness in nm",
)

# TMDs: Lorentz oscillators at the A, B and C excitons of monolayer MoS₂ (1.88, 2.03, 2.88 eV)
# and WSe₂ (1.66, 2.08, 2.45 eV, plus 2.95 eV), positions after Li et al., PRB 90, 205422
# (2014); amplitudes and widths are approximate (n 4–5, k 0.2–2.4 over 400–750 nm, as their
# figures show), and the monolayer index is used for every thickness. Good enough to give
# TMD flakes their own colours; not a substitute for measured indices.
MOS2 = Material(
    "MoS2",
    0.615,
    lorentz_index(13.0, ((1.88, 0.07, 9.0), (2.03, 0.12, 10.0), (2.88, 0.50, 24.0))),
    "Lorentz oscillators at the A/B/C excitons (1.88, 2.03, 2.88 eV) after Li et al., "
    "PRB 90, 205422 (2014), approximate amplitudes; 0.615 nm per layer (c/2 of bulk MoS₂)",
)
WSE2 = Material(
    "WSe2",
    0.648,
    lorentz_index(
        13.0, ((1.66, 0.05, 7.0), (2.08, 0.15, 7.0), (2.45, 0.35, 12.0), (2.95, 0.50, 16.0))
    ),
    "Lorentz oscillators at the A/B/C excitons (1.66, 2.08, 2.45 eV, and 2.95 eV) after "
    "Li et al., PRB 90, 205422 (2014), approximate amplitudes; 0.648 nm per layer",
)

#: Film materials by name.
MATERIALS: dict[str, Material] = {m.name: m for m in (GRAPHENE, HBN, MOS2, WSE2, RESIDUE)}


def stack_reflectance(
    wavelength_nm: np.ndarray,
    films: Sequence[tuple[np.ndarray | complex, np.ndarray | float]],
    substrate_index: np.ndarray | complex,
    ambient_index: complex = 1.0,
) -> np.ndarray:
    """Normal-incidence reflectance |r|² of ``films`` (index, thickness nm), listed from the
    ambient side down, on a semi-infinite substrate.

    Indices broadcast against ``wavelength_nm``; thicknesses may be arrays that broadcast with it
    too (e.g. shape (n, 1) against wavelengths (m,) gives an (n, m) result).
    """
    lam = np.asarray(wavelength_nm, float)
    if not films:
        n_top = np.asarray(substrate_index)
        return np.abs((ambient_index - n_top) / (ambient_index + n_top)) ** 2 * np.ones_like(lam)
    indices = [np.asarray(n, complex) for n, _ in films]
    r = (indices[-1] - substrate_index) / (indices[-1] + substrate_index)
    for j in range(len(films) - 1, -1, -1):
        n_j = indices[j]
        d_j = np.asarray(films[j][1], float)
        above = indices[j - 1] if j > 0 else np.asarray(ambient_index, complex)
        r_top = (above - n_j) / (above + n_j)
        phase = np.exp(-2j * (2.0 * math.pi * n_j * d_j / lam))  # decays for k > 0
        r = (r_top + r * phase) / (1.0 + r_top * r * phase)
    return np.abs(r) ** 2


def blake_reflectance(
    n1: np.ndarray | complex,
    d1_nm: float,
    n2: np.ndarray | complex,
    d2_nm: float,
    n3: np.ndarray | complex,
    wavelength_nm: np.ndarray,
) -> np.ndarray:
    """Reflectance of air / flake (n1, d1) / oxide (n2, d2) / Si (n3), written as in Blake et al.
    (2007), eq. (1); equal to :func:`stack_reflectance` for that stack."""
    n0 = 1.0
    r1 = (n0 - n1) / (n0 + n1)
    r2 = (n1 - n2) / (n1 + n2)
    r3 = (n2 - n3) / (n2 + n3)
    lam = np.asarray(wavelength_nm, float)
    f1 = 2.0 * math.pi * n1 * d1_nm / lam
    f2 = 2.0 * math.pi * n2 * d2_nm / lam
    e = np.exp
    num = (
        r1 * e(1j * (f1 + f2))
        + r2 * e(-1j * (f1 - f2))
        + r3 * e(-1j * (f1 + f2))
        + r1 * r2 * r3 * e(1j * (f1 - f2))
    )
    den = (
        e(1j * (f1 + f2))
        + r1 * r2 * e(-1j * (f1 - f2))
        + r1 * r3 * e(-1j * (f1 + f2))
        + r2 * r3 * e(1j * (f1 - f2))
    )
    return np.abs(num / den) ** 2


def blackbody(wavelength_nm: np.ndarray, temperature_k: float) -> np.ndarray:
    """Planck's spectral radiance (arbitrary units) at ``temperature_k``."""
    lam_m = np.asarray(wavelength_nm, float) * 1e-9
    c2 = 6.62607015e-34 * 299792458.0 / 1.380649e-23  # hc/k, m·K
    return lam_m**-5 / np.expm1(c2 / (lam_m * temperature_k))


def _gaussian(wavelength_nm: np.ndarray, centre_nm: float, fwhm_nm: float) -> np.ndarray:
    sigma = fwhm_nm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return np.exp(-0.5 * ((np.asarray(wavelength_nm, float) - centre_nm) / sigma) ** 2)


@dataclass(frozen=True)
class SpectralModel:
    """Illuminant × camera channel sensitivities, the weights of the colour integration.

    ``illuminant``: ``"halogen"`` (a blackbody at ``colour_temperature_k``, the tungsten-halogen
    lamp of most reflected-light microscopes) or ``"led"`` (a phosphor white LED: a blue peak
    at ``led_blue_nm``, 20 nm FWHM, plus a broad phosphor band at ``led_phosphor_nm``, 110 nm
    FWHM, ``led_phosphor_ratio`` × its height: 450/560/1.6 is a neutral white, a higher ratio
    and a longer phosphor wavelength a warm one).
    Camera channels (R, G, B): Gaussians centred at ``band_centres_nm`` with ``band_fwhm_nm``,
    standing for Bayer colour filter × sensor QE (colour CMOS sensors peak near 600, 530 and
    460 nm with 80–100 nm wide bands); the 400–750 nm window stands for the UV/IR-cut filter.
    """

    illuminant: str = "halogen"
    colour_temperature_k: float = 3200.0
    band_centres_nm: tuple[float, float, float] = (610.0, 540.0, 465.0)
    band_fwhm_nm: tuple[float, float, float] = (80.0, 80.0, 80.0)
    led_blue_nm: float = 450.0
    led_phosphor_nm: float = 560.0
    led_phosphor_ratio: float = 1.6

    def __post_init__(self) -> None:
        if self.illuminant not in ("halogen", "led"):
            raise ValueError(f"illuminant must be 'halogen' or 'led', got {self.illuminant!r}")
        if not 1000.0 <= self.colour_temperature_k <= 20000.0:
            raise ValueError("colour_temperature_k must lie within 1000–20000 K")
        if len(self.band_centres_nm) != 3 or len(self.band_fwhm_nm) != 3:
            raise ValueError("give three band centres and widths (R, G, B)")
        if not all(10.0 <= w <= 400.0 for w in self.band_fwhm_nm):
            raise ValueError("band widths must lie within 10–400 nm")
        if not (400.0 <= self.led_blue_nm <= 500.0 and 480.0 <= self.led_phosphor_nm <= 650.0):
            raise ValueError("LED peaks must lie within 400–500 nm (blue) and 480–650 nm")
        if not 0.1 <= self.led_phosphor_ratio <= 10.0:
            raise ValueError("led_phosphor_ratio must lie within 0.1–10")

    def illuminant_spectrum(self, wavelength_nm: np.ndarray = WAVELENGTHS_NM) -> np.ndarray:
        """Relative spectral power of the illuminant."""
        if self.illuminant == "halogen":
            return blackbody(wavelength_nm, self.colour_temperature_k)
        return _gaussian(wavelength_nm, self.led_blue_nm, 20.0) + self.led_phosphor_ratio * (
            _gaussian(wavelength_nm, self.led_phosphor_nm, 110.0)
        )

    def sensitivities(self, wavelength_nm: np.ndarray = WAVELENGTHS_NM) -> np.ndarray:
        """Channel sensitivities Q_c(λ), shape (3, n), R, G, B, peak 1."""
        return np.stack(
            [
                _gaussian(wavelength_nm, c, w)
                for c, w in zip(self.band_centres_nm, self.band_fwhm_nm, strict=True)
            ]
        )

    def raw_response(self) -> np.ndarray:
        """Signal of each channel from a perfect mirror, relative to the strongest (shape (3,))."""
        raw = (self.sensitivities() * self.illuminant_spectrum()).sum(axis=1)
        return raw / raw.max()

    def weights(self) -> np.ndarray:
        """Integration weights S·Q_c over :data:`WAVELENGTHS_NM`, rows summing to 1 (3, n)."""
        w = self.sensitivities() * self.illuminant_spectrum()
        return w / w.sum(axis=1, keepdims=True)

    def channel_reflectance(self, reflectance: np.ndarray) -> np.ndarray:
        """Per-channel reflectance (..., 3) of spectra (..., n) sampled on the grid."""
        return np.asarray(reflectance) @ self.weights().T


@dataclass(frozen=True)
class Substrate:
    """Si with a thermal SiO₂ layer; indices from :func:`si_index` and :func:`sio2_index`."""

    def indices(self, wavelength_nm: np.ndarray = WAVELENGTHS_NM) -> tuple[np.ndarray, np.ndarray]:
        return sio2_index(wavelength_nm), si_index(wavelength_nm)


def film_spectrum(
    material: Material | None, thickness_nm: float, oxide_nm: np.ndarray | float
) -> np.ndarray:
    """Reflectance spectra of ``material`` (None: bare substrate) on each oxide thickness,
    shape (*oxide.shape, n_wavelengths)."""
    lam = WAVELENGTHS_NM
    n_ox, n_si = Substrate().indices(lam)
    oxide = np.asarray(oxide_nm, float)[..., None]
    films: list[tuple[np.ndarray | complex, np.ndarray | float]] = []
    if material is not None and thickness_nm > 0:
        films.append((material.index(lam), float(thickness_nm)))
    films.append((n_ox, oxide))
    return stack_reflectance(lam, films, n_si) * np.ones(oxide.shape[:-1] + lam.shape)


def reflectance_rgb(
    model: SpectralModel,
    material: Material | None,
    thickness_nm: float,
    oxide_nm: np.ndarray | float,
) -> np.ndarray:
    """Per-channel (R, G, B) reflectance of a film on the substrate, shape (*oxide.shape, 3)."""
    return model.channel_reflectance(film_spectrum(material, thickness_nm, oxide_nm))


def contrast_rgb(
    model: SpectralModel, material: Material, thickness_nm: float, oxide_nm: float
) -> np.ndarray:
    """Contrast R_flake / R_substrate − 1 per channel (R, G, B), directly integrated."""
    return (
        reflectance_rgb(model, material, thickness_nm, oxide_nm)
        / reflectance_rgb(model, None, 0.0, oxide_nm)
        - 1.0
    )


class ContrastTable:
    """Channel reflectances on an oxide-thickness grid, so tiles never integrate spectra.

    The bare substrate and each (material, thickness) seen so far are integrated once on a grid
    of ``step_nm`` between ``oxide_min_nm`` and ``oxide_max_nm`` and then interpolated linearly;
    channel reflectance is smooth in the oxide thickness, so on a 0.25 nm grid the error stays
    below 1e-5 in reflectance (1e-4 relative).
    """

    def __init__(
        self, model: SpectralModel, oxide_min_nm: float, oxide_max_nm: float, step_nm: float = 0.25
    ) -> None:
        if not 0.0 <= oxide_min_nm <= oxide_max_nm:
            raise ValueError("need 0 ≤ oxide_min_nm ≤ oxide_max_nm")
        self.model = model
        count = max(2, math.ceil((oxide_max_nm - oxide_min_nm) / step_nm) + 1)
        self.oxide_nm = oxide_min_nm + step_nm * np.arange(count)
        self._rows: dict[tuple[str, float], np.ndarray] = {}
        self._background = reflectance_rgb(model, None, 0.0, self.oxide_nm)

    def _interp(self, table: np.ndarray, oxide_nm: np.ndarray | float) -> np.ndarray:
        x = np.asarray(oxide_nm, float)
        if np.any(x < self.oxide_nm[0] - 1e-9) or np.any(x > self.oxide_nm[-1] + 1e-9):
            raise ValueError(
                f"oxide thickness outside the table's {self.oxide_nm[0]:.2f}–"
                f"{self.oxide_nm[-1]:.2f} nm"
            )
        return np.stack([np.interp(x, self.oxide_nm, table[:, c]) for c in range(3)], axis=-1)

    def background_rgb(self, oxide_nm: np.ndarray | float) -> np.ndarray:
        """Bare-substrate reflectance per channel, shape (*oxide.shape, 3)."""
        return self._interp(self._background, oxide_nm)

    def film_rgb(
        self, material: Material, thickness_nm: float, oxide_nm: np.ndarray | float
    ) -> np.ndarray:
        """Reflectance per channel with the film on top, shape (*oxide.shape, 3)."""
        key = (material.name, round(float(thickness_nm), 6))
        rows = self._rows.get(key)
        if rows is None:
            rows = reflectance_rgb(self.model, material, thickness_nm, self.oxide_nm)
            self._rows[key] = rows
        return self._interp(rows, oxide_nm)

    def contrast_rgb(self, material: Material, thickness_nm: float, oxide_nm: float) -> np.ndarray:
        """R_film / R_substrate − 1 per channel (R, G, B) at one oxide thickness."""
        return self.film_rgb(material, thickness_nm, oxide_nm) / self.background_rgb(oxide_nm) - 1.0
