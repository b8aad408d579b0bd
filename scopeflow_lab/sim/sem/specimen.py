"""Procedural SEM specimens: a height map and a secondary-electron (SE) yield map.

A specimen is sampled on a periodic grid in physical units (``sample_nm`` per sample), so any field
of view, at any pixel size, can be cut from it (see :mod:`.sampling`). Each family builds
the height (nm) and a per-material SE yield (SE per primary electron), and :func:`finish` adds the
topographic contrast of the SE signal: the yield grows as 1/cos of the local surface tilt (Seiler,
J. Appl. Phys. 54, R1, 1983), which makes particle rims, grain grooves and scratch walls bright.

Material yields are representative values at a few keV (Joy's database of electron–solid
interactions; Seiler 1983), meant for contrast, not for quantitative work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# Representative SE yields (SE per primary electron) of the materials the families use.
YIELD_CARBON = 0.30
YIELD_GOLD = 0.95
YIELD_TIN = 0.80
YIELD_METAL = 0.55
YIELD_CERAMIC = 0.80
YIELD_PORE_BOTTOM = 0.06  # SE from deep pores hardly escape
YIELD_SILICON = 0.35
YIELD_POLYMER = 0.60
# Beyond this local tilt the 1/cos law is capped: the rim of a sphere is a finite-width slope, not a
# vertical wall, and the measured SE edge contrast stays within a few times the flat yield.
MAX_TILT_DEG = 75.0


@dataclass(frozen=True, eq=False)
class Specimen:
    """A periodic specimen: height (nm) and SE yield maps on a grid of ``sample_nm`` per sample.

    Both maps are float32 arrays of the same shape (rows = y, columns = x) and wrap around at the
    edges, so the specimen tiles the plane with period ``shape × sample_nm``.
    """

    name: str
    height_nm: np.ndarray
    se_yield: np.ndarray
    sample_nm: float

    @property
    def period_nm(self) -> tuple[float, float]:
        """Tile size (y, x) in nm."""
        ny, nx = self.se_yield.shape
        return ny * self.sample_nm, nx * self.sample_nm


# -- generic helpers ----------------------------------------------------------------------------


def _blur_wrap(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with periodic boundaries."""
    if sigma <= 0:
        return a
    pad = math.ceil(4 * sigma) + 1
    padded = np.pad(a, pad, mode="wrap")
    out = cv2.GaussianBlur(padded, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return np.ascontiguousarray(out[pad:-pad, pad:-pad])


def _resize_wrap(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Periodic (bi)linear resampling of a periodic map onto a grid of ``shape``."""
    ny, nx = a.shape
    sy, sx = ny / shape[0], nx / shape[1]
    # Output sample k sits at (k + 0.5) * s in input-sample units; the input centre of j is j+0.5.
    m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
    return cv2.warpAffine(
        a,
        m,
        (shape[1], shape[0]),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_WRAP,
    )


def smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Periodic Gaussian random field on an n×n grid, correlation σ in samples, unit std."""
    k = 1
    while sigma / k >= 4 and n % (2 * k) == 0 and n // (2 * k) >= 8:
        k *= 2  # a coarse grid is enough for a smooth field and keeps generation fast
    m = n // k
    field = _blur_wrap(rng.standard_normal((m, m), dtype=np.float32), sigma / k)
    if k > 1:
        field = _resize_wrap(field, (n, n))
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def _wrapped_index(top: int, left: int, shape: tuple[int, int], size: tuple[int, int]):
    """Index of a patch at (top, left) on a periodic map: plain slices unless it wraps."""
    if 0 <= top <= size[0] - shape[0] and 0 <= left <= size[1] - shape[1]:
        return slice(top, top + shape[0]), slice(left, left + shape[1])  # fast view
    rows = np.arange(top, top + shape[0]) % size[0]
    cols = np.arange(left, left + shape[1]) % size[1]
    return np.ix_(rows, cols)


def _stamp(
    height: np.ndarray,
    material: np.ndarray | None,
    patch: np.ndarray,
    mask: np.ndarray,
    top: int,
    left: int,
    yield_value: float | None,
    *,
    mode: str,
) -> None:
    """Combine ``patch`` into ``height`` at (top, left) with periodic wrap.

    ``mode`` is "max" (objects lying on the surface) or "min" (holes, grooves). Where ``mask`` is
    set and the patch wins, the material yield becomes ``yield_value`` (unchanged when None).
    """
    ix = _wrapped_index(top, left, patch.shape, height.shape)
    sub = height[ix]
    wins = (patch > sub) if mode == "max" else (patch < sub)
    wins &= mask
    height[ix] = np.where(wins, patch, sub)
    if material is not None and yield_value is not None:
        material[ix] = np.where(wins, np.float32(yield_value), material[ix])


def _spheres(
    height: np.ndarray,
    material: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    sample_nm: float,
    yield_value: float,
) -> None:
    """Spheres (centres (y, x) and radii in samples) resting on the surface.

    The visible cap of a sphere is R + sqrt(R² − ρ²) above the support; where spheres overlap the
    higher surface wins. Spheres of similar size are rendered together, vectorized.
    """
    n_y, n_x = height.shape
    caps = np.full(height.size, -np.inf, np.float32)
    halves = np.ceil(radii).astype(int) + 1
    for half in np.unique(halves):
        pick = halves == half
        cy, cx, r = centres[pick, 0], centres[pick, 1], radii[pick]
        offsets = np.arange(-half, half + 1)
        top, left = np.floor(cy).astype(int), np.floor(cx).astype(int)
        rows = top[:, None] + offsets[None, :]  # (k, P)
        cols = left[:, None] + offsets[None, :]
        dy = rows + 0.5 - cy[:, None]
        dx = cols + 0.5 - cx[:, None]
        rho2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2  # (k, P, P)
        r2 = (r * r)[:, None, None]
        inside = rho2 < r2
        cap = (r[:, None, None] + np.sqrt(np.maximum(r2 - rho2, 0.0))) * sample_nm
        flat = (rows[:, :, None] % n_y) * n_x + (cols[:, None, :] % n_x)
        np.maximum.at(caps, flat[inside], cap[inside].astype(np.float32))
    caps = caps.reshape(height.shape)
    on_top = caps > height
    height[on_top] = caps[on_top]
    material[on_top] = yield_value


def _polyline_distance(points: np.ndarray, reach: float) -> tuple[np.ndarray, int, int]:
    """Distance (samples) from a local grid to a polyline; returns (distance, top, left)."""
    lo = np.floor(points.min(axis=0) - reach - 2).astype(int)
    hi = np.ceil(points.max(axis=0) + reach + 2).astype(int)
    left, top = int(lo[0]), int(lo[1])
    canvas = np.full((hi[1] - top + 1, hi[0] - left + 1), 255, np.uint8)
    # Fixed-point coordinates (4 fractional bits) keep the centreline sub-sample accurate.
    local = np.round((points - [left, top]) * 16).astype(np.int32)
    cv2.polylines(
        canvas, [local.reshape(-1, 1, 2)], False, 0, thickness=1, lineType=cv2.LINE_8, shift=4
    )
    # The 5×5 chamfer mask (≤ 2 % error) rather than DIST_MASK_PRECISE: OpenCV's precise
    # transform returns slightly different values on its first call in a process, which made
    # specimens, and so datasets, differ between runs with the same seed.
    dist = cv2.distanceTransform(canvas, cv2.DIST_L2, 5)
    return dist, top, left


def _curve(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    step: float,
    wiggle: float,
) -> np.ndarray:
    """A smooth random curve: the heading performs a smoothed random walk (x, y in samples)."""
    steps = max(2, int(length / step))
    turns = np.convolve(rng.normal(0.0, wiggle, steps + 8), np.ones(8) / 8, mode="valid")[:steps]
    angles = heading + np.cumsum(turns)
    xy = np.cumsum(np.stack([np.cos(angles), np.sin(angles)], axis=1) * step, axis=0)
    return np.vstack([start, start + xy])


def _draw_profile(
    height: np.ndarray,
    material: np.ndarray,
    points: np.ndarray,
    reach: float,
    profile: Callable[[np.ndarray], np.ndarray],
    yield_value: float | None,
    mode: str,
    chunk: int = 16,
) -> None:
    """Stamp a cross-section ``profile(distance)`` along a polyline, in short chunks."""
    for i in range(0, len(points) - 1, chunk):
        part = points[i : i + chunk + 1]
        dist, top, left = _polyline_distance(part, reach)
        inside = dist < reach
        _stamp(
            height,
            material,
            profile(dist).astype(np.float32),
            inside,
            top,
            left,
            yield_value,
            mode=mode,
        )


def _lognormal(
    rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float, size: int
) -> np.ndarray:
    return np.clip(rng.lognormal(math.log(median), sigma, size), lo, hi)


def finish(
    name: str, height_nm: np.ndarray, material_yield: np.ndarray, sample_nm: float
) -> Specimen:
    """Apply the topographic SE contrast (yield ∝ 1/cos tilt) and pack a :class:`Specimen`."""
    h = height_nm.astype(np.float32)
    gx = (np.roll(h, -1, axis=1) - np.roll(h, 1, axis=1)) / (2 * sample_nm)
    gy = (np.roll(h, -1, axis=0) - np.roll(h, 1, axis=0)) / (2 * sample_nm)
    sec_tilt = np.sqrt(1.0 + gx * gx + gy * gy)  # 1/cos θ with tan θ = |∇h|
    cap = 1.0 / math.cos(math.radians(MAX_TILT_DEG))
    se_yield = material_yield.astype(np.float32) * np.minimum(sec_tilt, cap)
    return Specimen(
        name=name, height_nm=h, se_yield=se_yield.astype(np.float32), sample_nm=float(sample_nm)
    )


def _support(
    rng: np.random.Generator,
    n: int,
    s: float,
    base_yield: float,
    grain_nm: float,
    grain_contrast: float,
    rough_nm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A flat support with fine grainy yield and a little height roughness."""
    material = base_yield * (1.0 + grain_contrast * smooth_field(rng, n, grain_nm / s))
    height = rough_nm * smooth_field(rng, n, 4 * grain_nm / s)
    return height.astype(np.float32), material.astype(np.float32)


# -- families -----------------------------------------------------------------------------------


def nanoparticles(rng: np.random.Generator, n: int, sample_nm: float) -> Specimen:
    """Gold nanoparticles (median Ø 24 nm, some agglomerated) on a grainy amorphous-carbon film."""
    s = sample_nm
    height, material = _support(
        rng, n, s, YIELD_CARBON, grain_nm=3.0, grain_contrast=0.15, rough_nm=1.0
    )
    area = (n * s) ** 2
    mean_area = math.pi * (12.0**2) * math.exp(2 * 0.45**2)
    count = int(0.12 * area / mean_area)
    radii_nm = _lognormal(rng, 12.0, 0.45, 3.0, 45.0, count)
    centres = rng.uniform(0, n, (count, 2))
    # Agglomerates: a share of the particles sits next to an earlier one.
    for i in np.flatnonzero(rng.random(count) < 0.35):
        if i == 0:
            continue
        j = int(rng.integers(0, i))
        angle = rng.uniform(0, 2 * math.pi)
        gap = (radii_nm[i] + radii_nm[j]) / s
        centres[i] = centres[j] + gap * np.array([math.cos(angle), math.sin(angle)])
    _spheres(height, material, centres, radii_nm / s, s, YIELD_GOLD)
    return finish("nanoparticles", height, material, s)


def tin_balls(rng: np.random.Generator, n: int, sample_nm: float) -> Specimen:
    """Tin spheres on carbon, radii 8–500 nm with n(R) ∝ R⁻³ (equal area per size decade)."""
    s = sample_nm
    height, material = _support(
        rng, n, s, YIELD_CARBON, grain_nm=3.0, grain_contrast=0.12, rough_nm=1.0
    )
    r_min, r_max = 8.0, min(500.0, n * s / 8)
    mean_r2 = 2 * math.log(r_max / r_min) / (r_min**-2 - r_max**-2)
    count = int(0.35 * (n * s) ** 2 / (math.pi * mean_r2))
    u = rng.random(count)
    radii_nm = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
    centres = rng.uniform(0, n, (count, 2))
    _spheres(height, material, centres, radii_nm / s, s, YIELD_TIN)
    return finish("tin_balls", height, material, s)


def _voronoi_labels(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """Periodic Voronoi cells (nearest seed, approximate Euclidean) as seed indices."""
    seeds = rng.uniform(0, n, (count, 2))
    pad = min(n, int(3 * n / math.sqrt(count)) + 4)  # a few cell sizes: enough to find the nearest
    size = n + 2 * pad
    canvas = np.ones((size, size), np.uint8)
    owner = np.full((size, size), -1, np.int32)
    for dy in (-n, 0, n):
        for dx in (-n, 0, n):
            yx = np.floor(seeds + [dy + pad, dx + pad]).astype(int)
            ok = np.all((yx >= 0) & (yx < size), axis=1)
            canvas[yx[ok, 0], yx[ok, 1]] = 0
            owner[yx[ok, 0], yx[ok, 1]] = np.flatnonzero(ok)
    _, labels = cv2.distanceTransformWithLabels(
        canvas, cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    zero_y, zero_x = np.nonzero(canvas == 0)
    label_owner = np.zeros(labels.max() + 1, np.int32)
    label_owner[labels[zero_y, zero_x]] = owner[zero_y, zero_x]
    return label_owner[labels[pad : pad + n, pad : pad + n]]


def grains(rng: np.random.Generator, n: int, sample_nm: float) -> Specimen:
    """Polycrystal (mean grain Ø ≈ 300 nm): per-grain channeling contrast, bright grooved
    boundaries."""
    s = sample_nm
    count = max(4, int((n * s / 300.0) ** 2))
    ids = _voronoi_labels(rng, n, count)
    channeling = rng.uniform(0.5, 1.5, count).astype(np.float32)
    relief = rng.normal(0.0, 3.0, count).astype(np.float32)  # polishing relief, nm
    boundary = ((ids != np.roll(ids, 1, 0)) | (ids != np.roll(ids, 1, 1))).astype(np.float32)
    groove = _blur_wrap(boundary, 6.0 / s)
    groove /= max(float(groove.max()), 1e-6)
    height = relief[ids] - 8.0 * groove + 0.5 * smooth_field(rng, n, 10.0 / s)
    material = YIELD_METAL * channeling[ids] * (1 + 0.02 * smooth_field(rng, n, 20.0 / s))
    material += 0.25 * groove  # SE escape from both sides of a boundary groove
    return finish("grains", height, material, s)


def pores(rng: np.random.Generator, n: int, sample_nm: float) -> Specimen:
    """Dark pores (median Ø 60 nm, ~20 % porosity) in a bright, slightly rough ceramic matrix."""
    s = sample_nm
    height, material = _support(
        rng, n, s, YIELD_CERAMIC, grain_nm=8.0, grain_contrast=0.06, rough_nm=2.0
    )
    mean_area = math.pi * 30.0**2 * math.exp(2 * 0.6**2) * 1.25
    count = int(0.2 * (n * s) ** 2 / mean_area)
    radii = _lognormal(rng, 30.0, 0.6, 6.0, 250.0, count) / s
    for r in radii:
        cy, cx = rng.uniform(0, n, 2)
        aspect = rng.uniform(1.0, 1.5)
        angle = rng.uniform(0, math.pi)
        half = math.ceil(r * aspect) + 2
        top, left = math.floor(cy) - half, math.floor(cx) - half
        yy = np.arange(top, top + 2 * half + 1) + 0.5 - cy
        xx = np.arange(left, left + 2 * half + 1) + 0.5 - cx
        u = xx[None, :] * math.cos(angle) + yy[:, None] * math.sin(angle)
        v = -xx[None, :] * math.sin(angle) + yy[:, None] * math.cos(angle)
        rho2 = (u / (r * aspect)) ** 2 + (v / r) ** 2
        inside = rho2 < 1.0
        depth = min(2 * r * s, 200.0)
        # Steep walls, rounded bottom: depth profile (1 − ρ⁸).
        patch = np.where(inside, -depth * (1.0 - rho2**4), 0.0).astype(np.float32)
        _stamp(height, material, patch, inside, top, left, YIELD_PORE_BOTTOM, mode="min")
    return finish("pores", height, material, s)


def fibres(rng: np.random.Generator, n: int, sample_nm: float) -> Specimen:
    """Curved cylindrical fibres (median Ø 70 nm) lying on a silicon substrate."""
    s = sample_nm
    height, material = _support(
        rng, n, s, YIELD_SILICON, grain_nm=4.0, grain_contrast=0.08, rough_nm=0.5
    )
    mean_len = 0.6 * n
    count = max(3, int(0.25 * n * n / (2 * 40.0 / s * mean_len)))
    for _ in range(count):
        r = float(_lognormal(rng, 35.0, 0.5, 10.0, 150.0, 1)[0]) / s
        length = rng.uniform(0.3, 0.9) * n
        pts = _curve(
            rng, rng.uniform(0, n, 2), rng.uniform(0, 2 * math.pi), length, step=4.0, wiggle=0.04
        )
        base = float(rng.uniform(0.0, 0.5)) * r  # fibres lie on each other, a little raised

        def cylinder(d: np.ndarray, r: float = r, base: float = base) -> np.ndarray:
            return (base + r + np.sqrt(np.maximum(r * r - d * d, 0.0))) * s

        _draw_profile(height, material, pts, r, cylinder, YIELD_POLYMER, mode="max")
    return finish("fibres", height, material, s)


def scratches(rng: np.random.Generator, n: int, sample_nm: float) -> Specimen:
    """A polished metal surface: aligned fine polishing lines and a few deeper random scratches.

    Scratches are V-grooves (depth ≈ 0.4–0.5 × width) with pile-up lips; their bottoms are darker
    because fewer SE escape from a narrow groove.
    """
    s = sample_nm
    height, material = _support(
        rng, n, s, YIELD_METAL, grain_nm=5.0, grain_contrast=0.03, rough_nm=0.3
    )
    # Grains under the smeared layer show through (orientation contrast), the visible structure
    # at low magnification where the polishing lines are sub-pixel.
    material *= 1.0 + 0.3 * smooth_field(rng, n, 150.0 / s)
    cut = np.zeros_like(height)
    lips = np.zeros_like(height)
    direction = rng.uniform(0, math.pi)
    scale = (n * s / 8192.0) ** 2  # counts are per 8.2 µm × 8.2 µm
    fine, deep = max(4, int(250 * scale)), max(2, int(20 * scale))
    for k in range(fine + deep):
        is_deep = k >= fine
        width_nm = float(_lognormal(rng, 150.0 if is_deep else 20.0, 0.5, 4.0, 600.0, 1)[0])
        hw = width_nm / 2 / s
        depth = (0.5 if is_deep else 0.4) * width_nm
        random_heading = is_deep and rng.random() < 0.5
        heading = rng.uniform(0, math.pi) if random_heading else direction + rng.normal(0, 0.08)
        pts = _curve(
            rng, rng.uniform(0, n, 2), heading, rng.uniform(0.2, 0.9) * n, step=8.0, wiggle=0.003
        )
        for i in range(0, len(pts) - 1, 8):  # short chunks keep the bounding boxes small
            dist, top, left = _polyline_distance(pts[i : i + 9], 2.2 * hw)
            near = dist < 2.2 * hw
            groove = (-depth * np.maximum(0.0, 1.0 - dist / hw)).astype(np.float32)
            lip = 0.2 * depth * np.exp(-(((dist - 1.4 * hw) / (0.5 * hw)) ** 2))
            _stamp(cut, None, groove, near, top, left, None, mode="min")
            _stamp(lips, None, lip.astype(np.float32), near, top, left, None, mode="max")
    material *= 1.0 - 0.5 * np.clip(-cut / 10.0, 0.0, 1.0)
    return finish("scratches", height + cut + lips, material, s)


SpecimenFamily = Callable[[np.random.Generator, int, float], Specimen]

#: Procedural specimen families by name: ``generator(rng, samples, sample_nm) -> Specimen``.
SPECIMEN_FAMILIES: dict[str, SpecimenFamily] = {
    "nanoparticles": nanoparticles,
    "tin_balls": tin_balls,
    "grains": grains,
    "pores": pores,
    "fibres": fibres,
    "scratches": scratches,
}


def make_specimen(family: str, seed: int, samples: int = 2048, sample_nm: float = 4.0) -> Specimen:
    """Generate a procedural specimen, deterministic under ``seed``."""
    try:
        generator = SPECIMEN_FAMILIES[family]
    except KeyError:
        known = ", ".join(sorted(SPECIMEN_FAMILIES))
        raise ValueError(f"unknown specimen family {family!r}; choose one of {known}") from None
    return generator(np.random.default_rng(seed), samples, sample_nm)
