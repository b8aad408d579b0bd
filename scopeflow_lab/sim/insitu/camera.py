"""A simulated liquid-cell / environmental TEM camera (its configuration is in :mod:`.config`, the
video dataset it makes in :mod:`.source`).

:class:`InSituScene` holds the cell patch (particles, decoys, stage drift) and renders frame ``k``
at time ``k / fps``. :class:`SimulatedInSituCamera` puts it behind the ``Microscope`` protocol on
its own clock: ``acquire()`` returns the frame due now, so frames a slow consumer misses are
skipped, and a fast consumer waits for the next frame. :class:`InSituVideoSource` yields
consecutive frames with their ground truth (masks, track ids, centroids) for dataset writers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from scopeflow.devices.base import MicroscopeBase
from scopeflow.devices.protocols import Frame
from scopeflow.errors import DeviceError, LimitError
from scopeflow.schemas.state import Limits, MicroscopeState, SimTruth
from scopeflow_lab.sim.insitu.config import _MAX_DOSE_E_PER_PX, InSituConfig
from scopeflow_lab.sim.insitu.imaging import Canvas, Footprint, Imager
from scopeflow_lab.sim.insitu.particles import (
    DecoyField,
    ParticleSpec,
    ParticleState,
    Population,
    Shape,
    track_ids,
)
from scopeflow_lab.sim.truth import AnnotatedImage, ObjectTruth


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
        self._beam_shift_um = (0.0, 0.0)
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

    def beam_shift_range_um(self) -> float:
        return self._config.beam_shift_range_um

    def beam_shift_um(self) -> tuple[float, float]:
        return self._beam_shift_um

    def set_beam_shift(self, x_um: float, y_um: float) -> None:
        """Image shift: the field moves by (x, y) µm over the specimen, as a stage move would,
        but electronically (no backlash, small range). Checked by the guard in front."""
        self._beam_shift_um = (float(x_um), float(y_um))

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
            beam_shift_x_um=float(self._beam_shift_um[0]),
            beam_shift_y_um=float(self._beam_shift_um[1]),
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
        field_um = (  # where the field is: the stage plus the beam shift
            self._stage_um[0] + self._beam_shift_um[0],
            self._stage_um[1] + self._beam_shift_um[1],
        )
        sample = self._scene.render(
            field_um, dose_e_per_px=self._dose, defocus_um=defocus, truth=truth
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
