"""The dataset sources ``scopeflow simulate`` knows, by name."""

from __future__ import annotations

from scopeflow.acquisition.truth import DatasetSource

KINDS = ("sem", "flakes", "insitu")


def dataset_source(kind: str, seed: int, ideal: bool) -> DatasetSource:
    """The simulator behind ``scopeflow simulate KIND``, deterministic under ``seed``."""
    if kind == "sem":
        from scopeflow.acquisition.sem.dataset import SEMFocusSource

        return SEMFocusSource(seed=seed, ideal=ideal)
    if kind == "flakes":
        from scopeflow.acquisition.optical import FlakeChipSource

        return FlakeChipSource(seed=seed, ideal=ideal)
    if kind == "insitu":
        from scopeflow.acquisition.insitu import InSituVideoSource

        return InSituVideoSource(seed=seed, ideal=ideal)
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
