"""Denoiser: network shapes, ONNX export and parity, the runner (tiling, dtypes, bad input), a
training smoke run, the shipped model, and the benchmark's SSIM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from scopeflow.inference import backends  # noqa: E402
from scopeflow.inference.backends.base import check_inputs  # noqa: E402
from scopeflow.inference.models import denoiser as model  # noqa: E402
from scopeflow.inference.models.registry import model_file  # noqa: E402
from scopeflow_lab.bench.models_denoise import noise_sigma, psnr, ssim  # noqa: E402
from scopeflow_lab.training import denoiser as training  # noqa: E402
from scopeflow_lab.training.export import export_onnx  # noqa: E402

# Tiled vs untiled, in units of the frame's normalisation scale (P99.5 − P0.5; the frame's noise
# σ is ~0.06 of it): the blend only differs where a tile's border effects reach into the
# overlap, at a small weight.
TILED_MAX_DIFF = 1e-3


class EagerSession:
    """A torch module behind the backend Session interface."""

    input_names = model.INPUT_NAMES
    output_names = model.OUTPUT_NAMES

    def __init__(self, net) -> None:
        self.net = net.eval()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self.input_names, inputs)
        with torch.inference_mode():
            out = self.net(torch.from_numpy(inputs[self.input_names[0]]))
        return {self.output_names[0]: out.numpy()}


@pytest.fixture(scope="module")
def ort_session():
    return backends.load("denoiser", "onnxruntime")


@pytest.fixture(scope="module")
def sem_pair() -> training.Pair:
    """A held-out low-dose SEM frame (20 e⁻/px, small specimen for speed)."""
    return training.heldout_sem((20.0,), 1, size=128, samples=256)[0]


def test_forward_shapes():
    torch.manual_seed(0)
    net = model.build().eval()
    for n, h, w in [(1, 64, 64), (2, 40, 56), (1, 8, 8)]:
        with torch.inference_mode():
            out = net(torch.zeros((n, 2, h, w)))  # frame + noise plane in, frame out
        assert tuple(out.shape) == (n, 1, h, w)
    runner = model.Denoiser(EagerSession(net))
    for h, w in [(37, 53), (1, 9), (128, 96), (65, 130)]:
        frame = np.random.default_rng(h).integers(0, 60000, (h, w)).astype(np.uint16)
        out = runner.denoise(frame)
        assert out.shape == (h, w) and out.dtype == np.float32


def test_export_and_parity(tmp_path: Path):
    torch.manual_seed(1)
    weights = tmp_path / "denoiser.pt"
    torch.save(model.build().state_dict(), weights)
    diff = export_onnx("denoiser", weights, tmp_path / "denoiser.onnx")
    assert diff <= 1e-4


def test_training_smoke_run(tmp_path: Path):
    metrics = training.train(tmp_path, seed=0, quick=True, progress=lambda _: None)
    for name in ("denoiser.pt", "loss_curve.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert metrics["quick"] and np.isfinite(metrics["final_mse"])
    assert set(metrics["heldout"]) == {"sem_10_50", "sem_500", "insitu_500_2000"}


def test_shipped_model_backends_agree(ort_session, sem_pair):
    for suffix in (".onnx", ".pt", ".json", ".md"):
        assert model_file("denoiser", suffix).exists()
    assert model_file("denoiser", ".onnx").stat().st_size < 5_000_000
    ref = backends.load("denoiser", "torch")
    x = model.network_input(sem_pair.noisy)[0][None]
    for inputs in (model.example_inputs(np.random.default_rng(0)), {"image": x}):
        a = ort_session.run(inputs)["denoised"]
        b = ref.run(inputs)["denoised"]
        assert a.shape == b.shape
        assert float(np.abs(a - b).max()) <= 1e-4


def test_shipped_model_raises_psnr(ort_session, sem_pair):
    out = model.Denoiser(ort_session).denoise(sem_pair.noisy)
    before = psnr(sem_pair.noisy.astype(np.float32), sem_pair.clean)
    after = psnr(out, sem_pair.clean)
    assert after > before + 3.0, (before, after)


def test_8_and_16_bit_input(ort_session, sem_pair):
    runner = model.Denoiser(ort_session)
    wide = sem_pair.noisy
    narrow = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    out16, out8 = runner.denoise(wide), runner.denoise(narrow)
    assert out16.dtype == out8.dtype == np.float32
    assert out8.min() >= 0.0 and out8.max() <= 255.0  # the input's DN scale
    clean8 = sem_pair.clean / 257.0
    assert psnr(out8, clean8) > psnr(narrow.astype(np.float32), clean8) + 3.0
    # The same frame at two bit depths gives the same result up to the 8-bit rounding.
    assert psnr(out8 * 257.0, sem_pair.clean) > psnr(out16, sem_pair.clean) - 1.0
    # float32 input: the same numbers, only not clipped to a detector's range.
    floats = np.clip(runner.denoise(wide.astype(np.float32)), 0.0, 65535.0)
    np.testing.assert_allclose(floats, out16, atol=1e-3 * float(np.ptp(sem_pair.clean)))


def test_tiled_equals_untiled(ort_session, sem_pair):
    frame = np.tile(sem_pair.noisy, (3, 3))[:320, :376]
    whole = model.Denoiser(ort_session).denoise(frame)  # one pass
    # 2 × 2 tiles, overlap 64: the zero-weight half (32 px) is short of the ~48-px reach, and
    # tile starts are not aligned to the network's 8-px grid, so agreement is close, not exact.
    tiled = model.Denoiser(ort_session, tile=256, overlap=64).denoise(frame)
    _, scale = model.frame_levels(frame)
    diff = np.abs(tiled - whole) / scale
    assert float(diff.max()) <= TILED_MAX_DIFF, float(diff.max())


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((32, 32, 3), np.uint8), "single-channel"),
        (np.zeros((4, 32, 32), np.uint16), "single-channel"),
        (np.zeros(32, np.uint16), "dimensions"),
        (np.zeros((0, 32), np.uint16), "empty"),
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.full((32, 32), np.inf, np.float32), "NaN or inf"),
        (np.zeros((32, 32), np.int32), "uint8, uint16 or float32"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_bad_input_is_refused(ort_session, frame, message):
    with pytest.raises(ValueError, match=message):
        model.Denoiser(ort_session).denoise(frame)


def test_runner_settings_are_checked(ort_session):
    with pytest.raises(ValueError, match="multiple"):
        model.Denoiser(ort_session, tile=100)
    with pytest.raises(ValueError, match="overlap"):
        model.Denoiser(ort_session, tile=128, overlap=64)


def test_flat_frame_stays_flat(ort_session):
    out = model.Denoiser(ort_session).denoise(np.full((40, 40), 1234, np.uint16))
    assert np.all(np.abs(out - 1234.0) < 5.0)


def test_ssim_known_properties():
    rng = np.random.default_rng(3)
    clean = np.cumsum(rng.normal(size=(64, 64)), axis=1).astype(np.float32)
    assert ssim(clean, clean) == pytest.approx(1.0)
    mild = clean + rng.normal(0, 0.5, clean.shape).astype(np.float32)
    strong = clean + rng.normal(0, 3.0, clean.shape).astype(np.float32)
    assert 1.0 > ssim(mild, clean) > ssim(strong, clean) > 0.0
    assert ssim(clean * 0.5, clean) < 1.0  # contrast and luminance count, not only structure
    with pytest.raises(ValueError):
        ssim(clean, clean[:10])


def test_noise_estimate_matches_white_noise():
    rng = np.random.default_rng(4)
    smooth = np.add.outer(np.arange(256.0), np.arange(256.0)).astype(np.float32)
    noisy = smooth + rng.normal(0, 7.0, smooth.shape).astype(np.float32)
    assert noise_sigma(noisy) == pytest.approx(7.0, rel=0.05)
    big = rng.normal(100.0, 7.0, (1500, 1100)).astype(np.float32)  # a strided subset of blocks
    assert model.noise_level(big) == pytest.approx(7.0, rel=0.05)
    planes, _, scale = model.network_input(noisy.astype(np.float32))
    assert planes.shape == (2, 256, 256) and np.ptp(planes[1]) == 0.0
    assert planes[1, 0, 0] == pytest.approx(np.log10(7.0 / scale) + model.NOISE_OFFSET, abs=0.03)
