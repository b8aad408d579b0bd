"""The dataset sources ``scopeflow simulate`` knows, by name."""

from __future__ import annotations

from scopeflow_lab.sim.truth import DatasetSource

KINDS = ("sem", "flakes", "insitu")


def dataset_source(kind: str, seed: int, ideal: bool) -> DatasetSource:
    """The simulator behind ``scopeflow simulate KIND``, deterministic under ``seed``."""
    if kind == "sem":
        from scopeflow_lab.sim.sem.dataset import SEMFocusSource

        return SEMFocusSource(seed=seed, ideal=ideal)
    if kind == "flakes":
        from scopeflow_lab.sim.optical import FlakeChipSource

        return FlakeChipSource(seed=seed, ideal=ideal)
    if kind == "insitu":
        from scopeflow_lab.sim.insitu import InSituVideoSource

        return InSituVideoSource(seed=seed, ideal=ideal)
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
