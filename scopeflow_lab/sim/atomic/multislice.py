"""Held-out test microscope: atom-by-atom specimens, multislice HRTEM and incoherent HAADF STEM.

Never used for training. It differs from :mod:`.parametric` in every step a real instrument
would differ from our training model:

- **Specimen**: FCC particles (Au, Pt, Pd lattice constants) cut to spheres truncated by
  {100} and {111} facets, in a low-index zone axis ([110] or [100], tilted up to 2°) or a random
  orientation, with thermal displacements; amorphous carbon as uniformly random atoms at
  100 atoms/nm³. Truth: the convex hull of each particle's projected atoms.
- **HRTEM**: slice potentials from per-atom scattering (two Gaussians per element, integrated
  potential from the electron scattering factor f(0) ∝ Z^0.55); transmission
  ``exp(iσV)`` per 0.4 nm slice; Fresnel propagation between slices with a 2/3 bandwidth limit;
  the lens with defocus, Cs and two-fold astigmatism, a focal-spread envelope; counting detector
  (Poisson) with a pixel-sinc MTF. Frames coarser than 0.035 nm/px are simulated finer and
  binned, as a detector integrates.
- **HAADF**: the sum of every atom's Z^1.64 signal (no channelling) through a probe with a
  Gaussian core and a broad tail; a slow scan drift (shear) and per-line jitter; a PMT-like
  detector (Poisson electrons, gamma-distributed gain, offset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from scopeflow_lab.sim.atomic.parametric import interaction_constant
from scopeflow_lab.sim.insitu.imaging import electron_wavelength_nm
from scopeflow_lab.sim.truth import AnnotatedImage, ObjectTruth

LATTICE_NM = {"Au": 0.4078, "Pt": 0.3924, "Pd": 0.3891}
Z = {"C": 6, "Au": 79, "Pt": 78, "Pd": 46}
CARBON_ATOMS_PER_NM3 = 100.0
SLICE_NM = 0.4
THERMAL_NM = 0.008
FINEST_NM = 0.035
_FCC_BASIS = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], np.float64)


@dataclass(frozen=True)
class MultisliceFrame:
    """One test frame's conditions."""

    modality: str = "hrtem"
    frame_shape: tuple[int, int] = (512, 512)
    pixel_size_nm: float = 0.03
    dose_e_per_a2: float = 200.0
    voltage_kv: float = 300.0
    defocus_nm: float = -20.0
    cs_um: float = 5.0
    astigmatism_nm: float = 2.0
    astigmatism_angle: float = 0.0
    focal_spread_nm: float = 2.5
    support_nm: float = 4.0
    particles: tuple[tuple[str, float, float, float, str], ...] = ()  # material, r, x, y, zone
    probe_fwhm_nm: float = 0.1
    seed: int = 0


def _rotation(rng: np.random.Generator, zone: str) -> np.ndarray:
    """A rotation taking the zone axis onto the beam (z), then a random turn about z."""
    if zone == "random":
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        return q * np.sign(np.diag(r))
    axis = np.array([1.0, 1.0, 0.0]) if zone == "110" else np.array([1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(axis, z)
    c = float(axis @ z)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    align = np.eye(3) + vx + vx @ vx / (1.0 + c) if np.linalg.norm(v) > 1e-9 else np.eye(3)
    turn = rng.uniform(0, 2 * math.pi)
    tilt = math.radians(rng.uniform(0, 2.0))
    rz = np.array(
        [[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]]
    )
    rx = np.array(
        [[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]]
    )
    return rz @ rx @ align


def fcc_particle(
    rng: np.random.Generator, material: str, radius_nm: float, zone: str
) -> np.ndarray:
    """Atom positions (n, 3) nm of a faceted FCC particle centred on 0."""
    a = LATTICE_NM[material]
    n = math.ceil(radius_nm / a) + 1
    cells = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    atoms = ((cells + _FCC_BASIS[None]) * a).reshape(-1, 3)
    keep = np.linalg.norm(atoms, axis=1) <= radius_nm
    keep &= np.abs(atoms).max(axis=1) <= 0.92 * radius_nm  # {100} facets
    keep &= np.abs(atoms).sum(axis=1) <= 1.5 * radius_nm  # {111} facets
    atoms = atoms[keep] @ _rotation(rng, zone).T
    return atoms + rng.normal(0.0, THERMAL_NM, atoms.shape)


def specimen(
    frame: MultisliceFrame, rng: np.random.Generator
) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray]]:
    """Atoms by element [(element, (n, 3) nm)] in the frame's coordinates (x, y from the top-left
    corner, z down the beam) and each particle's projected atoms (for its truth mask)."""
    h, w = frame.frame_shape
    fx, fy = w * frame.pixel_size_nm, h * frame.pixel_size_nm
    n_c = rng.poisson(CARBON_ATOMS_PER_NM3 * fx * fy * frame.support_nm)
    carbon = np.column_stack(
        [rng.uniform(0, fx, n_c), rng.uniform(0, fy, n_c), rng.uniform(0, frame.support_nm, n_c)]
    )
    by_element: dict[str, list[np.ndarray]] = {"C": [carbon]}
    footprints = []
    for material, r, x, y, zone in frame.particles:
        atoms = fcc_particle(rng, material, r, zone)
        atoms += np.array([x, y, -r - 0.2])  # resting on the support's top (z < 0 is above)
        by_element.setdefault(material, []).append(atoms)
        footprints.append(atoms[:, :2])
    atoms_list = [(el, np.concatenate(parts)) for el, parts in by_element.items()]
    return atoms_list, footprints


def _deposit(
    xy: np.ndarray, weights: np.ndarray | float, shape: tuple[int, int], pixel: float
) -> np.ndarray:
    """Bilinear deposit of points (nm) onto a periodic grid."""
    h, w = shape
    fx, fy = xy[:, 0] / pixel - 0.5, xy[:, 1] / pixel - 0.5
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    dx, dy = fx - x0, fy - y0
    wts = np.broadcast_to(np.asarray(weights, np.float64), dx.shape)
    grid = np.zeros(h * w, np.float64)
    for ox, oy, f in (
        (0, 0, (1 - dx) * (1 - dy)),
        (1, 0, dx * (1 - dy)),
        (0, 1, (1 - dx) * dy),
        (1, 1, dx * dy),
    ):
        idx = ((y0 + oy) % h) * w + (x0 + ox) % w
        grid += np.bincount(idx, weights=f * wts, minlength=h * w)
    return grid.reshape(h, w)


def _frequencies(shape: tuple[int, int], pixel: float) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(shape[0], d=pixel)[:, None], np.fft.fftfreq(shape[1], d=pixel)[None, :]


def _k2(shape: tuple[int, int], pixel: float) -> np.ndarray:
    ky, kx = _frequencies(shape, pixel)
    return kx * kx + ky * ky


def _atom_transform(element: str, k2: np.ndarray) -> np.ndarray:
    """Projected potential of one atom in Fourier space (V·nm³ at k = 0)."""
    f0_angstrom = 0.85 * Z[element] ** 0.55
    integral = 0.047878 * f0_angstrom
    core, tail = 0.025, 0.09
    return integral * (
        0.55 * np.exp(-2 * math.pi**2 * core**2 * k2)
        + 0.45 * np.exp(-2 * math.pi**2 * tail**2 * k2)
    )


def _hull_mask(points_nm: np.ndarray, shape: tuple[int, int], pixel: float) -> np.ndarray:
    pts = np.round(points_nm / pixel - 0.5).astype(np.int32)
    hull = cv2.convexHull(pts)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [hull], 1)
    return mask.astype(bool)


def _hrtem(
    frame: MultisliceFrame, atoms: list[tuple[str, np.ndarray]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    s = max(1, math.ceil(frame.pixel_size_nm / FINEST_NM))
    pixel = frame.pixel_size_nm / s
    shape = (frame.frame_shape[0] * s, frame.frame_shape[1] * s)
    ky, kx = _frequencies(shape, pixel)
    k2 = kx * kx + ky * ky
    k_max = 0.5 / pixel
    band = k2 <= (2.0 / 3.0 * k_max) ** 2
    lam = electron_wavelength_nm(frame.voltage_kv)
    sigma = interaction_constant(frame.voltage_kv)
    z_all = np.concatenate([a[:, 2] for _, a in atoms])
    z0, z1 = float(z_all.min()), float(z_all.max())
    n_slices = max(1, math.ceil((z1 - z0) / SLICE_NM))
    propagator = (np.exp(-1j * math.pi * lam * SLICE_NM * k2) * band).astype(np.complex64)
    forms = {el: (_atom_transform(el, k2) / pixel**2 * band).astype(np.float32) for el, _ in atoms}
    wave = np.ones(shape, np.complex64)
    for i in range(n_slices):
        lo, hi = z0 + i * SLICE_NM, z0 + (i + 1) * SLICE_NM + (1e-9 if i == n_slices - 1 else 0)
        spectrum = np.zeros(shape, np.complex64)
        for el, xyz in atoms:
            inside = (xyz[:, 2] >= lo) & (xyz[:, 2] < hi)
            if inside.any():
                spectrum += np.fft.fft2(_deposit(xyz[inside, :2], 1.0, shape, pixel)) * forms[el]
        potential = np.fft.ifft2(spectrum).real.astype(np.float32)
        wave = np.fft.ifft2(np.fft.fft2(wave * np.exp(1j * sigma * potential)) * propagator).astype(
            np.complex64
        )
    # Objective lens, focus at the specimen's exit surface.
    phi = np.arctan2(ky, kx)
    cs = frame.cs_um * 1e3
    chi = (
        math.pi
        * lam
        * k2
        * (frame.defocus_nm + frame.astigmatism_nm * np.cos(2 * (phi - frame.astigmatism_angle)))
    )
    chi = chi + 0.5 * math.pi * cs * lam**3 * k2 * k2
    envelope = np.exp(-0.5 * (math.pi * lam * frame.focal_spread_nm) ** 2 * k2 * k2)
    image = np.fft.ifft2(np.fft.fft2(wave) * np.exp(-1j * chi) * envelope * band)
    intensity = (np.abs(image) ** 2).astype(np.float32)
    if s > 1:
        intensity = intensity.reshape(frame.frame_shape[0], s, frame.frame_shape[1], s).mean(
            axis=(1, 3)
        )
    per_px = frame.dose_e_per_a2 * (frame.pixel_size_nm * 10.0) ** 2
    mean = np.maximum(intensity, 0) * per_px
    counts = rng.poisson(mean).astype(np.float32)
    # Counting detector: the pixel's sinc MTF applies to signal and noise alike.
    fy_ = np.fft.fftfreq(frame.frame_shape[0])[:, None]
    fx_ = np.fft.fftfreq(frame.frame_shape[1])[None, :]
    mtf = np.sinc(fx_) * np.sinc(fy_)
    counts = np.fft.ifft2(np.fft.fft2(counts) * mtf).real
    expected = np.fft.ifft2(np.fft.fft2(mean) * mtf).real.astype(np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16), expected


def _haadf(
    frame: MultisliceFrame, atoms: list[tuple[str, np.ndarray]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    shape, pixel = frame.frame_shape, frame.pixel_size_nm
    per_atom_carbon = 2e-5  # fraction of the probe's electrons one carbon atom sends to the ADF
    signal = np.zeros(shape, np.float64)
    for el, xyz in atoms:
        signal += _deposit(xyz[:, :2], per_atom_carbon * (Z[el] / 6.0) ** 1.64, shape, pixel)
    signal /= (pixel / 0.1) ** 2  # per probe position: atoms per pixel area → per Å²-ish cell
    k2 = _k2(shape, pixel)
    sig_core = frame.probe_fwhm_nm / 2.3548
    probe = 0.85 * np.exp(-2 * math.pi**2 * sig_core**2 * k2) + 0.15 * np.exp(
        -2 * math.pi**2 * 0.5**2 * k2
    )
    fraction = np.maximum(np.fft.ifft2(np.fft.fft2(signal) * probe).real, 0.0)
    # Scan distortions: a slow shear (drift during the frame) and per-line jitter.
    shear = rng.normal(0.0, 0.02)
    rows = np.arange(shape[0], dtype=np.float32)
    shifts = shear * rows + rng.normal(0.0, 0.3, shape[0])
    map_x = np.arange(shape[1], dtype=np.float32)[None, :] + shifts.astype(np.float32)[:, None]
    map_y = np.broadcast_to(rows[:, None], shape).astype(np.float32)
    fraction = cv2.remap(
        fraction.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    per_px = frame.dose_e_per_a2 * (pixel * 10.0) ** 2
    electrons = rng.poisson(fraction * per_px).astype(np.float64)
    # PMT: one gamma-spread gain per pixel, 25 DN per electron on average, 1000 DN offset.
    gain = rng.gamma(4.0, 25.0 / 4.0, shape) * (electrons > 0)
    dn = electrons * gain + 1000.0 + rng.normal(0, 6.0, shape)
    expected = (fraction * per_px * 25.0 + 1000.0).astype(np.float32)
    return np.clip(np.rint(dn), 0, 65535).astype(np.uint16), expected


def render(frame: MultisliceFrame) -> AnnotatedImage:
    """The frame and one ``"particle"`` object per particle (convex hull of its atoms)."""
    rng = np.random.default_rng([frame.seed, 0x3517])
    atoms, footprints = specimen(frame, rng)
    image, expected = (
        _hrtem(frame, atoms, rng) if frame.modality == "hrtem" else _haadf(frame, atoms, rng)
    )
    objects = []
    for (material, r, *_), pts in zip(frame.particles, footprints, strict=True):
        mask = _hull_mask(pts, frame.frame_shape, frame.pixel_size_nm)
        if mask.any():
            objects.append(ObjectTruth("particle", mask, {"material": material, "radius_nm": r}))
    attributes = {
        "modality": frame.modality,
        "pixel_size_nm": frame.pixel_size_nm,
        "dose_e_per_A2": frame.dose_e_per_a2,
        "defocus_nm": frame.defocus_nm,
        "seed": frame.seed,
        "device": "multislice",
        "expected": expected,  # the noise-free mean of each pixel (DN), for denoising scores
    }
    return AnnotatedImage(image, objects, attributes)


def test_frame(
    seed: int,
    modality: str,
    dose_e_per_a2: float,
    pixel_nm: float = 0.03,
    shape: tuple[int, int] = (512, 512),
) -> MultisliceFrame:
    """A held-out frame: 1–5 nm Au/Pt/Pd particles on 2–8 nm carbon, aberration-corrected
    (|Δf| ≤ 30 nm, Cs −10…+20 µm) or not (Δf near Scherzer, Cs 0.5–1.2 mm) HRTEM."""
    rng = np.random.default_rng([seed, 0x7E57])
    fx, fy = shape[1] * pixel_nm, shape[0] * pixel_nm
    particles: list[tuple[str, float, float, float, str]] = []
    target = int(rng.integers(2, max(3, int(fx * fy / 25.0)) + 1))
    for _ in range(target * 30):
        if len(particles) == target:
            break
        r = float(rng.uniform(0.5, min(2.5, 0.22 * min(fx, fy))))
        x, y = float(rng.uniform(0, fx)), float(rng.uniform(0, fy))
        if any(math.hypot(x - px, y - py) < r + pr + 0.3 for _, pr, px, py, _ in particles):
            continue
        material = str(rng.choice(["Au", "Pt", "Pd"]))
        zone = str(rng.choice(["110", "100", "random"], p=[0.4, 0.3, 0.3]))
        particles.append((material, r, x, y, zone))
    corrected = rng.random() < 0.6
    lam = electron_wavelength_nm(300.0)
    cs_um = float(rng.uniform(-10, 20)) if corrected else float(rng.uniform(500, 1200))
    scherzer = -1.2 * math.sqrt(abs(cs_um) * 1e3 * lam)
    return MultisliceFrame(
        modality=modality,
        frame_shape=shape,
        pixel_size_nm=pixel_nm,
        dose_e_per_a2=dose_e_per_a2,
        voltage_kv=300.0,
        defocus_nm=float(rng.uniform(-30, 30))
        if corrected
        else float(scherzer + rng.uniform(-20, 20)),
        cs_um=cs_um,
        astigmatism_nm=float(rng.uniform(0, 5)),
        astigmatism_angle=float(rng.uniform(0, math.pi)),
        focal_spread_nm=float(rng.uniform(1.5, 4.0)),
        support_nm=float(rng.uniform(2.0, 8.0)),
        particles=tuple(particles),
        probe_fwhm_nm=float(rng.uniform(0.07, 0.14)),
        seed=seed,
    )
