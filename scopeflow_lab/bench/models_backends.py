"""Backends compared per shipped model: torch eager vs ONNX Runtime, time and agreement."""

from __future__ import annotations

import numpy as np

from scopeflow.inference import backends
from scopeflow.inference.models.registry import model_module, shipped_models
from scopeflow_lab.bench.timing import median_ms


def run(quick: bool = False, progress=print) -> list[dict]:
    """One row per shipped model: torch_ms, onnxruntime_ms, speed-up, max |ONNX − torch|.

    Inputs are each model's example inputs (its native size), identical for both backends.
    """
    rows = []
    repeats = 3 if quick else 20
    for name in shipped_models():
        progress(f"  backends: {name} …")
        inputs = model_module(name).example_inputs(np.random.default_rng(1))
        ort = backends.load(name, "onnxruntime")
        ref = backends.load(name, "torch")
        a, b = ort.run(inputs), ref.run(inputs)
        diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        ort_ms = median_ms(lambda s=ort, x=inputs: s.run(x), repeats)
        torch_ms = median_ms(lambda s=ref, x=inputs: s.run(x), repeats)
        rows.append(
            {
                "model": name,
                "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
                "torch_ms": torch_ms,
                "onnxruntime_ms": ort_ms,
                "onnxruntime_speedup": torch_ms / ort_ms,
                "max_abs_diff": diff,
            }
        )
    return rows
