"""What the flake and particle detection benchmarks share beyond the scoring
(:mod:`scopeflow_lab.training.detect_eval`): the ONNX Runtime vs torch network timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scopeflow.inference import backends
from scopeflow_lab.bench.timing import median_ms


def backend_times(
    name: str, inputs: dict[str, np.ndarray], repeats: int, weights_dir: Path | None
) -> dict[str, float]:
    """The network alone on one input: ONNX Runtime vs torch eager (same threads)."""
    import torch

    threads = os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ort = backends.load(name, "onnxruntime", weights_dir)
        ref = backends.load(name, "torch", weights_dir)
        diff = max(
            float(np.abs(ort.run(inputs)[k] - ref.run(inputs)[k]).max()) for k in ort.output_names
        )
        ort_s = median_ms(lambda: ort.run(inputs), repeats) / 1e3
        torch_s = median_ms(lambda: ref.run(inputs), repeats) / 1e3
    finally:
        torch.set_num_threads(before)
    return {
        "input_shape": list(next(iter(inputs.values())).shape),
        "threads": threads,
        "onnxruntime_ms": ort_s * 1e3,
        "torch_ms": torch_s * 1e3,
        "onnxruntime_speedup": torch_s / ort_s,
        "max_abs_diff": diff,
    }
