"""Configuration of the simulated in-situ TEM video (:class:`InSituConfig`): camera, beam, liquid
cell, transfer function, particle and decoy populations, stage and focus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scopeflow.schemas.state import Limits
from scopeflow_lab.sim.insitu.imaging import CameraModel, LiquidCell, Optics
from scopeflow_lab.sim.insitu.particles import DECOY_KINDS, MOTIONS, SHAPES, ParticleSpec

_ANGSTROM2_PER_NM2 = 100.0
_DOMAIN_MARGIN_NM = 100.0  # periodic domain beyond the field: no particle is seen twice
_MAX_DOSE_E_PER_PX = 1e5


@dataclass(frozen=True)
class InSituConfig:
    """Configuration of the simulated in-situ TEM video; units are in the names (see
    docs/simulators.md, "Simulated in-situ TEM video", for defaults and sources).

    Camera: ``frame_shape`` (rows, cols; even, 64–4096 per side — real cameras 512²–4096²),
    ``pixel_size_nm`` (at the specimen), ``fps`` (exposure = 1/fps), ``detector_pixel_um``
    (for the magnification), ``gain_dn_per_e``, ``offset_dn``, ``read_noise_e``.
    Beam: ``dose_e_per_px`` (incident electrons per pixel per frame), ``voltage_kv``,
    ``illumination_mrad`` (spatial coherence under defocus).
    Cell (Beer–Lambert): ``water_thickness_nm``, ``sinx_thickness_nm`` (both windows),
    ``lambda_particle_nm`` (Au: 20–80), ``lambda_water_nm``, ``lambda_sinx_nm``.
    Transfer function: ``transfer`` (False: noise only), ``mtf_half_cycles_per_px``,
    ``mtf_floor``.
    Particles: ``particle_density_per_um2`` (random particles per µm² of the cell patch),
    ``particles`` (explicit (spec, xy_nm) pairs, placed relative to the starting field centre),
    ``shape_weights``, ``particle_size_nm`` (median scale) and ``particle_size_spread``
    (lognormal σ), ``rod_aspect_range``,
    ``motion_weights``, ``diffusion_nm2_per_s`` (median D, or K for sub-diffusion) and
    ``diffusion_spread`` (lognormal σ), ``subdiffusion_alpha``, ``confinement_nm``,
    ``rotation_rad2_per_s``, ``growth_nm_per_s`` (mean) and ``growth_spread_nm_per_s`` (normal σ),
    ``min_size_nm`` (dissolution), ``coalescence``.
    Decoys: ``decoy_density_per_um2``, ``decoy_kind_weights``, ``decoy_radius_nm``,
    ``decoy_speed_nm_per_s``, ``decoy_turn_rad2_per_s``.
    Stage and focus: ``beam_shift_range_um`` (the image shift's largest |x| and |y|),
    ``drift_x_nm_per_s``/``drift_y_nm_per_s``, ``domain_nm`` (periodic patch
    side; None: 1.5 × the field + 200 nm), ``start_stage_x_um``/``start_stage_y_um``,
    ``stage_min_um``/``stage_max_um``, ``focus_wd_um`` (objective focus setting at which the cell
    is in focus), ``start_wd_um`` (None: in focus), ``wd_min_um``/``wd_max_um``,
    ``max_wd_step_um``. ``seed`` seeds everything.
    """

    frame_shape: tuple[int, int] = (1024, 1024)
    pixel_size_nm: float = 0.5
    fps: float = 10.0
    detector_pixel_um: float = 15.0
    gain_dn_per_e: float = 1.0
    offset_dn: float = 0.0
    read_noise_e: float = 0.0
    dose_e_per_px: float = 2000.0
    voltage_kv: float = 200.0
    illumination_mrad: float = 0.5
    water_thickness_nm: float = 150.0
    sinx_thickness_nm: float = 100.0
    lambda_particle_nm: float = 40.0
    lambda_water_nm: float = 185.0
    lambda_sinx_nm: float = 144.0
    transfer: bool = True
    mtf_half_cycles_per_px: float = 0.25
    mtf_floor: float = 0.1
    particle_density_per_um2: float = 45.0
    particles: tuple[tuple[ParticleSpec, tuple[float, float]], ...] = ()
    shape_weights: tuple[tuple[str, float], ...] = (
        ("sphere", 0.4),
        ("rod", 0.2),
        ("prism", 0.2),
        ("cube", 0.2),
    )
    particle_size_nm: float = 8.0
    particle_size_spread: float = 0.25
    rod_aspect_range: tuple[float, float] = (2.0, 4.0)
    motion_weights: tuple[tuple[str, float], ...] = (
        ("brownian", 0.6),
        ("subdiffusive", 0.25),
        ("confined", 0.15),
    )
    diffusion_nm2_per_s: float = 50.0
    diffusion_spread: float = 0.5
    subdiffusion_alpha: float = 0.6
    confinement_nm: float = 10.0
    rotation_rad2_per_s: float = 0.05
    growth_nm_per_s: float = 0.0
    growth_spread_nm_per_s: float = 0.0
    min_size_nm: float = 1.0
    coalescence: bool = True
    decoy_density_per_um2: float = 12.0
    decoy_kind_weights: tuple[tuple[str, float], ...] = (("bubble", 0.5), ("fast_particle", 0.5))
    decoy_radius_nm: float = 5.0
    decoy_speed_nm_per_s: float = 300.0
    decoy_turn_rad2_per_s: float = 1.0
    drift_x_nm_per_s: float = 0.5
    drift_y_nm_per_s: float = -0.3
    domain_nm: float | None = None
    start_stage_x_um: float = 0.0
    start_stage_y_um: float = 0.0
    stage_min_um: float = -1000.0
    stage_max_um: float = 1000.0
    focus_wd_um: float = 0.0
    start_wd_um: float | None = None
    wd_min_um: float = -50.0
    wd_max_um: float = 50.0
    max_wd_step_um: float | None = None
    beam_shift_range_um: float = 2.0  # image shift: a few µm at in-situ magnifications
    seed: int = 0
    name: str = "sim-insitu"

    def __post_init__(self) -> None:
        rows, cols = self.frame_shape
        if not (64 <= rows <= 4096 and 64 <= cols <= 4096 and rows % 2 == 0 and cols % 2 == 0):
            raise ValueError(
                f"frame_shape must be even and 64–4096 per side, got {self.frame_shape}"
            )
        positive = (
            "pixel_size_nm",
            "fps",
            "detector_pixel_um",
            "gain_dn_per_e",
            "voltage_kv",
            "illumination_mrad",
            "lambda_particle_nm",
            "lambda_water_nm",
            "lambda_sinx_nm",
            "mtf_half_cycles_per_px",
            "particle_size_nm",
            "confinement_nm",
            "beam_shift_range_um",
            "min_size_nm",
            "decoy_radius_nm",
        )
        non_negative = (
            "offset_dn",
            "read_noise_e",
            "dose_e_per_px",
            "water_thickness_nm",
            "sinx_thickness_nm",
            "particle_density_per_um2",
            "particle_size_spread",
            "diffusion_nm2_per_s",
            "diffusion_spread",
            "rotation_rad2_per_s",
            "growth_spread_nm_per_s",
            "decoy_density_per_um2",
            "decoy_speed_nm_per_s",
            "decoy_turn_rad2_per_s",
        )
        for name in positive + non_negative:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                kind = "positive" if name in positive else "non-negative"
                raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
        if self.dose_e_per_px > _MAX_DOSE_E_PER_PX:
            raise ValueError(f"dose_e_per_px must not exceed {_MAX_DOSE_E_PER_PX:g}")
        if not 0.0 <= self.mtf_floor <= 1.0:
            raise ValueError("mtf_floor must lie in [0, 1]")
        if not 0.0 < self.subdiffusion_alpha < 1.0:
            raise ValueError("subdiffusion_alpha must lie in (0, 1)")
        lo, hi = self.rod_aspect_range
        if not 1.0 <= lo <= hi:
            raise ValueError("rod_aspect_range must satisfy 1 ≤ low ≤ high")
        for name, allowed in (
            ("shape_weights", SHAPES),
            ("motion_weights", MOTIONS),
            ("decoy_kind_weights", DECOY_KINDS),
        ):
            _check_weights(name, getattr(self, name), allowed)
        for entry in self.particles:
            if not (len(entry) == 2 and isinstance(entry[0], ParticleSpec) and len(entry[1]) == 2):
                raise ValueError("particles must hold (ParticleSpec, (x_nm, y_nm)) pairs")
        field_nm = max(self.frame_shape) * self.pixel_size_nm
        if self.domain_nm is not None and not self.domain_nm >= field_nm + _DOMAIN_MARGIN_NM:
            raise ValueError(
                f"domain_nm must be at least the field ({field_nm:g} nm) + "
                f"{_DOMAIN_MARGIN_NM:g} nm so that no particle is seen twice"
            )
        for name in ("start_stage_x_um", "start_stage_y_um"):
            if not self.stage_min_um <= getattr(self, name) <= self.stage_max_um:
                raise ValueError(f"{name} lies outside the stage limits")
        if not self.wd_min_um <= self.start_wd <= self.wd_max_um:
            raise ValueError("the start focus setting lies outside [wd_min_um, wd_max_um]")

    @property
    def start_wd(self) -> float:
        return self.focus_wd_um if self.start_wd_um is None else self.start_wd_um

    @property
    def exposure_s(self) -> float:
        return 1.0 / self.fps

    @property
    def field_nm(self) -> tuple[float, float]:
        """Field of view (width, height), nm."""
        return (self.frame_shape[1] * self.pixel_size_nm, self.frame_shape[0] * self.pixel_size_nm)

    @property
    def domain(self) -> float:
        """Side of the periodic cell patch, nm."""
        if self.domain_nm is not None:
            return float(self.domain_nm)
        return 1.5 * max(self.field_nm) + 2 * _DOMAIN_MARGIN_NM

    @property
    def magnification(self) -> float:
        """Detector pixel pitch over specimen pixel size (the TEM convention)."""
        return self.detector_pixel_um * 1e3 / self.pixel_size_nm

    def flux_e_per_a2_s(self, dose_e_per_px: float | None = None) -> float:
        """Beam flux at the specimen (e⁻/Å²/s) that gives this dose per pixel and frame."""
        dose = self.dose_e_per_px if dose_e_per_px is None else dose_e_per_px
        return dose / (self.pixel_size_nm**2 * _ANGSTROM2_PER_NM2 * self.exposure_s)

    def cell(self) -> LiquidCell:
        return LiquidCell(
            self.water_thickness_nm,
            self.sinx_thickness_nm,
            self.lambda_water_nm,
            self.lambda_sinx_nm,
        )

    def optics(self) -> Optics:
        return Optics(
            self.mtf_half_cycles_per_px, self.mtf_floor, self.voltage_kv, self.illumination_mrad
        )

    def camera_model(self) -> CameraModel:
        return CameraModel(self.gain_dn_per_e, self.offset_dn, self.read_noise_e)

    def limits(self) -> Limits:
        return Limits(
            wd_min_um=float(self.wd_min_um),
            wd_max_um=float(self.wd_max_um),
            stage_x_min_um=float(self.stage_min_um),
            stage_x_max_um=float(self.stage_max_um),
            stage_y_min_um=float(self.stage_min_um),
            stage_y_max_um=float(self.stage_max_um),
            max_wd_step_um=self.max_wd_step_um,
            beam_shift_range_um=self.beam_shift_range_um,
        )


def _check_weights(
    name: str, weights: tuple[tuple[str, float], ...], allowed: tuple[str, ...]
) -> None:
    for key, weight in weights:
        if key not in allowed:
            raise ValueError(f"{name}: {key!r} is not one of {allowed}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name}: weight of {key!r} must be non-negative")
    if weights and sum(w for _, w in weights) <= 0:
        raise ValueError(f"{name}: the weights must not all be zero")
