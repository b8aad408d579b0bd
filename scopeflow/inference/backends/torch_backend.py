"""PyTorch eager execution of the shipped state dict: the reference backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scopeflow.inference.backends.base import check_inputs, model_path
from scopeflow.inference.models.registry import model_module


class TorchSession:
    """A torch module in eval mode; inputs and outputs are numpy arrays."""

    backend = "torch"

    def __init__(self, model: str, path: Path) -> None:
        import torch

        module = model_module(model)
        self.model = model
        self._torch = torch
        self._net = module.build()
        self._net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self._net.eval()
        self.input_names = tuple(module.INPUT_NAMES)
        self.output_names = tuple(module.OUTPUT_NAMES)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self.input_names, inputs)
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names]
            out = self._net(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, out, strict=True)}


class TorchBackend:
    """Runs ``<model>.pt`` in PyTorch eager mode on the CPU."""

    name = "torch"

    def available(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, "torch is not installed: pip install -e '.[train]'"
        return True, f"torch {torch.__version__}"

    def load(self, model: str, weights_dir: Path | None = None) -> TorchSession:
        return TorchSession(model, model_path(self, model, ".pt", weights_dir))
