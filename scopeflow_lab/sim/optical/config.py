"""Configuration of the simulated optical microscope: the chip, spectrum and camera parts, the
objective, the focus surface, the actuators and the limits (:class:`OpticalConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scopeflow.optics.thinfilm import SpectralModel
from scopeflow.schemas.state import Limits
from scopeflow_lab.sim.optical.camera import CameraConfig
from scopeflow_lab.sim.optical.chip import ChipConfig


@dataclass(frozen=True)
class OpticalConfig:
    """Configuration of :class:`SimulatedOpticalMicroscope`; units in the names.

    Parts: ``chip`` (:class:`ChipConfig`), ``spectrum`` (:class:`SpectralModel`: illuminant
    and camera bands), ``camera`` (:class:`CameraConfig`). ``seed`` fixes the chip and the
    noise. ``ideal`` turns off noise, blur, vignetting, white balance and the black level.
    Objective: ``magnification``, ``numerical_aperture``. Focus: ``focus_z_um`` (Z that
    focuses the chip centre), tilt of the focus surface ``focus_tilt_x_um_per_mm`` /
    ``focus_tilt_y_um_per_mm`` and its bow ``focus_bow_um`` (centre to corner), ``start_z_um``
    (None: in focus at the start position). Actuators: ``z_settle_s``, ``z_backlash_um``,
    ``stage_settle_s``, ``stage_speed_um_per_s``, ``stage_backlash_um``. Limits:
    ``z_min_um``/``z_max_um``, ``max_z_step_um``, ``stage_min_um``/``stage_max_um`` (None: the
    chip ± ``stage_margin_um``). ``off_chip_reflectance``: the holder seen beyond the chip edge.
    ``pace_frames``: sleep the exposure time per frame.
    """

    chip: ChipConfig = field(default_factory=ChipConfig)
    spectrum: SpectralModel = field(default_factory=SpectralModel)
    camera: CameraConfig = field(default_factory=CameraConfig)
    seed: int = 0
    ideal: bool = False
    magnification: float = 20.0
    numerical_aperture: float = 0.40
    focus_z_um: float = 2500.0
    focus_tilt_x_um_per_mm: float = 2.0
    focus_tilt_y_um_per_mm: float = -1.0
    focus_bow_um: float = 3.0
    start_z_um: float | None = None
    start_x_um: float = 0.0
    start_y_um: float = 0.0
    z_settle_s: float = 0.05
    z_backlash_um: float = 0.3
    stage_settle_s: float = 0.1
    stage_speed_um_per_s: float = 10_000.0
    stage_backlash_um: float = 2.0
    z_min_um: float = 0.0
    z_max_um: float = 5000.0
    max_z_step_um: float | None = None
    stage_min_um: float | None = None
    stage_max_um: float | None = None
    stage_margin_um: float = 500.0
    off_chip_reflectance: float = 0.04
    pace_frames: bool = False
    name: str = "sim-optical"

    def __post_init__(self) -> None:
        for name in ("magnification", "stage_speed_um_per_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        if not 0.01 <= self.numerical_aperture <= 0.95:
            raise ValueError("numerical_aperture must lie within 0.01–0.95 (a dry objective)")
        for name in (
            "z_settle_s",
            "z_backlash_um",
            "stage_settle_s",
            "stage_backlash_um",
            "stage_margin_um",
            "off_chip_reflectance",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        limits = self.limits()
        start_z = (
            self.start_z_um
            if self.start_z_um is not None
            else self.focus_z_at(self.start_x_um, self.start_y_um)
        )
        if not limits.wd_min_um <= start_z <= limits.wd_max_um:
            raise ValueError(
                f"the start Z {start_z} µm lies outside [{self.z_min_um}, {self.z_max_um}] µm"
            )
        if not (
            limits.stage_x_min_um <= self.start_x_um <= limits.stage_x_max_um
            and limits.stage_y_min_um <= self.start_y_um <= limits.stage_y_max_um
        ):
            raise ValueError("the start stage position lies outside the stage limits")

    @property
    def pixel_um(self) -> float:
        """Camera pixel referred to the sample, µm."""
        return self.camera.pixel_um / self.magnification

    def focus_z_at(self, x_um: float, y_um: float) -> float:
        """Z that focuses chip point (x, y): tilt plane plus a bow growing to the corners."""
        half_diag2 = (self.chip.size_x_um**2 + self.chip.size_y_um**2) / 4
        return (
            self.focus_z_um
            + (self.focus_tilt_x_um_per_mm * x_um + self.focus_tilt_y_um_per_mm * y_um) * 1e-3
            + self.focus_bow_um * (x_um * x_um + y_um * y_um) / half_diag2
        )

    def limits(self) -> Limits:
        lo_x = -self.chip.size_x_um / 2 - self.stage_margin_um
        lo_y = -self.chip.size_y_um / 2 - self.stage_margin_um
        return Limits(
            wd_min_um=float(self.z_min_um),
            wd_max_um=float(self.z_max_um),
            stage_x_min_um=float(lo_x if self.stage_min_um is None else self.stage_min_um),
            stage_x_max_um=float(-lo_x if self.stage_max_um is None else self.stage_max_um),
            stage_y_min_um=float(lo_y if self.stage_min_um is None else self.stage_min_um),
            stage_y_max_um=float(-lo_y if self.stage_max_um is None else self.stage_max_um),
            max_wd_step_um=self.max_z_step_um,
        )
