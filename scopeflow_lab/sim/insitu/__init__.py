"""Simulated liquid-cell / environmental TEM video with ground truth (after Yao et al. 2020).

Particles (spheres, rods, prisms, cubes) diffuse, grow and coalesce in a liquid cell; frames are
Beer–Lambert counts with Poisson noise and an empirical transfer function. See
``docs/simulators.md`` ("Simulated in-situ TEM video") for the model, its parameters and limits.
"""

from __future__ import annotations

from scopeflow_lab.sim.insitu.camera import InSituScene, SimulatedInSituCamera
from scopeflow_lab.sim.insitu.config import InSituConfig
from scopeflow_lab.sim.insitu.imaging import (
    CameraModel,
    Canvas,
    Footprint,
    Imager,
    LiquidCell,
    Optics,
    defocus_transfer,
    detector_mtf,
    electron_wavelength_nm,
)
from scopeflow_lab.sim.insitu.particles import (
    DECOY_KINDS,
    MOTIONS,
    SHAPES,
    DecoyField,
    ParticleSpec,
    Population,
    Shape,
)
from scopeflow_lab.sim.insitu.source import InSituVideoSource

__all__ = [
    "DECOY_KINDS",
    "MOTIONS",
    "SHAPES",
    "CameraModel",
    "Canvas",
    "DecoyField",
    "Footprint",
    "Imager",
    "InSituConfig",
    "InSituScene",
    "InSituVideoSource",
    "LiquidCell",
    "Optics",
    "ParticleSpec",
    "Population",
    "Shape",
    "SimulatedInSituCamera",
    "defocus_transfer",
    "detector_mtf",
    "electron_wavelength_nm",
]
