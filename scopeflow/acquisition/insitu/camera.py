"""A simulated liquid-cell / environmental TEM camera and the video dataset it makes.

:class:`InSituScene` holds the cell patch (particles, decoys, stage drift) and renders frame ``k``
at time ``k / fps``. :class:`SimulatedInSituCamera` puts it behind the ``Microscope`` protocol on
its own clock: ``acquire()`` returns the frame due now, so frames a slow consumer misses are
skipped, and a fast consumer waits for the next frame. :class:`InSituVideoSource` yields
consecutive frames with their ground truth (masks, track ids, centroids) for dataset writers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from scopeflow.acquisition.insitu.imaging import (
    CameraModel,
    Canvas,
    Footprint,
    Imager,
    LiquidCell,
    Optics,
    electron_wavelength_nm,
)
from scopeflow.acquisition.insitu.particles import (
    DECOY_KINDS,
    MOTIONS,
    SHAPES,
    DecoyField,
    ParticleSpec,
    ParticleState,
    Population,
    Shape,
    subdiffusion_modes,
    track_ids,
)
from scopeflow.acquisition.truth import AnnotatedImage, ObjectTruth
from scopeflow.devices.base import MicroscopeBase
from scopeflow.devices.protocols import Frame
from scopeflow.errors import DeviceError, LimitError
from scopeflow.schemas.state import Limits, MicroscopeState, SimTruth

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
    Stage and focus: ``drift_x_nm_per_s``/``drift_y_nm_per_s``, ``domain_nm`` (periodic patch
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


def _pick(rng: np.random.Generator, weights: tuple[tuple[str, float], ...]) -> str:
    p = np.array([w for _, w in weights], float)
    return weights[int(rng.choice(len(weights), p=p / p.sum()))][0]


class InSituScene:
    """The simulated cell patch and its imaging; deterministic under ``seed``.

    Dynamics advance one frame interval at a time (:meth:`advance_to`), whatever frames are
    rendered, so frame ``k`` is the same whether or not frames before it were looked at.
    Random streams are separate for the population, the decoys and the noise.
    """

    def __init__(self, config: InSituConfig, seed: int | None = None) -> None:
        self.config = config
        self.seed = config.seed if seed is None else int(seed)
        self.frame_index = 0
        self._cell = config.cell()
        self._imager = Imager(
            config.frame_shape,
            config.pixel_size_nm,
            config.optics(),
            config.camera_model(),
            transfer=config.transfer,
        )
        self._noise_rng = np.random.default_rng([self.seed, 0x1A5])
        self._events: list[dict[str, Any]] = []
        ids = track_ids(1)
        pop_rng = np.random.default_rng([self.seed, 0x9A7])
        self.population = Population(
            config.domain,
            pop_rng,
            ids,
            min_scale_nm=config.min_size_nm,
            coalescence=config.coalescence,
            rotation_rad2_per_s=config.rotation_rad2_per_s,
        )
        self.initial_tracks = self._populate(pop_rng)
        self.decoys = DecoyField(
            np.random.default_rng([self.seed, 0xDEC]), ids, config.decoy_turn_rad2_per_s
        )
        self._add_decoys(np.random.default_rng([self.seed, 0xDE0]))

    # -- population -------------------------------------------------------------------------------
    def _start_centre_nm(self) -> np.ndarray:
        cfg = self.config
        return np.array([cfg.start_stage_x_um, cfg.start_stage_y_um]) * 1e3

    def _in_domain(self, rng: np.random.Generator, per_um2: float) -> int:
        """Number of objects in the patch at this areal density (Poisson)."""
        return int(rng.poisson(per_um2 * (self.config.domain * 1e-3) ** 2))

    def _random_spec(self, rng: np.random.Generator) -> ParticleSpec:
        cfg = self.config
        kind = _pick(rng, cfg.shape_weights)
        scale = cfg.particle_size_nm * math.exp(cfg.particle_size_spread * rng.standard_normal())
        aspect = float(rng.uniform(*cfg.rod_aspect_range))
        shape = Shape(
            kind, max(scale, cfg.min_size_nm), aspect, float(rng.uniform(0.0, 2.0 * math.pi))
        )
        diffusion = cfg.diffusion_nm2_per_s * math.exp(cfg.diffusion_spread * rng.standard_normal())
        growth = cfg.growth_nm_per_s + cfg.growth_spread_nm_per_s * rng.standard_normal()
        return ParticleSpec(
            shape,
            _pick(rng, cfg.motion_weights),
            diffusion,
            cfg.subdiffusion_alpha,
            cfg.confinement_nm,
            growth,
        )

    def _populate(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        cfg = self.config
        centre = self._start_centre_nm()
        placed = []
        for spec, xy in cfg.particles:
            tid = self.population.add(spec, tuple(centre + np.asarray(xy, float)))
            placed.append(_spec_record(tid, spec))
        for _ in range(self._in_domain(rng, cfg.particle_density_per_um2)):
            spec = self._random_spec(rng)
            for _attempt in range(50):  # start without contacts where the patch has room
                xy = tuple(centre + rng.uniform(-0.5, 0.5, 2) * cfg.domain)
                if self.population.fits(spec.shape, xy):
                    break
            placed.append(_spec_record(self.population.add(spec, xy), spec))
        return placed

    def _add_decoys(self, rng: np.random.Generator) -> None:
        cfg = self.config
        centre = self._start_centre_nm()
        for _ in range(self._in_domain(rng, cfg.decoy_density_per_um2)):
            kind = _pick(rng, cfg.decoy_kind_weights)
            radius = cfg.decoy_radius_nm * float(rng.uniform(0.7, 1.3))
            speed = cfg.decoy_speed_nm_per_s * float(rng.uniform(0.7, 1.3))
            xy = tuple(centre + rng.uniform(-0.5, 0.5, 2) * cfg.domain)
            self.decoys.add(kind, radius, xy, speed, float(rng.uniform(0.0, 2.0 * math.pi)))

    # -- time -------------------------------------------------------------------------------------
    @property
    def time_s(self) -> float:
        return self.frame_index / self.config.fps

    def advance_to(self, frame_index: int) -> None:
        """Step the dynamics frame by frame up to ``frame_index`` (never backwards)."""
        if frame_index < self.frame_index:
            raise ValueError("the scene cannot go back in time")
        dt = 1.0 / self.config.fps
        while self.frame_index < frame_index:
            self._events.extend(self.population.step(dt))
            self.decoys.step(dt)
            self.frame_index += 1

    def drift_nm(self) -> tuple[float, float]:
        """Stage drift accumulated by the current frame, nm."""
        t = self.time_s
        return self.config.drift_x_nm_per_s * t, self.config.drift_y_nm_per_s * t

    # -- rendering --------------------------------------------------------------------------------
    def render(
        self,
        stage_um: tuple[float, float],
        *,
        dose_e_per_px: float | None = None,
        defocus_um: float = 0.0,
        ideal: bool = False,
        truth: bool = True,
    ) -> AnnotatedImage:
        """The current frame at this stage position, dose and defocus, with its ground truth
        (``truth=False`` skips the masks: what a live camera needs)."""
        cfg = self.config
        dose = cfg.dose_e_per_px if dose_e_per_px is None else dose_e_per_px
        drift = self.drift_nm()
        centre = np.array([stage_um[0] * 1e3 + drift[0], stage_um[1] * 1e3 + drift[1]])
        shape = cfg.frame_shape
        background = dose * math.exp(-self._cell.background_optical_depth())
        canvas = Canvas(shape, cfg.pixel_size_nm, self._cell, background)
        objects: list[ObjectTruth] = []
        for particle in self.population.particles():
            x_px, y_px = self._to_px(centre, particle.xy_nm)
            placed = canvas.draw(particle.shape, x_px, y_px, cfg.lambda_particle_nm)
            if placed is not None and truth:
                objects.append(
                    ObjectTruth(
                        "particle", placed.mask(shape), _particle_attributes(particle, placed)
                    )
                )
        for decoy in self.decoys.decoys():
            lam = cfg.lambda_particle_nm if decoy.kind == "fast_particle" else math.inf
            # The streak runs from the position at the frame's start to where the decoy is at the
            # end of the exposure; its centroid is the midpoint.
            path_nm = np.asarray(decoy.velocity_nm_per_s) * cfg.exposure_s
            x_px, y_px = self._to_px(centre, tuple(np.asarray(decoy.xy_nm) + path_nm / 2))
            step_px = path_nm / cfg.pixel_size_nm
            placed = canvas.draw_streak(
                decoy.radius_nm, x_px, y_px, (float(step_px[0]), float(step_px[1])), lam
            )
            if placed is not None and truth:
                objects.append(
                    ObjectTruth(
                        "decoy",
                        placed.mask(shape),
                        {
                            "track_id": decoy.track_id,
                            "kind": decoy.kind,
                            "radius_nm": decoy.radius_nm,
                            "speed_nm_per_s": math.hypot(*decoy.velocity_nm_per_s),
                            "centroid_xy_px": list(placed.centroid_xy_px),
                            "truncated": placed.truncated,
                        },
                    )
                )
        pixels = self._imager.expose(
            canvas.counts, self._noise_rng, ideal=ideal, defocus_um=defocus_um
        )
        events, self._events = self._events, []
        attributes = {
            "frame_index": self.frame_index,
            "time_s": self.time_s,
            "drift_nm": [drift[0], drift[1]],
            "drift_px": [drift[0] / cfg.pixel_size_nm, drift[1] / cfg.pixel_size_nm],
            "stage_xy_um": [float(stage_um[0]), float(stage_um[1])],
            "field_centre_nm": [float(centre[0]), float(centre[1])],
            "pixel_size_nm": cfg.pixel_size_nm,
            "dose_e_per_px": float(dose),
            "defocus_um": float(defocus_um),
            "ideal": ideal,
            "background_counts": background,
            "events": events,
        }
        return AnnotatedImage(pixels, objects, attributes)

    def _to_px(self, centre_nm: np.ndarray, xy_nm: tuple[float, float]) -> tuple[float, float]:
        """Frame pixel coordinates (x = column, y = row) of the image of ``xy_nm`` nearest the
        field centre on the periodic patch."""
        rel = self.population.wrap(np.asarray(xy_nm, float) - centre_nm)
        rows, cols = self.config.frame_shape
        p = self.config.pixel_size_nm
        return rel[0] / p + (cols - 1) / 2.0, rel[1] / p + (rows - 1) / 2.0


def _spec_record(track_id: int, spec: ParticleSpec) -> dict[str, Any]:
    return {
        "track_id": track_id,
        "shape": spec.shape.kind,
        "scale_nm": spec.shape.scale_nm,
        "motion": spec.motion,
        "diffusion_nm2_per_s": spec.diffusion_nm2_per_s,
        "growth_nm_per_s": spec.growth_nm_per_s,
    }


def _particle_attributes(particle: ParticleState, placed: Footprint) -> dict[str, Any]:
    shape, spec = particle.shape, particle.spec
    attributes: dict[str, Any] = {
        "track_id": particle.track_id,
        "shape": shape.kind,
        "thickness_nm": shape.max_thickness_nm(),
        **shape.dimensions_nm(),
        "volume_nm3": shape.volume_nm3(),
        "centroid_xy_px": list(placed.centroid_xy_px),
        "position_nm": list(particle.xy_nm),
        "truncated": placed.truncated,
        "motion": spec.motion,
        "diffusion_nm2_per_s": spec.diffusion_nm2_per_s,
        "growth_nm_per_s": spec.growth_nm_per_s,
    }
    if shape.kind != "sphere":
        attributes["angle_deg"] = math.degrees(shape.angle_rad) % 360.0
    if spec.motion == "subdiffusive":
        attributes["alpha"] = spec.alpha
    if spec.motion == "confined":
        attributes["confinement_nm"] = spec.confinement_nm
    return attributes


class SimulatedInSituCamera(MicroscopeBase):
    """A liquid-cell TEM camera streaming at ``fps`` on its own clock.

    ``acquire()`` returns the frame due at the clock's current time: frame ``k`` covers
    ``[k, k + 1) / fps`` from the first acquire, which starts the stream. A consumer slower than
    the frame rate skips frames (the index jumps); a faster one waits (on the injected
    ``sleep``) for the next frame, as with a real camera that does not wait for its consumers.
    ``wd_um`` is the objective focus setting: defocus = ``wd_um − focus_wd_um`` enters the
    transfer function (see imaging). Truth masks are built only by :meth:`acquire_annotated`.
    """

    def __init__(
        self,
        config: InSituConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config if config is not None else InSituConfig()
        cfg = self._config
        self.name = cfg.name
        self._clock = clock
        self._sleep = sleep
        self._scene = InSituScene(cfg)
        self._limits = cfg.limits()
        self._stage_um = (cfg.start_stage_x_um, cfg.start_stage_y_um)
        self._wd_um = cfg.start_wd
        self._dose = cfg.dose_e_per_px
        self._last_index = -1
        self._t0: float | None = None  # the stream starts with the first acquire

    # -- extra controls ---------------------------------------------------------------------------
    @property
    def config(self) -> InSituConfig:
        return self._config

    @property
    def scene(self) -> InSituScene:
        return self._scene

    @property
    def frame_index(self) -> int:
        """Index of the last frame delivered (−1 before the first)."""
        return self._last_index

    def dose_range_e_per_px(self) -> tuple[float, float]:
        return (0.0, _MAX_DOSE_E_PER_PX)

    def set_dose_e_per_px(self, dose: float) -> None:
        """Change the dose per pixel and frame (beam current / spot size)."""
        if not (
            isinstance(dose, (int, float))
            and math.isfinite(dose)
            and 0 <= dose <= _MAX_DOSE_E_PER_PX
        ):
            raise LimitError(f"dose {dose!r} e⁻/px is outside [0, {_MAX_DOSE_E_PER_PX:g}]")
        self._dose = float(dose)

    def acquire_annotated(self) -> tuple[Frame, AnnotatedImage]:
        """The frame due now and its ground truth (masks, track ids, centroids)."""
        return self._acquire(truth=True)

    # -- Microscope hooks -------------------------------------------------------------------------
    def state(self) -> MicroscopeState:
        cfg = self._config
        return MicroscopeState(
            wd_um=float(self._wd_um),
            wd_target_um=float(self._wd_um),
            settled=True,
            stage_x_um=float(self._stage_um[0]),
            stage_y_um=float(self._stage_um[1]),
            magnification=cfg.magnification,
            pixel_size_nm=float(cfg.pixel_size_nm),
            exposure_s=cfg.exposure_s,
            dose_e_per_px=float(self._dose),
        )

    def limits(self) -> Limits:
        return self._limits

    def _do_acquire(self) -> Frame:
        frame, _ = self._acquire(truth=False)
        return frame

    def _do_set_wd(self, wd_um: float) -> None:
        self._wd_um = wd_um  # lens current: no mechanical settling

    def _do_move_stage(self, x_um: float, y_um: float) -> None:
        self._stage_um = (x_um, y_um)

    # -- frames -----------------------------------------------------------------------------------
    def _due_index(self) -> int:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        # The small epsilon keeps k/fps on frame k despite rounding in the clock arithmetic.
        return math.floor((now - self._t0) * self._config.fps + 1e-6)

    def _next_index(self) -> int:
        index = self._due_index()
        for _ in range(1000):
            if index > self._last_index:
                return index
            assert self._t0 is not None  # set by _due_index
            due_at = self._t0 + (self._last_index + 1) / self._config.fps
            self._sleep(max(due_at - self._clock(), 0.0))
            index = self._due_index()
        raise DeviceError(
            "the next frame never came due: the clock does not advance while "
            "sleeping; inject a sleep() that advances the injected clock"
        )

    def _acquire(self, *, truth: bool) -> tuple[Frame, AnnotatedImage]:
        start_ns = time.time_ns()
        index = self._next_index()
        self._scene.advance_to(index)
        self._last_index = index
        state = self.state()
        defocus = self._wd_um - self._config.focus_wd_um
        sample = self._scene.render(
            self._stage_um, dose_e_per_px=self._dose, defocus_um=defocus, truth=truth
        )
        frame = Frame(
            pixels=sample.image,
            state=state,
            start_time_ns=start_ns,
            stop_time_ns=time.time_ns(),
            monotonic_ns=time.monotonic_ns(),
            truth=SimTruth(focus_wd_um=self._config.focus_wd_um, defocus_um=float(defocus)),
        )
        return frame, sample


class InSituVideoSource:
    """Consecutive frames of the simulated in-situ video with ground truth, for datasets.

    ``images(n)`` yields frames 0 … n−1 of the video the seed defines (each call starts the
    video again, so it is a pure function of config, seed and ideal). ``ideal``: noise-free
    Beer–Lambert counts without transfer function.
    """

    name = "insitu"

    def __init__(
        self, config: InSituConfig | None = None, seed: int | None = None, ideal: bool = False
    ) -> None:
        base = config if config is not None else InSituConfig()
        self.config = base if seed is None else replace(base, seed=int(seed))
        self.seed = self.config.seed
        self.ideal = ideal

    def metadata(self) -> dict[str, Any]:
        cfg = self.config
        settings = asdict(cfg)
        settings["particles"] = [
            {"spec": asdict(spec), "xy_nm": list(xy)} for spec, xy in cfg.particles
        ]
        cell = cfg.cell()
        tau, sigma, d_tail = subdiffusion_modes(cfg.diffusion_nm2_per_s, cfg.subdiffusion_alpha)
        scene = InSituScene(cfg)
        return {
            "seed": self.seed,
            "ideal": self.ideal,
            "simulator": settings,
            "derived": {
                "exposure_s": cfg.exposure_s,
                "magnification": cfg.magnification,
                "field_nm": list(cfg.field_nm),
                "domain_nm": cfg.domain,
                "flux_e_per_a2_s": cfg.flux_e_per_a2_s(),
                "background_transmission": cell.transmission(),
                "background_counts_e_per_px": cfg.dose_e_per_px * cell.transmission(),
                "electron_wavelength_nm": electron_wavelength_nm(cfg.voltage_kv),
                "subdiffusion_mode_tau_s": [float(t) for t in tau],
                "subdiffusion_mode_rms_nm_at_median_k": [float(s) for s in sigma],
                "subdiffusion_tail_d_nm2_per_s_at_median_k": d_tail,
            },
            "model": {
                "mean_counts": "dose·exp(−(t_p/λ_p + (t_w − t_p)/λ_w + t_SiNx/λ_SiNx))",
                "detector_mtf": "floor + (1 − floor)/(1 + (q/q_half)²), q in cycles/px, "
                "applied after Poisson noise",
                "defocus_transfer": "cos(π λ Δz q²)·exp(−(π α Δz q)²), applied before noise",
                "reference": "Yao et al., ACS Cent. Sci. 6, 1421 (2020)",
            },
            "initial_tracks": scene.initial_tracks,
            "units": "nm for lengths, s for times, e⁻/px per frame for dose, µm for stage and "
            "focus, cycles/px for the MTF",
        }

    def images(self, n: int) -> Iterator[AnnotatedImage]:
        scene = InSituScene(self.config)
        stage = (self.config.start_stage_x_um, self.config.start_stage_y_um)
        defocus = self.config.start_wd - self.config.focus_wd_um
        for k in range(n):
            scene.advance_to(k)
            yield scene.render(stage, defocus_um=defocus, ideal=self.ideal)
