"""ONNX Runtime on the CPU: the embedded default."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scopeflow.inference.backends.base import check_inputs, model_path


class OrtSession:
    """An ONNX Runtime session for one shipped model."""

    backend = "onnxruntime"

    def __init__(self, model: str, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # SCOPEFLOW_THREADS (set by `node infer --threads`): N workers on one host share its
        # cores instead of each taking all of them.
        env = os.environ.get("SCOPEFLOW_THREADS", "")
        threads = threads or (int(env) if env.isdigit() and int(env) > 0 else None)
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model = model
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self.input_names, inputs)
        outputs = self._session.run(list(self.output_names), inputs)
        return dict(zip(self.output_names, outputs, strict=True))


class OnnxRuntimeBackend:
    """Runs the shipped ``<model>.onnx`` with the CPU execution provider."""

    name = "onnxruntime"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime is not importable ({exc}); pip install onnxruntime"
        return True, f"onnxruntime {ort.__version__} (CPUExecutionProvider)"

    def load(self, model: str, weights_dir: Path | None = None) -> OrtSession:
        return OrtSession(model, model_path(self, model, ".onnx", weights_dir))
