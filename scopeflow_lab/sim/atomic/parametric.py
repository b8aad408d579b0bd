"""Training simulator of atomic-resolution frames: continuum particles, lens transfer, counting.

HRTEM (weak-phase and beyond): the specimen is a phase object ``A·exp(iσV)`` whose projected
potential ``V`` (V·nm) is

- per particle, its projected thickness (an ellipsoid's chord, 2√(r² − ρ²)) times the
  material's mean inner potential, modulated by ``1 + m·Σcos(2π g·x + φ)/n`` with the
  material's lattice spacings (one to three reflections in a zone-axis-like geometry; ``m = 0``
  for a particle off any zone axis, which shows only its mass and its Fresnel fringe);
- the amorphous support: its mean potential times its thickness plus noise of standard deviation
  ∝ √thickness and correlation length ~ an atom (0.07 nm).

The exit wave goes through the objective lens ``exp(−iχ(k))`` with
``χ = π λ Δf k² + π/2 · Cs λ³ k⁴``, the temporal (focal spread) and spatial (convergence)
coherence envelopes and the objective aperture; the intensity is counted (Poisson, dose in
e⁻/Å² times the pixel area), blurred by the detector and converted to DN (gain, offset, read
noise).

HAADF STEM: incoherent Z-contrast. Each particle scatters a fraction ∝ thickness × (Z/6)^1.7 of
the beam into the annular detector, peaked on atomic columns; the support ∝ its thickness; the
map is blurred by the probe (a Gaussian) and counted, then an analog detector adds gain, offset
and noise, and each scan line its own offset and jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from scopeflow_lab.sim.insitu.imaging import electron_wavelength_nm
from scopeflow_lab.sim.truth import AnnotatedImage, ObjectTruth

_UINT16_MAX = float(np.iinfo(np.uint16).max)


@dataclass(frozen=True)
class Material:
    """A nanoparticle material: atomic number, mean inner potential (V), lattice spacings (nm),
    and absorption (per nm) by scattering outside the objective aperture."""

    z: int
    inner_potential_v: float
    spacings_nm: tuple[float, ...]
    absorption_per_nm: float


MATERIALS = {
    "Au": Material(79, 30.0, (0.2355, 0.2039, 0.1442), 0.030),
    "Pt": Material(78, 33.0, (0.2265, 0.1962, 0.1387), 0.032),
    "Pd": Material(46, 26.0, (0.2246, 0.1945, 0.1375), 0.020),
    "Ag": Material(47, 21.0, (0.2359, 0.2043, 0.1445), 0.018),
}
CARBON_INNER_POTENTIAL_V = 9.0
CARBON_Z = 6


def interaction_constant(voltage_kv: float) -> float:
    """σ (rad per V·nm): phase shift per unit projected potential."""
    v = voltage_kv * 1e3
    lam = electron_wavelength_nm(voltage_kv)
    mc2 = 510_998.95  # electron rest energy (eV)
    return 2.0 * math.pi / (lam * v) * (mc2 + v) / (2.0 * mc2 + v)


@dataclass(frozen=True)
class Particle:
    """One particle: centre (nm from the field's centre), semi-axes (nm), orientation, lattice."""

    x_nm: float
    y_nm: float
    a_nm: float
    b_nm: float
    angle: float
    material: str
    #: reciprocal lattice vectors shown (cycles/nm) and their phases; empty: off any zone axis
    g: tuple[tuple[float, float, float], ...] = ()
    modulation: float = 0.0


@dataclass(frozen=True)
class AtomicConfig:
    """One frame's specimen, microscope and detector (``modality``: ``"hrtem"`` or ``"haadf"``)."""

    modality: str = "hrtem"
    frame_shape: tuple[int, int] = (512, 512)
    pixel_size_nm: float = 0.03
    dose_e_per_a2: float = 200.0
    voltage_kv: float = 300.0
    defocus_nm: float = -40.0
    cs_mm: float = 0.01
    focal_spread_nm: float = 3.0
    convergence_mrad: float = 0.2
    aperture_per_nm: float = 14.0
    support_thickness_nm: float = 5.0
    support_noise_rad: float = 0.06  # phase std per √nm of amorphous support
    liquid_thickness_nm: float = 0.0
    particles: tuple[Particle, ...] = ()
    detector_blur_px: float = 0.4
    gain_dn_per_e: float = 1.0
    offset_dn: float = 100.0
    read_noise_dn: float = 0.0
    probe_sigma_nm: float = 0.06
    haadf_per_nm: float = 0.005  # fraction scattered to the detector per nm of gold-like matter
    line_jitter_px: float = 0.0
    line_offset_fraction: float = 0.0
    seed: int = 0


def random_particles(
    rng: np.random.Generator,
    field_nm: tuple[float, float],
    count: int,
    radius_nm: tuple[float, float],
    materials: tuple[str, ...],
    pixel_nm: float,
    lattice_fraction: float = 0.75,
) -> tuple[Particle, ...]:
    """``count`` particles placed without heavy overlap; some show lattice fringes."""
    placed: list[Particle] = []
    for _ in range(count * 20):
        if len(placed) == count:
            break
        r = float(rng.uniform(*radius_nm))
        aspect = float(rng.uniform(1.0, 1.25))
        x = float(rng.uniform(-0.5, 0.5) * (field_nm[1] + r))
        y = float(rng.uniform(-0.5, 0.5) * (field_nm[0] + r))
        if any(math.hypot(x - p.x_nm, y - p.y_nm) < 0.85 * (r + p.a_nm) for p in placed):
            continue
        material = str(rng.choice(materials))
        g: list[tuple[float, float, float]] = []
        modulation = 0.0
        if rng.random() < lattice_fraction:
            spacings = MATERIALS[material].spacings_nm
            theta = float(rng.uniform(0, math.pi))
            kind = int(rng.integers(3))
            # [110]-like: two {111} at ±70.5° (plus {200} between); [100]-like: two {200} at 90°;
            # or a single set of fringes.
            if kind == 0:
                dirs = [
                    (spacings[0], theta),
                    (spacings[0], theta + 1.2310),
                    (spacings[1], theta + 0.6155),
                ]
            elif kind == 1:
                dirs = [(spacings[1], theta), (spacings[1], theta + math.pi / 2)]
            else:
                dirs = [(spacings[int(rng.integers(2))], theta)]
            nyquist = 0.5 / pixel_nm
            for d, ang in dirs:
                if 1.0 / d < 0.9 * nyquist:  # finer fringes cannot be sampled: not drawn
                    g.append(
                        (math.cos(ang) / d, math.sin(ang) / d, float(rng.uniform(0, 2 * math.pi)))
                    )
            modulation = float(rng.uniform(0.3, 1.0)) if g else 0.0
        elif rng.random() < 0.5:
            # Off any low-index zone axis a crystal still shows faint, fine fringes of one
            # higher-index set now and then.
            d = float(rng.uniform(0.12, 0.24))
            ang = float(rng.uniform(0, math.pi))
            if 1.0 / d < 0.45 / pixel_nm:
                g.append((math.cos(ang) / d, math.sin(ang) / d, float(rng.uniform(0, 2 * math.pi))))
                modulation = float(rng.uniform(0.05, 0.25))
        placed.append(
            Particle(
                x, y, r * aspect, r, float(rng.uniform(0, math.pi)), material, tuple(g), modulation
            )
        )
    return tuple(placed)


def _grid_nm(shape: tuple[int, int], pixel_nm: float) -> tuple[np.ndarray, np.ndarray]:
    ys = (np.arange(shape[0], dtype=np.float32) - shape[0] / 2 + 0.5) * pixel_nm
    xs = (np.arange(shape[1], dtype=np.float32) - shape[1] / 2 + 0.5) * pixel_nm
    return ys[:, None], xs[None, :]


Maps = list[tuple[np.ndarray, np.ndarray, slice, slice]]


def particle_maps(config: AtomicConfig) -> Maps:
    """Per particle: (projected thickness nm, lattice factor, rows, cols) inside its bbox."""
    h, w = config.frame_shape
    p = config.pixel_size_nm
    ys, xs = _grid_nm((h, w), p)
    out = []
    for part in config.particles:
        reach = part.a_nm + p
        r0 = max(int((part.y_nm - reach) / p + h / 2), 0)
        r1 = min(int((part.y_nm + reach) / p + h / 2) + 2, h)
        c0 = max(int((part.x_nm - reach) / p + w / 2), 0)
        c1 = min(int((part.x_nm + reach) / p + w / 2) + 2, w)
        if r0 >= r1 or c0 >= c1:
            out.append(
                (
                    np.zeros((0, 0), np.float32),
                    np.zeros((0, 0), np.float32),
                    slice(0, 0),
                    slice(0, 0),
                )
            )
            continue
        dy = ys[r0:r1] - part.y_nm
        dx = xs[:, c0:c1] - part.x_nm
        ca, sa = math.cos(part.angle), math.sin(part.angle)
        u = (dx * ca + dy * sa) / part.a_nm
        v = (-dx * sa + dy * ca) / part.b_nm
        rho2 = u * u + v * v
        thickness = 2.0 * part.b_nm * np.sqrt(np.maximum(1.0 - rho2, 0.0))
        lattice = np.zeros_like(thickness)
        for gx, gy, phase in part.g:
            lattice += np.cos(2 * math.pi * (gx * dx + gy * dy) + phase)
        if part.g:
            lattice /= len(part.g)
        out.append(
            (thickness.astype(np.float32), lattice.astype(np.float32), slice(r0, r1), slice(c0, c1))
        )
    return out


def _amorphous(rng: np.random.Generator, shape: tuple[int, int], pixel_nm: float) -> np.ndarray:
    """Unit-variance noise with the correlation length of an atom (~0.07 nm)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    sigma_px = 0.07 / pixel_nm
    if sigma_px > 0.3:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma_px)
    return noise / max(float(noise.std()), 1e-6)


def _frequencies(shape: tuple[int, int], pixel_nm: float) -> tuple[np.ndarray, np.ndarray]:
    ky = np.fft.fftfreq(shape[0], d=pixel_nm)[:, None]
    kx = np.fft.fftfreq(shape[1], d=pixel_nm)[None, :]
    return ky, kx


def lens_transfer(config: AtomicConfig) -> np.ndarray:
    """The objective lens's wave transfer function on the frame's FFT grid."""
    lam = electron_wavelength_nm(config.voltage_kv)
    ky, kx = _frequencies(config.frame_shape, config.pixel_size_nm)
    k2 = kx * kx + ky * ky
    cs_nm = config.cs_mm * 1e6
    chi = math.pi * lam * config.defocus_nm * k2 + 0.5 * math.pi * cs_nm * lam**3 * k2 * k2
    temporal = np.exp(-0.5 * (math.pi * lam * config.focal_spread_nm) ** 2 * k2 * k2)
    alpha = config.convergence_mrad * 1e-3
    k = np.sqrt(k2)
    spatial = np.exp(
        -((math.pi * alpha) ** 2) * (config.defocus_nm * k + cs_nm * lam**2 * k**3) ** 2
    )
    aperture = k2 <= config.aperture_per_nm**2
    return (np.exp(-1j * chi) * temporal * spatial * aperture).astype(np.complex64)


def _to_dn(electrons: np.ndarray, config: AtomicConfig, rng: np.random.Generator) -> np.ndarray:
    dn = electrons * config.gain_dn_per_e + config.offset_dn
    if config.read_noise_dn > 0:
        dn = dn + rng.normal(0.0, config.read_noise_dn, dn.shape).astype(np.float32)
    return np.clip(np.rint(dn), 0, _UINT16_MAX).astype(np.uint16)


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma_px) if sigma_px > 0.05 else image


def render_hrtem(config: AtomicConfig, maps: Maps, rng: np.random.Generator) -> np.ndarray:
    """Mean-free intensity → counted frame (uint16) of an HRTEM phase-contrast image."""
    shape = config.frame_shape
    p = config.pixel_size_nm
    sigma = interaction_constant(config.voltage_kv)
    t_c = config.support_thickness_nm
    phase = np.full(shape, sigma * CARBON_INNER_POTENTIAL_V * t_c, np.float32)
    phase += config.support_noise_rad * math.sqrt(max(t_c, 0.0)) * _amorphous(rng, shape, p)
    if config.liquid_thickness_nm > 0:  # water: weaker, smoother phase noise and its mean
        water = _amorphous(rng, shape, p)
        water = _blur(water, 0.3 / p)
        water /= max(float(water.std()), 1e-6)
        phase += 0.02 * math.sqrt(config.liquid_thickness_nm) * water
    log_amp = np.zeros(shape, np.float32)
    for part, (thick, lattice, rows, cols) in zip(config.particles, maps, strict=True):
        if thick.size == 0:
            continue
        mat = MATERIALS[part.material]
        potential = mat.inner_potential_v * thick * (1.0 + part.modulation * lattice)
        phase[rows, cols] += sigma * potential
        log_amp[rows, cols] -= mat.absorption_per_nm * thick
    wave = np.exp(log_amp) * np.exp(1j * phase)
    image = np.fft.ifft2(np.fft.fft2(wave) * lens_transfer(config))
    intensity = (image.real**2 + image.imag**2).astype(np.float32)
    per_px = config.dose_e_per_a2 * (p * 10.0) ** 2
    mean = _blur(intensity * np.float32(per_px), config.detector_blur_px)
    electrons = rng.poisson(np.maximum(mean, 0.0)).astype(np.float32)
    return _to_dn(electrons, config, rng)


def render_haadf(config: AtomicConfig, maps: Maps, rng: np.random.Generator) -> np.ndarray:
    """Counted HAADF STEM frame (uint16)."""
    shape = config.frame_shape
    p = config.pixel_size_nm
    carbon_per_nm = config.haadf_per_nm * (CARBON_Z / 79.0) ** 1.7
    fraction = np.full(shape, carbon_per_nm * config.support_thickness_nm, np.float32)
    fraction *= 1.0 + 0.5 * _amorphous(rng, shape, p)
    for part, (thick, lattice, rows, cols) in zip(config.particles, maps, strict=True):
        if thick.size == 0:
            continue
        mat = MATERIALS[part.material]
        columns = (0.5 * (lattice + 1.0)) ** 2 * 2.0 if part.g else 1.0
        weight = config.haadf_per_nm * (mat.z / 79.0) ** 1.7
        fraction[rows, cols] += weight * thick * (1.0 - part.modulation + part.modulation * columns)
    fraction = np.maximum(fraction, 0.0)
    fraction = _blur(fraction, config.probe_sigma_nm / p)
    per_px = config.dose_e_per_a2 * (p * 10.0) ** 2
    electrons = rng.poisson(fraction * np.float32(per_px)).astype(np.float32)
    if config.line_offset_fraction > 0:
        offsets = rng.normal(0.0, config.line_offset_fraction, (shape[0], 1)).astype(np.float32)
        electrons = electrons + offsets * max(float(electrons.mean()), 1.0)
    if config.line_jitter_px > 0:
        from scopeflow_lab.sim.sem.detector import jitter_lines

        electrons = jitter_lines(electrons, rng.normal(0.0, config.line_jitter_px, shape[0]))
    return _to_dn(np.maximum(electrons, 0.0), config, rng)


def render(config: AtomicConfig) -> AnnotatedImage:
    """The frame and its particles' footprints (one ``"particle"`` object each)."""
    if config.modality not in ("hrtem", "haadf"):
        raise ValueError(f"unknown modality {config.modality!r}: hrtem or haadf")
    rng = np.random.default_rng([config.seed, 0xA70])
    maps = particle_maps(config)  # once: the image and the truth masks share it
    render_image = render_hrtem if config.modality == "hrtem" else render_haadf
    image = render_image(config, maps, rng)
    objects = []
    for part, (thick, _lat, rows, cols) in zip(config.particles, maps, strict=True):
        if thick.size == 0 or not (thick > 0).any():
            continue
        mask = np.zeros(config.frame_shape, bool)
        mask[rows, cols] = thick > 0
        objects.append(
            ObjectTruth(
                "particle",
                mask,
                {
                    "material": part.material,
                    "radius_nm": round(part.b_nm, 3),
                    "lattice": bool(part.g),
                },
            )
        )
    attributes = {
        "modality": config.modality,
        "pixel_size_nm": config.pixel_size_nm,
        "dose_e_per_A2": config.dose_e_per_a2,
        "defocus_nm": config.defocus_nm,
        "seed": config.seed,
    }
    return AnnotatedImage(image, objects, attributes)


def random_config(
    rng: np.random.Generator,
    seed: int,
    modality: str,
    shape: tuple[int, int] = (512, 512),
    pixel_nm: tuple[float, float] = (0.015, 0.12),
    dose_e_per_a2: tuple[float, float] = (5.0, 2000.0),
    materials: tuple[str, ...] = ("Au", "Pt", "Pd", "Ag"),
) -> AtomicConfig:
    """A training frame's conditions, drawn as wide as real instruments vary."""
    p = float(math.exp(rng.uniform(math.log(pixel_nm[0]), math.log(pixel_nm[1]))))
    field_nm = (shape[0] * p, shape[1] * p)
    r_max = min(3.0, 0.25 * field_nm[0])
    radius = (min(0.5, r_max * 0.5), r_max)
    area = field_nm[0] * field_nm[1]
    mean_r = 0.5 * (radius[0] + radius[1])
    count = int(rng.integers(0, max(2, int(0.25 * area / (math.pi * mean_r**2))) + 1))
    particles = random_particles(
        rng, field_nm, count, radius, materials, p, float(rng.uniform(0.4, 0.95))
    )
    if modality == "haadf":
        dose = float(math.exp(rng.uniform(math.log(1e2), math.log(1e5))))
    else:
        dose = float(math.exp(rng.uniform(math.log(dose_e_per_a2[0]), math.log(dose_e_per_a2[1]))))
    corrected = rng.random() < 0.5
    return AtomicConfig(
        modality=modality,
        frame_shape=shape,
        pixel_size_nm=p,
        dose_e_per_a2=dose,
        voltage_kv=float(rng.choice([80.0, 200.0, 300.0])),
        defocus_nm=float(rng.uniform(-15, 15) if corrected else rng.uniform(-120, 60)),
        cs_mm=float(rng.uniform(-0.02, 0.02) if corrected else rng.uniform(0.5, 1.3)),
        focal_spread_nm=float(rng.uniform(1.0, 6.0)),
        convergence_mrad=float(rng.uniform(0.05, 0.5)),
        aperture_per_nm=float(rng.uniform(6.0, 20.0)),
        support_thickness_nm=float(rng.uniform(1.0, 20.0)),
        support_noise_rad=float(rng.uniform(0.03, 0.12)),
        liquid_thickness_nm=float(rng.choice([0.0, rng.uniform(20, 200)])),
        particles=particles,
        detector_blur_px=float(rng.uniform(0.0, 0.8)),
        gain_dn_per_e=float(math.exp(rng.uniform(math.log(0.5), math.log(30.0)))),
        offset_dn=float(rng.uniform(0, 400)),
        read_noise_dn=float(rng.uniform(0, 3.0)),
        probe_sigma_nm=float(rng.uniform(0.03, 0.12)),
        haadf_per_nm=float(0.005 * math.exp(rng.uniform(-0.7, 0.7))),
        line_jitter_px=float(rng.uniform(0, 0.5)) if modality == "haadf" else 0.0,
        line_offset_fraction=float(rng.uniform(0, 0.05)) if modality == "haadf" else 0.0,
        seed=seed,
    )
