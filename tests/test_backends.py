"""Backend selection and availability; TensorRT runs only where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest

from scopeflow.inference import backends
from scopeflow.inference.backends.base import BackendUnavailable, check_inputs
from scopeflow.inference.models.registry import MODEL_NAMES, shipped_models

TRT_OK, TRT_WHY = backends.BACKENDS["tensorrt"].available()


def test_status_names_every_backend_with_a_reason():
    status = backends.backend_status()
    assert set(status) == {"onnxruntime", "torch", "tensorrt"}
    assert status["onnxruntime"][0], status["onnxruntime"][1]
    for ok, why in status.values():
        assert isinstance(ok, bool) and len(why) > 10


def test_unknown_backend_and_model_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="onnxruntime"):
        backends.load("aenet", "cuda-magic")
    with pytest.raises(ValueError, match="denoiser"):
        backends.load("resnet50", "onnxruntime")


def test_missing_model_files_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="scopeflow export"):
        backends.load("aenet", "onnxruntime", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="scopeflow train"):
        backends.load("aenet", "torch", weights_dir=tmp_path)


def test_auto_picks_tensorrt_on_a_gpu_else_onnxruntime():
    if not shipped_models():
        pytest.skip("no model shipped yet")
    session = backends.load(shipped_models()[0], "auto")
    assert session.backend == ("tensorrt" if TRT_OK else "onnxruntime")


def test_tensorrt_says_why_it_cannot_run_here():
    if TRT_OK:
        pytest.skip("a GPU with TensorRT is present; the parity test below runs instead")
    with pytest.raises(BackendUnavailable) as info:
        backends.load("aenet", "tensorrt")
    assert str(info.value) == TRT_WHY


@pytest.mark.skipif(not TRT_OK, reason=f"TensorRT unavailable: {TRT_WHY}")
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_tensorrt_fp16_matches_onnxruntime(model):
    from scopeflow.inference.models.registry import model_module

    inputs = model_module(model).example_inputs(np.random.default_rng(0))
    ref = backends.load(model, "onnxruntime").run(inputs)
    got = backends.load(model, "tensorrt").run(inputs)
    for name in ref:
        scale = float(np.abs(ref[name]).max()) or 1.0
        assert np.abs(got[name] - ref[name]).max() <= 2e-2 * scale  # FP16 engine


def test_inputs_are_checked_before_running():
    with pytest.raises(ValueError, match="missing"):
        check_inputs(("x",), {})
    with pytest.raises(ValueError, match="float32"):
        check_inputs(("x",), {"x": np.zeros(3, np.float64)})
    with pytest.raises(ValueError, match="NaN"):
        check_inputs(("x",), {"x": np.array([np.nan], np.float32)})
