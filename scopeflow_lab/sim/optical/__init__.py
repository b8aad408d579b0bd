"""Simulated optical microscope over an exfoliated-flake chip: thin-film colour physics, chip
layout, camera, stage and focus drive, and an annotated dataset source.

See ``docs/simulators.md`` ("Simulated optical flake chip") for the model, its parameters and its
limits.
"""

from __future__ import annotations

from scopeflow.optics.thinfilm import (
    GRAPHENE,
    HBN,
    MATERIALS,
    RESIDUE,
    ContrastTable,
    Material,
    SpectralModel,
    blake_reflectance,
    contrast_rgb,
    reflectance_rgb,
    stack_reflectance,
)
from scopeflow_lab.sim.optical.camera import Camera, CameraConfig
from scopeflow_lab.sim.optical.chip import Chip, ChipConfig, ChipObject, Region
from scopeflow_lab.sim.optical.config import OpticalConfig
from scopeflow_lab.sim.optical.microscope import SimulatedOpticalMicroscope, blur_spec
from scopeflow_lab.sim.optical.source import FlakeChipSource

__all__ = [
    "GRAPHENE",
    "HBN",
    "MATERIALS",
    "RESIDUE",
    "Camera",
    "CameraConfig",
    "Chip",
    "ChipConfig",
    "ChipObject",
    "ContrastTable",
    "FlakeChipSource",
    "Material",
    "OpticalConfig",
    "Region",
    "SimulatedOpticalMicroscope",
    "SpectralModel",
    "blake_reflectance",
    "blur_spec",
    "contrast_rgb",
    "reflectance_rgb",
    "stack_reflectance",
]
