"""The backend interface: load a model by name, run it on named float32 arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from scopeflow.errors import ModelUnavailable
from scopeflow.inference.models.registry import model_file


class BackendUnavailable(ModelUnavailable, RuntimeError):
    """The backend cannot run here; the message says why and what would fix it."""


class Session(Protocol):
    """A loaded model, ready to run. Inputs and outputs are numpy arrays by tensor name."""

    model: str
    backend: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    """An inference backend (onnxruntime, torch, tensorrt)."""

    name: str

    def available(self) -> tuple[bool, str]:
        """Whether it can run here, and why (not)."""

    def load(self, model: str, weights_dir: Path | None = None) -> Session:
        """Load a shipped model; raises BackendUnavailable or FileNotFoundError."""


def check_inputs(expected: tuple[str, ...], inputs: dict[str, np.ndarray]) -> None:
    """Clear errors for missing/extra inputs, non-float32 or non-finite data."""
    missing = set(expected) - inputs.keys()
    extra = inputs.keys() - set(expected)
    if missing or extra:
        raise ValueError(
            f"inputs must be {sorted(expected)}; missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}"
        )
    for name, arr in inputs.items():
        if arr.dtype != np.float32:
            raise ValueError(f"input {name!r} must be float32, got {arr.dtype}")
        if not np.isfinite(arr).all():
            raise ValueError(f"input {name!r} holds NaN or inf values")


def model_path(backend: Backend, model: str, suffix: str, weights_dir: Path | None) -> Path:
    """The shipped file of ``model`` that ``backend`` loads (``.onnx``, ``.pt``), once the backend
    is known to run here: BackendUnavailable says why not, FileNotFoundError how to make it."""
    ok, why = backend.available()
    if not ok:
        raise BackendUnavailable(why)
    path = model_file(model, suffix, weights_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: train the model ('scopeflow train {model}') "
            f"and ship the run ('scopeflow export {model} --run DIR')"
        )
    return path
