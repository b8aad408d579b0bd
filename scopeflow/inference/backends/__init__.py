"""Inference backends: onnxruntime (CPU default), torch (reference), tensorrt (NVIDIA GPU)."""

from __future__ import annotations

from pathlib import Path

from scopeflow.inference.backends.base import Backend, BackendUnavailable, Session
from scopeflow.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
from scopeflow.inference.backends.tensorrt_backend import TensorRTBackend
from scopeflow.inference.backends.torch_backend import TorchBackend

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (TensorRTBackend(), OnnxRuntimeBackend(), TorchBackend())
}
# Preference for "auto": the GPU when there is one, else the CPU default.
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


def backend_status() -> dict[str, tuple[bool, str]]:
    """Every backend: (usable here, why)."""
    return {name: b.available() for name, b in BACKENDS.items()}


def load(model: str, backend: str = "auto", weights_dir: Path | None = None) -> Session:
    """Load ``model`` on ``backend`` ("auto": the first usable of tensorrt, onnxruntime, torch)."""
    if backend == "auto":
        reasons = []
        for name in AUTO_ORDER:
            ok, why = BACKENDS[name].available()
            if ok:
                return BACKENDS[name].load(model, weights_dir)
            reasons.append(f"{name}: {why}")
        raise BackendUnavailable("no backend can run here: " + "; ".join(reasons))
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    return BACKENDS[backend].load(model, weights_dir)


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "Session", "backend_status", "load"]
