"""AENet and ACNet: level mapping, network shapes, ONNX export and parity, training smoke runs,
the shipped models on both CPU backends, their behaviour on simulated frames, and bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from scopeflow.inference import backends  # noqa: E402
from scopeflow.inference.models import acnet, aenet  # noqa: E402
from scopeflow.inference.models.acnet import ACNet, Observation  # noqa: E402
from scopeflow.inference.models.aenet import AENet, AENetResult  # noqa: E402
from scopeflow.inference.models.registry import model_file  # noqa: E402
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM  # noqa: E402
from scopeflow_lab.training.export import PARITY_TOLERANCE, export_onnx  # noqa: E402
from scopeflow_lab.training.focus_eval import spearman  # noqa: E402

SHIPPED = all(model_file(n, s).exists() for n in ("aenet", "acnet") for s in (".onnx", ".pt"))
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="AENet/ACNet weights are not shipped")
DOF_UM = 10.0 / 3.0  # 10 nm pixels at 3 mrad


def sem_frames(offsets_dof: list[float], size: int = 256, **kw) -> list[np.ndarray]:
    """Frames of one simulated SEM at the given defocus values (DoF units)."""
    cfg = replace(
        SEMConfig(), frame_shape=(size, size), settle_s=0.0, seed=3, dose_e_per_px=100.0, **kw
    )
    sem = SimulatedSEM(cfg)
    out = []
    for dz in offsets_dof:
        sem.set_wd(5000.0 + dz * DOF_UM)
        out.append(sem.acquire().pixels)
    return out


@pytest.fixture(scope="module")
def shipped() -> dict[str, object]:
    return {
        "aenet": AENet(backends.load("aenet", "onnxruntime")),
        "acnet": ACNet(backends.load("acnet", "onnxruntime")),
    }


# -- level mapping and statistics ---------------------------------------------------------------
def test_level_mapping_is_documented_log_bands():
    assert aenet.level_from_dof(0.0) == 9
    assert aenet.level_from_dof(0.5) == 9
    assert aenet.level_from_dof(0.51) == 8
    assert aenet.level_from_dof(30.0) == 1
    assert aenet.level_from_dof(30.5) == 0
    u = np.geomspace(0.01, 100, 500)
    levels = aenet.level_from_dof(u)
    assert np.all(np.diff(levels) <= 0)
    # The score's floor is the level (up to rounding at the exact band edges).
    edges = np.isclose(u[:, None], np.asarray(aenet.LEVEL_EDGES_DOF)).any(axis=1)
    assert np.array_equal(aenet.level_from_score(aenet.score_from_dof(u))[~edges], levels[~edges])
    assert aenet.dof_from_log_u(aenet.log_u_target(7.0)) == pytest.approx(7.0, rel=1e-5)


def test_spearman_uses_average_ranks():
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)
    # Ties: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4) give 0.9487 (scipy agrees).
    assert spearman(np.array([1, 1, 3, 4.0]), np.array([1, 2, 3, 4.0])) == pytest.approx(
        0.9486833, abs=1e-6
    )


# -- networks, export, parity -------------------------------------------------------------------
@pytest.mark.parametrize("module", [aenet, acnet])
def test_forward_pass_shapes(module):
    net = module.build().eval()
    inputs = module.example_inputs(np.random.default_rng(0))
    n = next(iter(inputs.values())).shape[0]
    with torch.inference_mode():
        out = net(*[torch.from_numpy(inputs[k]) for k in module.INPUT_NAMES])
    shapes = [tuple(o.shape) for o in out]
    if module is aenet:
        assert shapes == [(n,), (n,), (n, 2)]
    else:
        assert shapes == [(n,), (n,), (n,)]
        assert torch.all((out[1] >= 0) & (out[1] <= 1))


@pytest.mark.parametrize("module", [aenet, acnet])
def test_export_to_onnx_matches_torch(module, tmp_path: Path):
    torch.manual_seed(0)
    net = module.build().eval()
    weights = tmp_path / f"{module.NAME}.pt"
    torch.save(net.state_dict(), weights)
    diff = export_onnx(module.NAME, weights, tmp_path / f"{module.NAME}.onnx")
    assert diff <= PARITY_TOLERANCE


# -- training smoke runs ------------------------------------------------------------------------
def test_aenet_quick_training_writes_its_files(tmp_path: Path):
    from scopeflow_lab.training import aenet as training

    summary = training.train(tmp_path, quick=True, progress=lambda s: None)
    for name in ("aenet.pt", "loss_curve.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert 0.0 <= summary["heldout_metrics"]["within_one_level"] <= 1.0


@needs_shipped
def test_acnet_quick_training_writes_its_files(tmp_path: Path):
    from scopeflow_lab.training import acnet as training

    summary = training.train(tmp_path, quick=True, progress=lambda s: None)
    for name in ("acnet.pt", "loss_curve.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert summary["heldout_metrics"]["trials"] == 2


# -- shipped models -----------------------------------------------------------------------------
@needs_shipped
def test_shipped_models_agree_on_both_cpu_backends():
    frame = sem_frames([4.0])[0]
    patches, _ = aenet.extract_patches(aenet.to_luminance(frame))
    ort, ref = backends.load("aenet", "onnxruntime"), backends.load("aenet", "torch")
    a, b = ort.run({"patches": patches}), ref.run({"patches": patches})
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= PARITY_TOLERANCE
    result = AENet(ort).evaluate(frame)
    x = acnet.encode([Observation(result, 0.0)])[None]
    ort, ref = backends.load("acnet", "onnxruntime"), backends.load("acnet", "torch")
    a, b = ort.run({"observations": x}), ref.run({"observations": x})
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= PARITY_TOLERANCE


@needs_shipped
def test_aenet_ranks_focus_above_defocus_and_ignores_gain_and_offset(shipped):
    model = shipped["aenet"]
    sharp, blurred = sem_frames([0.0, 10.0], family="grains")
    r_sharp, r_blurred = model.evaluate(sharp), model.evaluate(blurred)
    assert r_sharp.score > r_blurred.score
    assert r_sharp.level >= 8 and r_sharp.signal_ok
    assert 5.0 <= r_blurred.abs_defocus_dof <= 20.0
    for frame, base in ((sharp, r_sharp), (blurred, r_blurred)):
        x = frame.astype(np.float32)
        for gain, offset in ((0.5, 0.2), (2.0, -0.2), (1.3, 0.0)):
            moved = model.evaluate(x * gain + offset * float(x.mean()))
            assert abs(moved.level - base.level) <= 1
            assert abs(moved.score - base.score) <= 1.0


@needs_shipped
def test_aenet_reads_colour_and_8_bit_frames(shipped):
    frame = sem_frames([2.0])[0]
    grey = shipped["aenet"].evaluate(frame)
    rgb = shipped["aenet"].evaluate(np.repeat(frame[:, :, None], 3, axis=2))
    assert rgb.score == pytest.approx(grey.score, abs=1e-3)
    small = (frame // 257).astype(np.uint8)
    assert abs(shipped["aenet"].evaluate(small).score - grey.score) <= 1.0


@needs_shipped
def test_acnet_gets_the_sign_from_two_frames(shipped):
    """Start 12 DoF above focus, step 6 DoF down: both frames above focus, so move down."""
    before, now = sem_frames([12.0, 6.0], family="nanoparticles")
    obs = [
        Observation(shipped["aenet"].evaluate(before), 6.0),
        Observation(shipped["aenet"].evaluate(now), 0.0),
    ]
    proposal = shipped["acnet"].propose(obs)
    assert proposal.correction_dof < 0
    assert 2.0 <= -proposal.correction_dof <= 12.0
    # Mirror image: below focus, stepping up.
    before, now = sem_frames([-12.0, -6.0], family="nanoparticles")
    obs = [
        Observation(shipped["aenet"].evaluate(before), -6.0),
        Observation(shipped["aenet"].evaluate(now), 0.0),
    ]
    assert shipped["acnet"].propose(obs).correction_dof > 0


# -- bad input ----------------------------------------------------------------------------------
class _Unused:
    def run(self, inputs):
        raise AssertionError("bad input must be refused before the model runs")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.full((128, 128), np.nan, np.float32), "NaN or inf"),
        (np.zeros((4, 128, 128), np.float32), r"\(H, W\) or \(H, W, 3\)"),
        (np.zeros((128, 128, 4), np.uint8), "4 channels"),
        (np.zeros((32, 256), np.uint16), "smaller than one 64×64 patch"),
        (np.zeros(128, np.uint16), "shape"),
        (np.zeros((128, 128), bool), "dtype"),
    ],
)
def test_aenet_refuses_bad_frames_with_a_clear_message(frame, message):
    with pytest.raises(ValueError, match=message):
        AENet(_Unused()).evaluate(frame)


def test_acnet_refuses_bad_observations():
    result = AENetResult(
        score=5.0, level=5, abs_defocus_dof=3.0, features=np.zeros(4, np.float32), signal_ok=True
    )
    model = ACNet(_Unused())
    with pytest.raises(ValueError, match="at least one observation"):
        model.propose([])
    with pytest.raises(ValueError, match="current frame"):
        model.propose([Observation(result, 3.0)])
    with pytest.raises(ValueError, match="non-finite WD offset"):
        model.propose([Observation(result, float("nan")), Observation(result, 0.0)])
    blank = replace(result, signal_ok=False)
    assert model.propose([Observation(blank, 0.0)]).confidence == 0.0
