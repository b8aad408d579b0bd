"""``scopeflow bench models``, AENet and ACNet sections: the held-out figures of
:mod:`scopeflow_lab.training.focus_eval` and the speed of each backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from scopeflow.inference.models import aenet as aenet_model
from scopeflow.inference.models.acnet import ACNet, Observation
from scopeflow.inference.models.aenet import AENet
from scopeflow_lab.bench.timing import median_ms
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM
from scopeflow_lab.training.focus_eval import (  # noqa: F401 - re-used by the bench modules
    EVAL_SEEDS,
    FOCUS_WD_UM,
    acnet_metrics,
    aenet_metrics,
    heldout_families,
    spearman,
)


def timing(repeats: int = 30) -> dict[str, Any]:
    """Milliseconds per 512² frame for AENet (+ ACNet), ONNX Runtime vs torch eager."""
    import torch

    from scopeflow.inference import backends

    sim = SimulatedSEM(
        replace(
            SEMConfig(),
            frame_shape=(512, 512),
            settle_s=0.0,
            seed=5,
            start_wd_um=FOCUS_WD_UM + 3 * 10 / 3,
        )
    )
    frame = sim.acquire().pixels
    patches, _ = aenet_model.extract_patches(aenet_model.to_luminance(frame))
    out: dict[str, Any] = {"frame": [512, 512], "torch_threads": torch.get_num_threads()}
    for backend in ("onnxruntime", "torch"):
        ae = AENet(backends.load("aenet", backend))
        ac = ACNet(backends.load("acnet", backend))
        result = ae.evaluate(frame)
        obs = [Observation(result, 0.0)]
        out[f"aenet_model_ms_{backend}"] = median_ms(
            lambda s=ae.session: s.run({"patches": patches}), repeats
        )
        out[f"aenet_ms_{backend}"] = median_ms(lambda a=ae: a.evaluate(frame), repeats)
        out[f"acnet_ms_{backend}"] = median_ms(lambda c=ac, o=obs: c.propose(o), repeats)
        out[f"aenet_plus_acnet_ms_{backend}"] = median_ms(
            lambda a=ae, c=ac: c.propose([Observation(a.evaluate(frame), 0.0)]), repeats
        )
    out["preprocess_ms"] = median_ms(
        lambda: aenet_model.extract_patches(aenet_model.to_luminance(frame)), repeats
    )
    out["onnxruntime_speedup_aenet_model"] = (
        out["aenet_model_ms_torch"] / out["aenet_model_ms_onnxruntime"]
    )
    out["onnxruntime_speedup_acnet"] = out["acnet_ms_torch"] / out["acnet_ms_onnxruntime"]
    return out


# -- entry point --------------------------------------------------------------------------------
def run(quick: bool = False, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``aenet`` and ``acnet`` sections of ``scopeflow bench models`` (shipped models on
    ONNX Runtime). ``quick``: a few frames only, for a smoke test."""
    from scopeflow.inference import backends

    aenet = AENet(backends.load("aenet", "onnxruntime"))
    acnet = ACNet(backends.load("acnet", "onnxruntime"))
    t0 = time.monotonic()
    a = aenet_metrics(
        aenet,
        n_frames=4 if quick else 400,
        frame_size=256 if quick else 512,
        n_gain_frames=2 if quick else 40,
        seeds=EVAL_SEEDS[:1] if quick else EVAL_SEEDS,
        progress=progress,
    )
    c = acnet_metrics(
        aenet,
        acnet,
        n_trials=4 if quick else 200,
        frame_size=256 if quick else 512,
        progress=progress,
    )
    progress("  aenet/acnet: timing at 512²")
    speed = timing(repeats=3 if quick else 30)
    a["timing"] = speed
    a["seconds"] = time.monotonic() - t0
    return {"aenet": a, "acnet": c}
