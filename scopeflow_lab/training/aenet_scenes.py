"""Simulated SEM scenes for training AENet (and ACNet): the train / held-out family split, the
specimen pool (families, low-contrast copies, generic textures), random scenes and defocus draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from scopeflow.inference.models import aenet as model
from scopeflow.schemas.state import depth_of_field_um
from scopeflow_lab.sim.sem import SPECIMEN_FAMILIES, SEMConfig, SimulatedSEM, Specimen
from scopeflow_lab.sim.sem.optics import blur_diameters_px, probe_sigma_px
from scopeflow_lab.sim.sem.specimen import finish, make_specimen, smooth_field

HELDOUT_FAMILIES = ("pores", "scratches")  # one isotropic, one oriented family never trained on
TRAIN_FAMILIES = tuple(f for f in sorted(SPECIMEN_FAMILIES) if f not in HELDOUT_FAMILIES)
SPECIMEN_SEED_BASE = 100_000
NOISE_SEED_BASE = 1_000_000
FOCUS_WD_UM = 5000.0


# Pixel sizes are drawn from a fixed log-spaced set so each simulator's cache of filtered specimen
# maps (8 entries) keeps hitting; none of them is one of the evaluation's 5 / 10 / 20 nm.
PIXEL_SIZES_NM = tuple(round(4.0 * (25.0 / 4.0) ** (k / 7), 2) for k in range(8))
# α sets the DoF (pixel / α) and nothing else in DoF units — the blur disk spans 2·u pixels at
# any α — so frames are rendered at one α; the evaluation varies it (2, 3, 5 mrad).
RENDER_ALPHA_MRAD = 3.0


@dataclass(frozen=True)
class SceneRanges:
    """What varies between scenes, and its ranges (log-uniform where a ratio matters)."""

    dose_e_per_px: tuple[float, float] = (8.0, 600.0)
    astigmatism_probability: float = 0.5
    astigmatism_dof: tuple[float, float] = (0.5, 3.0)
    uint8_probability: float = 0.2


@dataclass(frozen=True)
class Scene:
    """One imaging situation (specimen, magnification, dose, astigmatism, dtype) at any defocus.

    Frames come from one simulator per specimen and frame size, reconfigured through its public
    setters (building a simulator costs a specimen pyramid, ~40 ms).
    """

    family: str
    sim_for: Callable[[int], SimulatedSEM]
    pixel_nm: float
    dose_e_per_px: float
    astigmatism_dof: float
    astigmatism_angle_deg: float
    stage_um: tuple[float, float]
    uint8: bool

    @property
    def dof_um(self) -> float:
        return depth_of_field_um(self.pixel_nm, RENDER_ALPHA_MRAD)

    def frame(self, defocus_dof: float, size: int) -> np.ndarray:
        """A frame at ``defocus_dof`` (WD − focus, DoF units), ``size``² pixels."""
        sim = self.sim_for(size)
        dof = self.dof_um
        sim.set_pixel_size_nm(self.pixel_nm)
        sim.set_dose_e_per_px(self.dose_e_per_px)
        sim.set_astigmatism(self.astigmatism_dof * dof, self.astigmatism_angle_deg)
        sim.move_stage(*self.stage_um)
        sim.set_wd(FOCUS_WD_UM + defocus_dof * dof)
        pixels = sim.acquire().pixels
        if self.uint8:  # what the uint8 detector chain gives: the same DN scaled by 1/257
            pixels = np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)
        return pixels

    def orientation(self, defocus_dof: float, scale: float = 1.0) -> np.ndarray:
        """The blur ellipse's doubled-angle vector at ``defocus_dof`` (AENet's target), seen in
        pixels ``scale`` times the frame's."""
        dof = self.dof_um
        along, across = blur_diameters_px(
            defocus_dof * dof, RENDER_ALPHA_MRAD, self.pixel_nm, self.astigmatism_dof * dof
        )
        sigma = probe_sigma_px(SEMConfig().probe_fwhm_nm, self.pixel_nm)
        if scale != 1.0:  # on the averaged-down grid the pixel floor takes over again
            along, across, sigma = along / scale, across / scale, 0.5
        return model.orientation_target(along, across, self.astigmatism_angle_deg, sigma)


# -- domain randomisation: generic textures beside the families ------------------------------------
# Four families alone let a network recognise specimens (their contrast, their noise share)
# instead of measuring blur; it then misjudges a family it never saw. Generic textures with random
# contrast, object sizes and polarity — none of them a held-out family — break that shortcut.
TEXTURE_KINDS = ("leaves", "blobs", "phases", "lines", "fractal")


def _texture(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """An n × n texture of ``kind`` scaled to [0, 1]."""
    y = np.zeros((n, n), np.float32)
    if kind == "leaves":  # dead leaves: occluding ellipses, radii ∝ r⁻³ (scale-free edges)
        r_min, r_max = 1.5, n / 8
        mean_r2 = 2 * math.log(r_max / r_min) / (r_min**-2 - r_max**-2)
        u = rng.random(int(3 * n * n / (math.pi * mean_r2)))  # about 3 layers deep
        radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        centres = rng.integers(0, n, (len(radii), 2))
        for r, (cy, cx), shade, turn, aspect in zip(
            radii[np.argsort(-radii)],
            centres,
            rng.random(len(radii)),
            rng.uniform(0, 180, len(radii)),
            rng.uniform(0.4, 1.0, len(radii)),
            strict=True,
        ):
            cv2.ellipse(
                y,
                (int(cx), int(cy)),
                (max(1, round(r)), max(1, round(r * aspect))),
                float(turn),
                0,
                360,
                float(shade),
                -1,
                lineType=cv2.LINE_AA,
            )
    elif kind == "blobs":  # sparse objects on a support, bright or dark
        y += float(rng.uniform(0.3, 0.7))
        median = _log_uniform(rng, (1.5, 40.0))
        cover = float(rng.uniform(0.03, 0.35))
        count = int(cover * n * n / (math.pi * median**2 * 1.5))
        value = float(rng.uniform(0.0, 0.2) if rng.random() < 0.5 else rng.uniform(0.8, 1.0))
        for _ in range(min(count, 40_000)):
            r = median * math.exp(rng.normal(0, 0.5))
            centre = (int(rng.integers(n)), int(rng.integers(n)))
            axes = (max(1, round(r)), max(1, round(r * rng.uniform(0.5, 1.0))))
            cv2.ellipse(
                y,
                centre,
                axes,
                float(rng.uniform(0, 180)),
                0,
                360,
                value * float(rng.uniform(0.8, 1.2)),
                -1,
                lineType=cv2.LINE_AA,
            )
    elif kind == "phases":  # a thresholded random field: two or three sharp-edged phases
        field = smooth_field(rng, n, _log_uniform(rng, (2.0, 60.0)))
        cuts = np.sort(rng.uniform(-0.8, 0.8, int(rng.integers(1, 3))))
        levels = rng.random(len(cuts) + 1)
        y = levels[np.searchsorted(cuts, field)].astype(np.float32)
    elif kind == "lines":  # thin straight or bent lines, bright or dark, on a flat support
        y += float(rng.uniform(0.3, 0.7))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        heading = float(rng.uniform(0, math.pi))
        for _ in range(int(rng.integers(20, 400))):
            width = _log_uniform(rng, (1.0, 12.0))
            theta = (
                heading + float(rng.normal(0, 0.3))
                if rng.random() < 0.7
                else float(rng.uniform(0, math.pi))
            )
            length = float(rng.uniform(0.05, 0.8)) * n
            start = rng.uniform(0, n, 2)
            bend = float(rng.normal(0, 0.2))
            t = np.linspace(0.0, 1.0, 8)[:, None]
            direction = np.stack(
                [np.cos(theta + bend * t[:, 0]), np.sin(theta + bend * t[:, 0])], axis=1
            )
            pts = (start + length * t * direction).astype(np.int32)
            cv2.polylines(
                y,
                [pts],
                False,
                float(y[0, 0] + sign * rng.uniform(0.2, 0.5)),
                thickness=max(1, round(width)),
                lineType=cv2.LINE_AA,
            )
    elif kind == "fractal":  # 1/f^β texture: smooth, no edges (the hard case)
        beta = float(rng.uniform(1.5, 3.2))
        k = np.fft.fftfreq(n)
        k2 = k[:, None] ** 2 + k[None, :] ** 2
        k2[0, 0] = 1.0
        spec = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) * k2 ** (-beta / 4)
        spec[0, 0] = 0.0
        y = np.real(np.fft.ifft2(spec)).astype(np.float32)
    else:
        raise ValueError(f"unknown texture kind {kind!r}; choose one of {TEXTURE_KINDS}")
    return (y - y.min()) / max(float(np.ptp(y)), 1e-6)


def random_specimen(
    kind: str, rng: np.random.Generator, n: int = 1024, sample_nm: float = 4.0
) -> Specimen:
    """A generic procedural specimen of ``kind`` (see ``TEXTURE_KINDS``), random contrast.

    Half of them carry a second texture of another kind on top (smooth shading under sharp
    objects, sparse objects on a textured support...): frames that mix sharp and smooth detail.
    """
    y = _texture(kind, rng, n)
    if rng.random() < 0.5:
        other = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
        y = y + float(rng.uniform(0.3, 1.0)) * _texture(other, rng, n)
        y = (y - y.min()) / max(float(np.ptp(y)), 1e-6)
    y += 0.1 * smooth_field(rng, n, _log_uniform(rng, (0.7, 3.0)))  # fine support grain
    contrast = _log_uniform(rng, (0.1, 1.0))
    material = np.clip(0.5 + contrast * (y - 0.5), 0.02, None).astype(np.float32)
    # Half of them raised by their brightness, for the bright SE rims of real edges.
    lift = float(rng.uniform(0.0, 20.0)) if rng.random() < 0.5 else 0.0
    return finish(kind, (lift * y).astype(np.float32), material, sample_nm)


def low_contrast(specimen: Specimen, contrast: float) -> Specimen:
    """The same specimen with its SE-yield modulation scaled by ``contrast`` about the mean."""
    m = float(specimen.se_yield.mean())
    y = np.clip(m + contrast * (specimen.se_yield - m), 0.01, None).astype(np.float32)
    return Specimen(f"{specimen.name}-c{contrast:.2f}", specimen.height_nm, y, specimen.sample_nm)


def specimen_pool(
    families: tuple[str, ...],
    specimen_seeds: tuple[int, ...],
    textures: int,
    samples: int = 2048,
    progress: Callable[[str], None] = print,
) -> list[tuple[str, Specimen]]:
    """Training specimens: each family × seed, a low-contrast copy of each, and ``textures``
    generic textures (kinds in turn), all from seeds ≥ ``SPECIMEN_SEED_BASE``."""
    pool: list[tuple[str, Specimen]] = []
    for family in families:
        for seed in specimen_seeds:
            specimen = make_specimen(family, seed, samples=samples)
            rng = np.random.default_rng([seed, 0xC0])
            pool += [
                (family, specimen),
                (family, low_contrast(specimen, _log_uniform(rng, (0.15, 0.6)))),
            ]
    for i in range(textures):
        kind = TEXTURE_KINDS[i % len(TEXTURE_KINDS)]
        rng = np.random.default_rng([SPECIMEN_SEED_BASE + i, 0x7E])
        pool.append((kind, random_specimen(kind, rng, n=min(samples, 1024))))
    progress(
        f"  {len(pool)} specimens: {len(families)} families × {len(specimen_seeds)} seeds "
        f"(and low-contrast copies), {textures} generic textures"
    )
    return pool


class SceneSampler:
    """Random scenes over a pool of specimens; families and textures drawn half and half."""

    def __init__(
        self,
        specimens: list[tuple[str, Specimen]],
        ranges: SceneRanges | None = None,
        noise_seed: int = NOISE_SEED_BASE,
    ) -> None:
        self.ranges = ranges or SceneRanges()
        self.specimens = specimens
        self._families = [i for i, (f, _) in enumerate(specimens) if f in SPECIMEN_FAMILIES]
        self._textures = [i for i, (f, _) in enumerate(specimens) if f not in SPECIMEN_FAMILIES]
        self._noise_seed = noise_seed
        self._sims: dict[tuple[int, int], SimulatedSEM] = {}

    def _sim(self, index: int, size: int) -> SimulatedSEM:
        key = (index, size)
        if key not in self._sims:
            _, specimen = self.specimens[index]
            cfg = replace(
                SEMConfig(),
                frame_shape=(size, size),
                seed=self._noise_seed + 1000 * index + size,
                beam_semiangle_mrad=RENDER_ALPHA_MRAD,
                focus_wd_um=FOCUS_WD_UM,
                settle_s=0.0,
            )
            self._sims[key] = SimulatedSEM(cfg, specimen=specimen)
        return self._sims[key]

    def sample(self, rng: np.random.Generator) -> Scene:
        r = self.ranges
        group = self._textures if self._textures and rng.random() < 0.5 else self._families
        index = int(group[int(rng.integers(len(group)))])
        astig = rng.random() < r.astigmatism_probability
        return Scene(
            family=self.specimens[index][0],
            sim_for=lambda size: self._sim(index, size),
            pixel_nm=float(PIXEL_SIZES_NM[int(rng.integers(len(PIXEL_SIZES_NM)))]),
            dose_e_per_px=_log_uniform(rng, r.dose_e_per_px),
            astigmatism_dof=float(rng.uniform(*r.astigmatism_dof)) if astig else 0.0,
            astigmatism_angle_deg=float(rng.uniform(0.0, 180.0)),
            stage_um=(float(rng.uniform(-20, 20)), float(rng.uniform(-20, 20))),
            uint8=bool(rng.random() < r.uint8_probability),
        )


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def sample_defocus_dof(rng: np.random.Generator) -> float:
    """Signed defocus: near focus (log-uniform 0.03–5 DoF), the ±30 start range, or beyond."""
    pick = rng.random()
    if pick < 0.35:
        magnitude = _log_uniform(rng, (0.03, 5.0))
    elif pick < 0.8:
        magnitude = float(rng.uniform(0.0, 30.0))
    else:
        magnitude = float(rng.uniform(0.0, 65.0))
    return magnitude if rng.random() < 0.5 else -magnitude
