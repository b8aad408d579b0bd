"""Shipped models: every model is in the package with its weights, ONNX export, metadata and
card; a training run is installed by ``scopeflow export MODEL --run DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scopeflow.inference import backends
from scopeflow.inference.models.registry import (
    MODEL_NAMES,
    model_file,
    model_metadata,
    model_module,
    shipped_models,
)
from scopeflow_lab.training import particle_detector as particle_training
from scopeflow_lab.training.export import PARITY_TOLERANCE, ship

CARD_SECTIONS = ("## Training data", "## Held-out metrics", "## Known limits")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_ships_weights_onnx_metadata_and_a_card(name):
    for suffix in (".pt", ".onnx", ".json", ".md"):
        assert model_file(name, suffix).stat().st_size > 0, f"{name}{suffix} is empty"
    meta = model_metadata(name)
    assert meta["training"]["quick"] is False, "a smoke run was shipped"
    assert meta["export"]["max_abs_diff_onnx_vs_torch_example"] <= PARITY_TOLERANCE
    assert "tensorrt_profile" in meta
    card = model_file(name, ".md").read_text()
    for section in CARD_SECTIONS:
        assert section in card, f"{name}.md lacks '{section}'"
    assert set(shipped_models()) == set(MODEL_NAMES)


def test_a_quick_run_is_refused(tmp_path):
    run = tmp_path / "run"
    particle_training.train(run, seed=0, quick=True, progress=lambda _: None)
    with pytest.raises(ValueError, match="smoke run"):
        ship("particle_detector", run, weights_dir=tmp_path / "w")
    with pytest.raises(FileNotFoundError, match="scopeflow train"):
        ship("particle_detector", tmp_path / "nowhere", weights_dir=tmp_path / "w")


def test_shipping_a_run_installs_a_model_the_backends_load(tmp_path):
    run = tmp_path / "run"
    particle_training.train(run, seed=0, quick=True, progress=lambda _: None)
    # Pretend it is a full run: shipping is the same either way.
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "quick": False}))
    weights = tmp_path / "w"
    diff = ship("particle_detector", run, weights_dir=weights)
    assert diff <= PARITY_TOLERANCE
    meta = model_metadata("particle_detector", weights)
    assert meta["training"]["steps"] == metrics["steps"]
    assert meta["tensorrt_profile"] == model_module("particle_detector").TENSORRT_PROFILE
    inputs = model_module("particle_detector").example_inputs(np.random.default_rng(0))
    a = backends.load("particle_detector", "onnxruntime", weights).run(inputs)["probs"]
    b = backends.load("particle_detector", "torch", weights).run(inputs)["probs"]
    assert np.abs(a - b).max() <= PARITY_TOLERANCE
    assert Path(weights / "particle_detector.md").exists() is False  # cards are written by hand
