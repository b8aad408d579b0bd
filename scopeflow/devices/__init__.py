"""Devices: protocols per device kind, the one validation layer, and the adapter registry."""

from scopeflow.devices.limits import GuardedMicroscope, guard
from scopeflow.devices.protocols import (
    BeamShift,
    Camera,
    FocusDrive,
    Frame,
    Illumination,
    Microscope,
    Stigmator,
    XYStage,
)

__all__ = [
    "BeamShift",
    "Camera",
    "FocusDrive",
    "Frame",
    "GuardedMicroscope",
    "Illumination",
    "Microscope",
    "Stigmator",
    "XYStage",
    "guard",
]
