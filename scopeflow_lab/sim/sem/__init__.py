"""Simulated scanning electron microscope: procedural specimens, probe optics, detector, dynamics.

See ``docs/simulators.md`` ("Simulated SEM") for the model, its parameters and its limits.
"""

from __future__ import annotations

from scopeflow_lab.sim.sem.sampling import specimen_from_texture
from scopeflow_lab.sim.sem.simulator import SEMConfig, SimulatedSEM
from scopeflow_lab.sim.sem.specimen import SPECIMEN_FAMILIES, Specimen, make_specimen

__all__ = [
    "SPECIMEN_FAMILIES",
    "SEMConfig",
    "SimulatedSEM",
    "Specimen",
    "make_specimen",
    "specimen_from_texture",
]
