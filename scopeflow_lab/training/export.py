"""Export a trained model to ONNX and check it against torch; ship a training run's model."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference.models.registry import WEIGHTS_DIR, model_module

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(name: str, weights: Path, out: Path, seed: int = 0) -> float:
    """Write ``out`` (ONNX) from the state dict ``weights``; return max |ONNX − torch| on the
    example inputs, raising when it exceeds the fp32 tolerance."""
    import onnxruntime as ort
    import torch

    module = model_module(name)
    net = module.build()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    inputs = module.example_inputs(np.random.default_rng(seed))
    args = tuple(torch.from_numpy(inputs[n]) for n in module.INPUT_NAMES)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net,
        args,
        str(out),
        input_names=list(module.INPUT_NAMES),
        output_names=list(module.OUTPUT_NAMES),
        dynamic_axes=module.DYNAMIC_AXES,
        opset_version=OPSET,
        dynamo=False,
    )
    with torch.inference_mode():
        ref = net(*args)
    ref = (ref,) if isinstance(ref, torch.Tensor) else ref
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(list(module.OUTPUT_NAMES), inputs)
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True))
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and torch differ by {diff:.2e} (> {PARITY_TOLERANCE}) for {name}")
    return diff


def metadata(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The shipped ``<name>.json``: the trainer's own ``metadata(metrics)`` where it has one,
    else the graph's tensors, the TensorRT profile (the module's ``TENSORRT_PROFILE``, or the
    example inputs' fixed shapes) and the training summary."""
    trainer = importlib.import_module(f"scopeflow_lab.training.{name}")
    if hasattr(trainer, "metadata"):
        return trainer.metadata(metrics)
    module = model_module(name)
    examples = module.example_inputs(np.random.default_rng(0))
    profile = getattr(module, "TENSORRT_PROFILE", None) or {
        k: [list(v.shape)] * 3 for k, v in examples.items()
    }
    return {
        "model": name,
        "inputs": {
            k: {
                "example_shape": list(v.shape),
                "dtype": str(v.dtype),
                "dynamic_axes": module.DYNAMIC_AXES.get(k, {}),
            }
            for k, v in examples.items()
        },
        "outputs": list(module.OUTPUT_NAMES),
        "training": metrics,
        "tensorrt_profile": profile,
    }


def ship(name: str, run_dir: Path, weights_dir: Path = WEIGHTS_DIR) -> float:
    """Install a training run (``run_dir`` with ``<name>.pt`` and ``metrics.json``) as the
    shipped model: copy the weights, write ``<name>.json``, export and check ``<name>.onnx``.
    Returns max |ONNX − torch|. The model card (``<name>.md``) is written by hand from the
    benchmark, so it is left alone."""
    weights = run_dir / f"{name}.pt"
    metrics_path = run_dir / "metrics.json"
    for path in (weights, metrics_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: is {run_dir} a 'scopeflow train {name}' run directory?"
            )
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("quick"):
        raise ValueError(f"{run_dir} is a --quick smoke run; ship a full training run")
    weights_dir.mkdir(parents=True, exist_ok=True)
    shipped = weights_dir / f"{name}.pt"
    shutil.copyfile(weights, shipped)
    diff = export_onnx(name, shipped, weights_dir / f"{name}.onnx")
    meta = metadata(name, metrics)
    meta["export"] = {"opset": OPSET, "max_abs_diff_onnx_vs_torch_example": diff}
    (weights_dir / f"{name}.json").write_text(json.dumps(meta, indent=2, default=float))
    return diff
