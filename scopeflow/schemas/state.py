"""Microscope state, device limits and simulator ground truth.

Units are in the names: µm for working distance (WD) and stage, nm for pixel size, µs for dwell,
s for exposure, electrons per pixel for dose, mrad for the beam convergence semi-angle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from scopeflow.schemas.base import ClosedModel

# Focus actuator range accepted on the wire; the device's own limits are narrower and are enforced
# by the command server (see Limits).
FocusUm = Annotated[float, Field(ge=-1e6, le=1e6)]
StageUm = Annotated[float, Field(ge=-1e6, le=1e6)]
# Beam (image) shift: the field moved electronically, in stage coordinates (since 1.4).
BeamShiftUm = Annotated[float, Field(ge=-1e4, le=1e4)]


class MicroscopeState(ClosedModel):
    """What the microscope reports about itself, at the time of a frame or a reply."""

    wd_um: FocusUm = Field(description="Working distance (SEM) or focus-drive position, µm.")
    wd_target_um: FocusUm = Field(
        description="Last commanded WD, µm; differs from wd_um while settling."
    )
    settled: bool = Field(description="True once the focus actuator has settled at the target.")
    stage_x_um: StageUm
    stage_y_um: StageUm
    magnification: Annotated[float, Field(gt=0, le=1e8)]
    pixel_size_nm: Annotated[float, Field(gt=0, le=1e7)]
    dwell_time_us: Annotated[float, Field(gt=0, le=1e7)] | None = None
    exposure_s: Annotated[float, Field(gt=0, le=1e5)] | None = None
    dose_e_per_px: Annotated[float, Field(ge=0, le=1e9)] | None = None
    beam_semiangle_mrad: Annotated[float, Field(gt=0, le=1e3)] | None = None
    numerical_aperture: Annotated[float, Field(gt=0, le=1.7)] | None = Field(
        default=None, description="Objective NA (light microscopes)."
    )
    beam_shift_x_um: BeamShiftUm | None = Field(
        default=None,
        description="Beam (image) shift x, µm in stage coordinates: the field centre is at "
        "stage + shift. Sent by microscopes that have one (since 1.4).",
    )
    beam_shift_y_um: BeamShiftUm | None = None

    def depth_of_field_um(self) -> float | None:
        """Depth of field per side: pixel size / α for electron beams (DESIGN §5), half the
        wave-optical + geometric depth for light microscopes; None when neither is known."""
        if self.beam_semiangle_mrad is not None:
            return depth_of_field_um(self.pixel_size_nm, self.beam_semiangle_mrad)
        if self.numerical_aperture is not None:
            return optical_depth_of_field_um(self.pixel_size_nm, self.numerical_aperture)
        return None


def depth_of_field_um(pixel_size_nm: float, beam_semiangle_mrad: float) -> float:
    """Depth of field per side: the defocus at which the blur disk (2α|Δz|) spans two pixels."""
    return (pixel_size_nm * 1e-3) / (beam_semiangle_mrad * 1e-3)


def optical_depth_of_field_um(
    pixel_size_nm: float, numerical_aperture: float, wavelength_nm: float = 550.0
) -> float:
    """Half the total depth of field of a light microscope in air, λ/NA² + e/NA (Inoué), where
    e is the pixel size referred to the sample; green light by default."""
    total_um = (wavelength_nm / numerical_aperture**2 + pixel_size_nm / numerical_aperture) * 1e-3
    return 0.5 * total_um


class Limits(ClosedModel):
    """Device limits. The command server refuses anything outside them."""

    wd_min_um: FocusUm
    wd_max_um: FocusUm
    stage_x_min_um: StageUm
    stage_x_max_um: StageUm
    stage_y_min_um: StageUm
    stage_y_max_um: StageUm
    max_wd_step_um: Annotated[float, Field(gt=0, le=2e6)] | None = Field(
        default=None, description="Largest single WD move accepted; None means unlimited."
    )
    beam_shift_range_um: Annotated[float, Field(gt=0, le=1e4)] | None = Field(
        default=None,
        description="Largest |x| and |y| beam shift accepted; None: no beam shift (since 1.4).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        for lo, hi in (
            ("wd_min_um", "wd_max_um"),
            ("stage_x_min_um", "stage_x_max_um"),
            ("stage_y_min_um", "stage_y_max_um"),
        ):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} must not exceed {hi}")
        return self


class SimTruth(ClosedModel):
    """Ground truth a simulator attaches to a frame. Real microscopes send none.

    Consumers must not use it to make decisions; it exists so that benchmarks and demos can score
    results against the truth across process boundaries.
    """

    focus_wd_um: FocusUm = Field(description="WD at which the frame centre would be in focus, µm.")
    defocus_um: Annotated[float, Field(ge=-2e6, le=2e6)] = Field(
        description="wd_um − focus_wd_um at the frame centre when the frame was taken, µm."
    )
    dof_um: Annotated[float, Field(gt=0, le=1e6)] | None = Field(
        default=None, description="Depth of field per side for this frame, µm."
    )
