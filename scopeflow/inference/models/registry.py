"""Which models exist, where their files are, and the contract their modules follow."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MODEL_NAMES = ("aenet", "acnet", "denoiser", "flake_detector", "particle_detector")


class ModelModule(Protocol):
    """What ``scopeflow.inference.models.<name>`` provides.

    ``INPUT_NAMES``/``OUTPUT_NAMES`` name the ONNX graph's tensors and ``DYNAMIC_AXES`` their
    variable axes. ``build()`` returns the torch module (torch is imported only there).
    ``example_inputs(rng)`` returns float32 inputs for export and parity checks.
    """

    NAME: str
    INPUT_NAMES: tuple[str, ...]
    OUTPUT_NAMES: tuple[str, ...]
    DYNAMIC_AXES: dict[str, dict[int, str]]

    def build(self) -> Any: ...

    def example_inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]: ...


def model_module(name: str) -> ModuleType:
    """The module of model ``name``; ValueError lists the known ones."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return importlib.import_module(f"scopeflow.inference.models.{name}")


def model_file(name: str, suffix: str, weights_dir: Path | None = None) -> Path:
    """Path of a shipped file of ``name`` (``.onnx``, ``.pt``, ``.json``, ``.md``)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return (weights_dir or WEIGHTS_DIR) / f"{name}{suffix}"


def model_metadata(name: str, weights_dir: Path | None = None) -> dict[str, Any]:
    """The model's ``.json`` metadata (input size, normalisation, classes, training summary)."""
    path = model_file(name, ".json", weights_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"model {name!r} is not shipped ({path} missing); train and export it with "
            f"'scopeflow train {name}' and 'scopeflow export {name}'"
        )
    return json.loads(path.read_text())


def shipped_models(weights_dir: Path | None = None) -> list[str]:
    """Models whose ONNX export is present."""
    return [n for n in MODEL_NAMES if model_file(n, ".onnx", weights_dir).exists()]
