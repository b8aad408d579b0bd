"""A physics-based simulated SEM behind the ``Microscope`` protocol.

Frame formation, in order: cut the field of view (``frame_shape × pixel_size_nm`` around the stage
position plus drift) out of the specimen's SE-yield map, anti-aliased; blur it with the probe at
the defocus of each pixel (one blur level, or a blend of a few when a tilted sample spreads the
focus across the field); scale by dose and charging; shift scan lines (jitter); count, add read
noise, apply gain/offset, round and clip (:mod:`.detector`).

Dynamics run on an injectable clock: stage drift, thermal focus drift, the WD actuator's settling
(first-order lag) and backlash. Every frame carries the ground truth (:class:`SimTruth`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from scopeflow.devices.base import MicroscopeBase
from scopeflow.devices.protocols import Frame
from scopeflow.errors import LimitError
from scopeflow.schemas.state import Limits, MicroscopeState, SimTruth, depth_of_field_um
from scopeflow_lab.sim.actuator import Actuator, wait_settled
from scopeflow_lab.sim.sem.detector import Detector, charging_factor, jitter_lines
from scopeflow_lab.sim.sem.optics import (
    BlurSpec,
    KernelCache,
    blend_levels,
    blur_diameters_px,
    convolve,
    defocus_levels,
    probe_sigma_px,
)
from scopeflow_lab.sim.sem.sampling import SpecimenSampler, specimen_from_texture
from scopeflow_lab.sim.sem.specimen import SPECIMEN_FAMILIES, Specimen, make_specimen

#: Width of the display the magnification refers to (the Polaroid 4×5 convention), µm.
DISPLAY_WIDTH_UM = 127_000.0
#: Largest stigmator setting (|x|, |y|) and beam shift (|x|, |y|) the simulated column accepts.
STIGMATOR_RANGE_UM = 500.0
BEAM_SHIFT_RANGE_UM = 20.0
MAX_DOSE_E_PER_PX = 1e6
_DTYPES = {"uint16": np.dtype(np.uint16), "uint8": np.dtype(np.uint8)}
_DEFAULT_GAIN_DN_PER_E = 200.0  # uint16 DN; divided by 257 for uint8
AUTO_GAIN_MEAN_FRACTION = 0.2  # automatic gain puts the mean signal at 20 % of the range
_DEFAULT_OFFSET_DN = 1000.0
_MAX_KERNEL_PX = 512.0  # longest blur axis on the rendering grid (reached only by odd shapes)


@dataclass(frozen=True)
class SEMConfig:
    """Configuration of :class:`SimulatedSEM`; units are in the names (see docs/simulators.md).

    Image: ``frame_shape`` (rows, cols), ``dtype`` ("uint16" or "uint8"), ``pixel_size_nm``,
    ``dwell_time_us`` (reported; paces frames when ``pace_frames``).
    Beam: ``beam_semiangle_mrad`` α, ``probe_fwhm_nm``, ``dose_e_per_px`` (mean primary electrons
    per pixel), ``astigmatism_um`` (line-focus separation) and ``astigmatism_angle_deg`` (axis,
    from the image x axis towards +y, i.e. down the rows).
    Detector: ``gain_dn_per_e`` (None: automatic brightness/contrast, as operators run it — the
    mean signal sits at 20 % of the range above the offset at the current dose, re-applied when
    the dose changes; a blanked beam, dose 0, keeps the last gain), ``offset_dn`` (None: 1000 DN
    for uint16, /257 for uint8), ``read_noise_e`` (rms), ``line_jitter_px`` (rms per scan line),
    ``charging_fraction`` and ``charging_tau_s`` (signal × 1 + f·(1 − e^(−t/τ))).
    Focus and stage: ``focus_wd_um`` (WD in focus at stage (0, 0) at t = 0), ``start_wd_um``
    (None: in focus), ``tilt_x_deg``/``tilt_y_deg`` (specimen tilt: focus WD grows by
    tan(tilt) µm per µm along +x/+y), ``tilt_blur_levels`` (most blur levels blended across a
    field), ``start_stage_x_um``/``start_stage_y_um``, ``stage_drift_x_nm_per_s``/
    ``stage_drift_y_nm_per_s`` (specimen drift under the beam), ``focus_drift_um_per_s``
    (thermal), ``settle_s`` (WD actuator settle time), ``backlash_um`` (WD lost motion after a
    reversal).
    Specimen: ``family`` (a key of ``SPECIMEN_FAMILIES``), ``seed``, or ``texture`` (a 2D array
    or an image path) with ``texture_pixel_nm``; ``specimen_samples`` × ``specimen_sample_nm``
    is the period of a procedural specimen.
    Limits: ``wd_min_um``/``wd_max_um``, ``stage_min_um``/``stage_max_um`` (both axes),
    ``max_wd_step_um`` (None: unlimited).
    """

    frame_shape: tuple[int, int] = (512, 512)
    dtype: str = "uint16"
    pixel_size_nm: float = 10.0
    dwell_time_us: float = 0.1
    pace_frames: bool = False
    beam_semiangle_mrad: float = 3.0
    probe_fwhm_nm: float = 3.0
    dose_e_per_px: float = 50.0
    astigmatism_um: float = 0.0
    astigmatism_angle_deg: float = 0.0
    gain_dn_per_e: float | None = None
    offset_dn: float | None = None
    read_noise_e: float = 0.5
    line_jitter_px: float = 0.0
    charging_fraction: float = 0.0
    charging_tau_s: float = 60.0
    focus_wd_um: float = 5000.0
    start_wd_um: float | None = None
    tilt_x_deg: float = 0.0
    tilt_y_deg: float = 0.0
    tilt_blur_levels: int = 4
    start_stage_x_um: float = 0.0
    start_stage_y_um: float = 0.0
    stage_drift_x_nm_per_s: float = 0.0
    stage_drift_y_nm_per_s: float = 0.0
    focus_drift_um_per_s: float = 0.0
    settle_s: float = 0.005
    backlash_um: float = 0.0
    family: str = "nanoparticles"
    seed: int = 0
    texture: np.ndarray | str | os.PathLike[str] | None = field(
        default=None, compare=False, repr=False
    )
    texture_pixel_nm: float = 5.0
    specimen_samples: int = 2048
    specimen_sample_nm: float = 4.0
    wd_min_um: float = 1000.0
    wd_max_um: float = 50000.0
    stage_min_um: float = -50000.0
    stage_max_um: float = 50000.0
    max_wd_step_um: float | None = None
    name: str = "sim-sem"

    def __post_init__(self) -> None:
        rows, cols = self.frame_shape
        if not (8 <= rows <= 8192 and 8 <= cols <= 8192):
            raise ValueError(
                f"frame_shape must be between 8 and 8192 per side, got {self.frame_shape}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        positive = (
            "pixel_size_nm",
            "dwell_time_us",
            "beam_semiangle_mrad",
            "charging_tau_s",
            "texture_pixel_nm",
            "specimen_sample_nm",
        )
        non_negative = (
            "probe_fwhm_nm",
            "dose_e_per_px",
            "read_noise_e",
            "line_jitter_px",
            "settle_s",
            "backlash_um",
        )
        for name in positive + non_negative:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                kind = "positive" if name in positive else "non-negative"
                raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
        for name in ("tilt_x_deg", "tilt_y_deg"):
            if not abs(getattr(self, name)) < 80.0:
                raise ValueError(f"{name} must lie within ±80°, got {getattr(self, name)!r}")
        for name in ("start_stage_x_um", "start_stage_y_um"):
            if not self.stage_min_um <= getattr(self, name) <= self.stage_max_um:
                raise ValueError(
                    f"{name} must lie within the stage limits [{self.stage_min_um}, "
                    f"{self.stage_max_um}] µm"
                )
        if self.tilt_blur_levels < 1:
            raise ValueError("tilt_blur_levels must be at least 1")
        if self.texture is None and self.family not in SPECIMEN_FAMILIES:
            known = ", ".join(sorted(SPECIMEN_FAMILIES))
            raise ValueError(f"unknown specimen family {self.family!r}; choose one of {known}")
        if self.specimen_samples < 64 or self.specimen_samples % 2:
            raise ValueError("specimen_samples must be an even number ≥ 64")
        start = self.focus_wd_um if self.start_wd_um is None else self.start_wd_um
        if not self.wd_min_um <= start <= self.wd_max_um:
            raise ValueError(
                f"the start WD {start} µm lies outside [{self.wd_min_um}, "
                f"{self.wd_max_um}] µm; set start_wd_um or the WD limits"
            )

    @property
    def out_dtype(self) -> np.dtype:
        return _DTYPES[self.dtype]

    def detector(self, mean_yield: float = 0.5, dose_e_per_px: float | None = None) -> Detector:
        """The detector chain with defaults resolved for the output dtype.

        With automatic gain, ``mean_yield`` (the specimen's mean SE yield) and the dose set the
        gain so that the mean signal lands at ``AUTO_GAIN_MEAN_FRACTION`` of the range.
        """
        scale = 1.0 if self.dtype == "uint16" else 1.0 / 257.0
        offset = _DEFAULT_OFFSET_DN * scale if self.offset_dn is None else self.offset_dn
        gain = self.gain_dn_per_e
        if gain is None:
            dose = self.dose_e_per_px if dose_e_per_px is None else dose_e_per_px
            full = float(np.iinfo(self.out_dtype).max)
            if dose > 0 and mean_yield > 0:
                gain = AUTO_GAIN_MEAN_FRACTION * (full - offset) / (dose * mean_yield)
            else:
                gain = _DEFAULT_GAIN_DN_PER_E * scale
        return Detector(gain, offset, self.read_noise_e, self.out_dtype)

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


class SimulatedSEM(MicroscopeBase):
    """A simulated scanning electron microscope (secondary-electron imaging).

    ``clock`` (seconds) and ``sleep`` drive the dynamics and may be fakes in tests. ``specimen``
    overrides the one the config describes (to share one among simulators).
    """

    def __init__(
        self,
        config: SEMConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        specimen: Specimen | None = None,
    ) -> None:
        self._config = config if config is not None else SEMConfig()
        cfg = self._config
        self.name = cfg.name
        self._clock = clock
        self._sleep = sleep
        self._t0 = clock()
        if specimen is None:
            if cfg.texture is not None:
                specimen = specimen_from_texture(cfg.texture, cfg.texture_pixel_nm)
            else:
                specimen = make_specimen(
                    cfg.family, cfg.seed, cfg.specimen_samples, cfg.specimen_sample_nm
                )
        self._specimen = specimen
        self._sampler = SpecimenSampler(specimen)
        self._kernels = KernelCache()
        self._rng = np.random.default_rng([cfg.seed, 0x5E3])  # apart from the specimen stream
        self._mean_yield = float(specimen.se_yield.mean())
        self._detector = cfg.detector(self._mean_yield)
        self._limits = cfg.limits().model_copy(update={"beam_shift_range_um": BEAM_SHIFT_RANGE_UM})
        self._pixel_nm = cfg.pixel_size_nm
        self._dose = cfg.dose_e_per_px
        self._astigmatism_um = cfg.astigmatism_um
        self._astigmatism_angle_deg = cfg.astigmatism_angle_deg
        self._stage_um = (cfg.start_stage_x_um, cfg.start_stage_y_um)
        self._stigmator_um = (0.0, 0.0)
        self._beam_shift_um = (0.0, 0.0)
        start = cfg.focus_wd_um if cfg.start_wd_um is None else cfg.start_wd_um
        self._wd = Actuator.at_rest(
            start, self._t0, settle_s=cfg.settle_s, backlash_um=cfg.backlash_um
        )

    # -- extra controls -------------------------------------------------------------------------
    @property
    def config(self) -> SEMConfig:
        return self._config

    @property
    def specimen(self) -> Specimen:
        return self._specimen

    @property
    def detector(self) -> Detector:
        """The detector chain in use (its gain follows the dose when automatic)."""
        return self._detector

    def set_pixel_size_nm(self, pixel_nm: float) -> None:
        """Change the magnification: the field of view becomes ``frame_shape × pixel_nm``."""
        if not (
            isinstance(pixel_nm, (int, float))
            and math.isfinite(pixel_nm)
            and 0.05 <= pixel_nm <= 1e5
        ):
            raise LimitError(f"pixel size {pixel_nm!r} nm is outside [0.05, 1e5] nm")
        self._pixel_nm = float(pixel_nm)

    def set_dose_e_per_px(self, dose: float) -> None:
        """Change the dose (beam current × dwell), primary electrons per pixel."""
        lo, hi = self.dose_range_e_per_px()
        if not (isinstance(dose, (int, float)) and math.isfinite(dose) and lo <= dose <= hi):
            raise LimitError(f"dose {dose!r} e⁻/px is outside [{lo:g}, {hi:g}]")
        self._dose = float(dose)
        if self._config.gain_dn_per_e is None and dose > 0:  # automatic contrast follows
            self._detector = self._config.detector(self._mean_yield, dose)

    def dose_range_e_per_px(self) -> tuple[float, float]:
        return (0.0, MAX_DOSE_E_PER_PX)

    def stigmator_range_um(self) -> float:
        return STIGMATOR_RANGE_UM

    def stigmator_um(self) -> tuple[float, float]:
        return self._stigmator_um

    def set_stigmator(self, x_um: float, y_um: float) -> None:
        """Apply a stigmator setting. Astigmatism is a vector (A cos 2θ, A sin 2θ); the
        stigmator subtracts (x, y) from the column's own, and the frames show the rest."""
        self._stigmator_um = (float(x_um), float(y_um))

    def beam_shift_range_um(self) -> float:
        return BEAM_SHIFT_RANGE_UM

    def beam_shift_um(self) -> tuple[float, float]:
        return self._beam_shift_um

    def set_beam_shift(self, x_um: float, y_um: float) -> None:
        """Shift the scanned field by (x, y) µm on the specimen without moving the stage."""
        self._beam_shift_um = (float(x_um), float(y_um))

    def residual_astigmatism(self) -> tuple[float, float]:
        """(focal difference µm, axis °) the frames show: the column's own minus the
        stigmator's correction."""
        if self._stigmator_um == (0.0, 0.0):  # exactly the configured values, no round trip
            return self._astigmatism_um, self._astigmatism_angle_deg
        two_theta = math.radians(2.0 * self._astigmatism_angle_deg)
        rx = self._astigmatism_um * math.cos(two_theta) - self._stigmator_um[0]
        ry = self._astigmatism_um * math.sin(two_theta) - self._stigmator_um[1]
        return math.hypot(rx, ry), math.degrees(math.atan2(ry, rx)) / 2.0

    def set_astigmatism(self, astigmatism_um: float, angle_deg: float) -> None:
        """Set the column's own astigmatism (before any stigmator correction)."""
        for label, value in (("astigmatism_um", astigmatism_um), ("angle_deg", angle_deg)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise LimitError(f"{label} must be a finite number, got {value!r}")
        self._astigmatism_um = float(astigmatism_um)
        self._astigmatism_angle_deg = float(angle_deg)

    def true_focus_wd_um(self) -> float:
        """The WD that would focus the field centre now (ground truth, for scoring only)."""
        t = self._clock()
        return self._focus_wd_at(t, *self._centre_um(t))

    def acquire_with_clean(self) -> tuple[Frame, np.ndarray]:
        """A frame and its noise-free expectation in DN (float32), e.g. for denoiser training."""
        frame, clean = self._acquire(with_clean=True)
        assert clean is not None
        return frame, clean

    # -- Microscope hooks -----------------------------------------------------------------------
    def state(self) -> MicroscopeState:
        return self._state_at(self._clock())

    def limits(self) -> Limits:
        return self._limits

    def _do_acquire(self) -> Frame:
        frame, _ = self._acquire(with_clean=False)
        return frame

    def _do_set_wd(self, wd_um: float) -> None:
        self._wd.command(wd_um, self._clock())

    def _do_move_stage(self, x_um: float, y_um: float) -> None:
        self._stage_um = (x_um, y_um)

    def _do_wait_settled(self) -> None:
        wait_settled((self._wd,), self._clock, self._sleep)

    # -- physics ----------------------------------------------------------------------------------
    def _centre_um(self, t: float) -> tuple[float, float]:
        """Specimen coordinates under the field centre: stage position plus beam shift plus
        drift, µm."""
        elapsed = t - self._t0
        cfg = self._config
        return (
            self._stage_um[0]
            + self._beam_shift_um[0]
            + cfg.stage_drift_x_nm_per_s * elapsed * 1e-3,
            self._stage_um[1]
            + self._beam_shift_um[1]
            + cfg.stage_drift_y_nm_per_s * elapsed * 1e-3,
        )

    def _focus_wd_at(self, t: float, x_um: float, y_um: float) -> float:
        cfg = self._config
        return (
            cfg.focus_wd_um
            + cfg.focus_drift_um_per_s * (t - self._t0)
            + math.tan(math.radians(cfg.tilt_x_deg)) * x_um
            + math.tan(math.radians(cfg.tilt_y_deg)) * y_um
        )

    def _state_at(self, t: float) -> MicroscopeState:
        wd, settled = self._wd.position(t)
        cfg = self._config
        return MicroscopeState(
            wd_um=float(wd),
            wd_target_um=float(self._wd.target_um),
            settled=bool(settled),
            stage_x_um=float(self._stage_um[0]),
            stage_y_um=float(self._stage_um[1]),
            magnification=DISPLAY_WIDTH_UM / (cfg.frame_shape[1] * self._pixel_nm * 1e-3),
            pixel_size_nm=float(self._pixel_nm),
            dwell_time_us=float(cfg.dwell_time_us),
            dose_e_per_px=float(self._dose),
            beam_semiangle_mrad=float(cfg.beam_semiangle_mrad),
            beam_shift_x_um=float(self._beam_shift_um[0]),
            beam_shift_y_um=float(self._beam_shift_um[1]),
        )

    def _acquire(self, *, with_clean: bool) -> tuple[Frame, np.ndarray | None]:
        cfg = self._config
        start_ns = time.time_ns()
        t = self._clock()
        state = self._state_at(t)
        cx_um, cy_um = self._centre_um(t)
        focus = self._focus_wd_at(t, cx_um, cy_um)
        truth = SimTruth(
            focus_wd_um=float(focus),
            defocus_um=float(state.wd_um - focus),
            dof_um=depth_of_field_um(self._pixel_nm, cfg.beam_semiangle_mrad),
        )
        mean_e = self._signal(state.wd_um - focus, cx_um, cy_um)
        mean_e *= np.float32(
            self._dose * charging_factor(t - self._t0, cfg.charging_fraction, cfg.charging_tau_s)
        )
        if cfg.line_jitter_px > 0:
            shifts = self._rng.normal(0.0, cfg.line_jitter_px, mean_e.shape[0])
            mean_e = jitter_lines(mean_e, shifts)
        clean = self._detector.expected_dn(mean_e) if with_clean else None
        pixels = self._detector.detect(mean_e, self._rng)
        if cfg.pace_frames:  # a real scan takes rows × cols × dwell
            remaining = t + pixels.size * cfg.dwell_time_us * 1e-6 - self._clock()
            if remaining > 0:
                self._sleep(remaining)
        frame = Frame(
            pixels=pixels,
            state=state,
            start_time_ns=start_ns,
            stop_time_ns=time.time_ns(),
            monotonic_ns=time.monotonic_ns(),
            truth=truth,
        )
        return frame, clean

    def _signal(self, defocus_um: float, cx_um: float, cy_um: float) -> np.ndarray:
        """Blurred SE yield of the field (float32, frame shape), before dose."""
        cfg = self._config
        rows, cols = cfg.frame_shape
        p_um = self._pixel_nm * 1e-3
        slope_x = math.tan(math.radians(cfg.tilt_x_deg))
        slope_y = math.tan(math.radians(cfg.tilt_y_deg))
        # Focus grows along the tilt, so the defocus (WD − focus) falls: extremes at the corners.
        half_span = (abs(slope_x) * (cols - 1) + abs(slope_y) * (rows - 1)) / 2 * p_um
        px_per_um = 2.0 * cfg.beam_semiangle_mrad / self._pixel_nm
        levels = defocus_levels(
            defocus_um - half_span, defocus_um + half_span, px_per_um, cfg.tilt_blur_levels
        )
        views: dict[int, np.ndarray] = {}  # full-resolution fields shared between levels
        images = [self._blurred(dz, cx_um * 1e3, cy_um * 1e3, views) for dz in levels]
        if len(images) == 1:
            return images[0]
        dz_cols = (-slope_x * p_um * (np.arange(cols) - (cols - 1) / 2)).astype(np.float32)
        dz_rows = (-slope_y * p_um * (np.arange(rows) - (rows - 1) / 2)).astype(np.float32)
        defocus_map = np.float32(defocus_um) + dz_rows[:, None] + dz_cols[None, :]
        return blend_levels(images, levels, defocus_map)

    def _blurred(
        self, defocus_um: float, cx_nm: float, cy_nm: float, views: dict[int, np.ndarray]
    ) -> np.ndarray:
        """The field's SE yield blurred at one defocus (float32, frame shape).

        ``views`` caches full-resolution fields by margin, for the other levels of this frame.
        """
        cfg = self._config
        rows, cols = cfg.frame_shape
        astigmatism_um, astigmatism_angle_deg = self.residual_astigmatism()
        along, across = blur_diameters_px(
            defocus_um, cfg.beam_semiangle_mrad, self._pixel_nm, astigmatism_um
        )
        spec = BlurSpec(
            along,
            across,
            astigmatism_angle_deg,
            probe_sigma_px(cfg.probe_fwhm_nm, self._pixel_nm),
        )
        max_factor = 1
        while min(rows, cols) // (2 * max_factor) >= 32:
            max_factor *= 2
        factor = spec.coarse_factor(max_factor)
        # Beyond twice the field a wider disk changes nothing visible but costs a huge kernel.
        grid_spec = spec.on_grid(factor).capped(min(2.0 * max(rows, cols) / factor, _MAX_KERNEL_PX))
        kernel = self._kernels.get(grid_spec)
        if factor == 1:
            m = kernel.shape[0] // 2
            wider = [k for k in views if k >= m]
            if wider:
                edge = min(wider) - m
                view = views[min(wider)][edge : edge + rows + 2 * m, edge : edge + cols + 2 * m]
            else:
                view = self._sampler.sample(
                    cx_nm, cy_nm, (rows + 2 * m, cols + 2 * m), self._pixel_nm
                )
                views[m] = view
            out = convolve(view, kernel)
            return out[m : m + rows, m : m + cols]
        # Heavy blur: convolve on a grid `factor` times coarser, then interpolate back.
        m = kernel.shape[0] // 2 + 2
        crows, ccols = math.ceil(rows / factor) + 2 * m, math.ceil(cols / factor) + 2 * m
        coarse = convolve(
            self._sampler.sample(cx_nm, cy_nm, (crows, ccols), self._pixel_nm * factor), kernel
        )
        back = np.array(
            [
                [1 / factor, 0.0, (ccols - 1) / 2 - (cols - 1) / (2 * factor)],
                [0.0, 1 / factor, (crows - 1) / 2 - (rows - 1) / (2 * factor)],
            ]
        )
        return cv2.warpAffine(
            coarse,
            back,
            (cols, rows),
            flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
