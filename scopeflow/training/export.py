"""Export a trained model to ONNX and check it against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scopeflow.inference.models.registry import model_module

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
    torch.onnx.export(net, args, str(out), input_names=list(module.INPUT_NAMES),
                      output_names=list(module.OUTPUT_NAMES), dynamic_axes=module.DYNAMIC_AXES,
                      opset_version=OPSET, dynamo=False)
    with torch.inference_mode():
        ref = net(*args)
    ref = (ref,) if isinstance(ref, torch.Tensor) else ref
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(list(module.OUTPUT_NAMES), inputs)
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True))
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and torch differ by {diff:.2e} (> {PARITY_TOLERANCE}) for {name}")
    return diff
