"""Flake and particle detectors: networks, export and parity, training smoke runs, tiling, the
shipped models on simulated frames, wire-ready detections and bad input."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from scopeflow.inference import backends
from scopeflow.inference.models import flake_detector as flake_model
from scopeflow.inference.models import particle_detector as particle_model
from scopeflow.inference.models.registry import model_file
from scopeflow.schemas.results import Detection
from scopeflow_lab.sim.insitu import InSituConfig, InSituScene, ParticleSpec, Shape
from scopeflow_lab.sim.optical import (
    CameraConfig,
    ChipConfig,
    FlakeChipSource,
    OpticalConfig,
)
from scopeflow_lab.training import flake_detector as flake_training
from scopeflow_lab.training import particle_detector as particle_training
from scopeflow_lab.training.detect_eval import greedy_match
from scopeflow_lab.training.export import PARITY_TOLERANCE, export_onnx

MODELS = (flake_model, particle_model)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shipped(name: str) -> bool:
    return model_file(name, ".onnx").exists() and model_file(name, ".pt").exists()


needs_shipped = pytest.mark.skipif(
    not (shipped("flake_detector") and shipped("particle_detector")),
    reason="detector weights are not shipped: run 'scopeflow train' and 'scopeflow export'",
)


@pytest.fixture(scope="module")
def flake_detector() -> flake_model.FlakeDetector:
    return flake_model.FlakeDetector(backends.load("flake_detector", "onnxruntime"))


@pytest.fixture(scope="module")
def particle_detector() -> particle_model.ParticleDetector:
    return particle_model.ParticleDetector(backends.load("particle_detector", "onnxruntime"))


def iou(det: Detection, mask: np.ndarray) -> float:
    assert det.mask is not None
    pred = mask_utils.decode(
        {"size": list(det.mask.size), "counts": det.mask.counts.encode()}
    ).astype(bool)
    return float((pred & mask).sum() / (pred | mask).sum())


def check_wire(dets: list[Detection], shape: tuple[int, int]) -> None:
    """Detections survive a pydantic round trip and their masks decode to the stated area."""
    for det in dets:
        again = Detection.model_validate_json(det.model_dump_json())
        assert again == det
        assert det.mask is not None and tuple(det.mask.size) == shape
        decoded = mask_utils.decode(
            {"size": list(det.mask.size), "counts": det.mask.counts.encode()}
        )
        assert int(decoded.sum()) == det.area_px
        x, y, w, h = det.bbox_xywh_px
        assert decoded[int(y) : int(y + h), int(x) : int(x + w)].sum() == det.area_px


# -- networks -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "channels", "classes"), [(flake_model, 3, 16), (particle_model, 2, 2)]
)
def test_forward_shapes_and_probabilities(module, channels, classes):
    net = module.build().eval()
    x = torch.randn(2, channels, 48, 80) * 0.2
    with torch.inference_mode():
        probs = net(x)
    assert probs.shape == (2, classes, 48, 80)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 48, 80), atol=1e-5)
    assert module.INPUT_NAMES == ("contrast",) and module.OUTPUT_NAMES == ("probs",)
    example = module.example_inputs(np.random.default_rng(0))["contrast"]
    assert example.dtype == np.float32 and example.shape[1] == channels
    assert example.shape[2] % module.MULTIPLE == 0 and example.shape[3] % module.MULTIPLE == 0


@pytest.mark.parametrize("module", MODELS)
def test_export_and_parity_with_fresh_weights(module, tmp_path):
    net = module.build().eval()
    weights = tmp_path / f"{module.NAME}.pt"
    torch.save(net.state_dict(), weights)
    diff = export_onnx(module.NAME, weights, tmp_path / f"{module.NAME}.onnx")
    assert diff <= PARITY_TOLERANCE
    assert (tmp_path / f"{module.NAME}.onnx").stat().st_size < 5e6


@pytest.mark.parametrize("trainer", [flake_training, particle_training])
def test_quick_training_writes_its_files(trainer, tmp_path):
    lines: list[str] = []
    metrics = trainer.train(tmp_path, seed=0, quick=True, progress=lines.append)
    name = trainer.model.NAME
    for path in (f"{name}.pt", "loss_curve.png", "metrics.json"):
        assert (tmp_path / path).stat().st_size > 0
    assert metrics["quick"] and metrics["steps"] > 0 and np.isfinite(metrics["final_loss"])
    assert lines, "training reports progress"


def test_training_labels_follow_the_truth():
    source = FlakeChipSource(OpticalConfig(camera=CameraConfig(shape=(200, 320))), seed=3)
    image = next(iter(source.images(1)))
    labels = flake_training.label_map(image)
    assert labels.shape == (100, 160)
    for obj in image.objects:
        if obj.mask.sum() > 400:  # large enough that its majority blocks are interior
            inside = labels[obj.mask[::2, ::2]]
            k = flake_training.class_of(obj.attributes)
            assert np.mean(inside == k) > 0.8


# -- shipped models -------------------------------------------------------------------------------
@needs_shipped
@pytest.mark.parametrize("module", MODELS)
def test_shipped_models_agree_across_backends(module):
    inputs = module.example_inputs(np.random.default_rng(3))
    a = backends.load(module.NAME, "onnxruntime").run(inputs)["probs"]
    b = backends.load(module.NAME, "torch").run(inputs)["probs"]
    assert np.abs(a - b).max() <= PARITY_TOLERANCE
    assert model_file(module.NAME, ".onnx").stat().st_size < 5e6


def clear_flake_tile() -> tuple[np.ndarray, object]:
    """A small simulated tile (285 nm, held-out seed) and a large, untruncated thin graphene
    region in it."""
    config = OpticalConfig(camera=CameraConfig(shape=(600, 960)), chip=ChipConfig(oxide_nm=285.0))
    source = FlakeChipSource(config, seed=flake_training.TEST_SEED + 7)
    for image in source.images(40):
        for obj in image.objects:
            a = obj.attributes
            if (
                a["material"] == "graphene"
                and 1 <= a["layers"] <= 3
                and a["area_px"] > 3000
                and not a["truncated"]
            ):
                return image.image, obj
    raise AssertionError("no clear thin graphene flake in 40 tiles")


@needs_shipped
def test_shipped_flake_detector_finds_a_clear_graphene_flake(flake_detector):
    frame, obj = clear_flake_tile()
    dets = flake_detector.detect(frame)
    want = f"graphene_{obj.attributes['layers']}L"
    best = max(dets, key=lambda d: iou(d, obj.mask))
    assert iou(best, obj.mask) >= 0.5
    assert best.attributes["class"] == want
    assert best.category == "graphene" and best.attributes["layers"] == obj.attributes["layers"]
    check_wire(dets, frame.shape[:2])
    # 16-bit frames of the same scene give the same answer.
    wide = (frame.astype(np.uint16) * 257).astype(np.uint16)
    best16 = max(flake_detector.detect(wide), key=lambda d: iou(d, obj.mask))
    assert iou(best16, obj.mask) >= 0.5 and best16.attributes["class"] == want


def particle_frame(shape: tuple[int, int] = (512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A frame with one still 10 nm gold sphere in the middle (and the default decoys)."""
    spec = ParticleSpec(Shape("sphere", 10.0))
    config = InSituConfig(
        frame_shape=shape,
        particle_density_per_um2=0.0,
        particles=((spec, (0.0, 0.0)),),
        dose_e_per_px=1000.0,
        seed=particle_training.TEST_SEED + 99,
    )
    image = InSituScene(config).render((0.0, 0.0))
    mask = next(o.mask for o in image.objects if o.category == "particle")
    return image.image, mask


@needs_shipped
def test_shipped_particle_detector_finds_a_particle(particle_detector):
    frame, mask = particle_frame()
    dets = particle_detector.detect(frame)
    best = max(dets, key=lambda d: iou(d, mask))
    assert iou(best, mask) >= 0.5 and best.category == "particle"
    cy, cx = np.argwhere(mask).mean(axis=0)
    assert np.hypot(best.centroid_xy_px[0] - cx, best.centroid_xy_px[1] - cy) < 2.0
    check_wire(dets, frame.shape)


@needs_shipped
def test_tiled_equals_untiled(flake_detector, particle_detector):
    # The runners' own overlap (64 network pixels) on tiles a quarter of the one-pass size.
    frame, _ = particle_frame((512, 512))
    whole = particle_detector.probabilities(frame)
    parts = particle_model.ParticleDetector(particle_detector.session, tile=256).probabilities(
        frame
    )
    assert parts.shape == whole.shape
    assert np.abs(parts - whole).max() < 0.02
    config = OpticalConfig(camera=CameraConfig(shape=(512, 768)))
    tile = next(iter(FlakeChipSource(config, seed=flake_training.TEST_SEED + 1).images(1))).image
    whole = flake_detector.probabilities(tile)
    parts = flake_model.FlakeDetector(flake_detector.session, tile=256).probabilities(tile)
    assert parts.shape == whole.shape == (len(flake_model.CLASSES), 256, 384)
    assert np.abs(parts - whole).max() < 0.02


@needs_shipped
def test_bad_frames_raise_clear_errors(flake_detector, particle_detector):
    rgb = np.full((64, 64, 3), 100, np.uint8)
    for bad, match in (
        (rgb[..., 0], "RGB"),
        (rgb[..., :2], "RGB"),
        (rgb.astype(np.int32), "pixel type"),
        (rgb[:8], "smaller"),
        ([[1, 2, 3]], "numpy"),
    ):
        with pytest.raises(ValueError, match=match):
            flake_detector.detect(bad)
    nan = rgb.astype(np.float32) / 255
    nan[3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        flake_detector.detect(nan)
    gray = np.full((64, 64), 1000, np.uint16)
    for bad, match in ((rgb, "single-channel"), (gray.astype(bool), "pixel type")):
        with pytest.raises(ValueError, match=match):
            particle_detector.detect(bad)
    inf = gray.astype(np.float64)
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        particle_detector.detect(inf)
    # A blank frame is not an error: there is nothing on it.
    assert particle_detector.detect(np.zeros((64, 64), np.uint16)) == []


# -- benchmark helpers ----------------------------------------------------------------------------
def test_greedy_matching_is_one_to_one_by_iou():
    iou_table = np.array([[0.9, 0.6], [0.7, 0.2], [0.3, 0.55]])
    assert sorted(greedy_match(iou_table, 0.5)) == [(0, 0), (2, 1)]
    assert greedy_match(np.zeros((0, 3))) == []


def test_rle_of_a_crop_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(3, 30, 2))
        full = np.zeros((h, w), bool)
        r0, c0 = int(rng.integers(h)), int(rng.integers(w))
        r1, c1 = int(rng.integers(r0, h)) + 1, int(rng.integers(c0, w)) + 1
        full[r0:r1, c0:c1] = rng.random((r1 - r0, c1 - c0)) > 0.4
        if not full.any():
            continue
        rle = flake_model.rle_from_crop(full[r0:r1, c0:c1].view(np.uint8), r0, c0, (h, w))
        want = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        assert rle.counts == want["counts"].decode()


def test_background_fit_ignores_objects():
    yy, xx = np.mgrid[0:300, 0:480].astype(np.float32)
    smooth = 0.4 * (1 + 0.1 * (xx / 480) - 0.15 * ((yy - 150) / 150) ** 2)
    image = np.repeat(smooth[..., None], 3, axis=2)
    image[100:160, 200:280] *= 0.8  # a dark "flake" covering 3 % of the frame
    fit = flake_model.robust_background(image, cell=16, degree=4)
    assert np.abs(fit / np.repeat(smooth[..., None], 3, axis=2) - 1).max() < 2e-3


@pytest.mark.parametrize("side", [16, 64, 128])
def test_background_fit_of_a_small_frame_finds_its_level(side):
    # Fewer cells than a fit needs must still give the frame's level, not full scale.
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    smooth = 0.3 * (1 + 0.1 * xx / side - 0.05 * yy / side)
    fit = flake_model.robust_background(smooth[..., None], cell=32, degree=2)
    assert np.abs(fit[..., 0] / smooth - 1).max() < 5e-3


@needs_shipped
def test_an_empty_small_frame_has_no_particles(particle_detector):
    frame = np.random.default_rng(0).poisson(1000.0, (64, 64)).astype(np.uint16)
    assert particle_detector.detect(frame) == []


@needs_shipped
def test_instance_thresholds_are_the_best_of_their_grid(particle_detector):
    chosen = particle_training.choose_instance_thresholds(
        particle_detector.session,
        particle_training.validation_specs(quick=True),
        progress=lambda _: None,
    )
    grid = chosen["grid"]
    assert len(grid) == len(particle_training.AREA_GRID_PX) * len(particle_training.SCORE_GRID)
    assert chosen["chosen"]["f1"] == max(row["f1"] for row in grid)


@pytest.mark.parametrize(
    ("pixel_nm", "factor"), [(None, 1), (0.5, 1), (0.06, 1), (0.03, 2), (0.015, 4), (0.01, 6)]
)
def test_fine_frames_are_binned_to_the_working_scale(pixel_nm, factor):
    assert particle_model.bin_factor(pixel_nm) == factor


@needs_shipped
def test_an_atomic_resolution_gold_particle_is_found_in_the_frame_s_own_pixels(
    particle_detector,
):
    from scopeflow_lab.sim.atomic import multislice

    # The held-out multislice microscope (never trained on): one 2 nm Au particle in [110]
    # on 3 nm of carbon, 0.03 nm/px, 300 e⁻/Å².
    frame = multislice.MultisliceFrame(
        frame_shape=(384, 384),
        pixel_size_nm=0.03,
        dose_e_per_a2=300.0,
        defocus_nm=-10.0,
        cs_um=5.0,
        support_nm=3.0,
        particles=(("Au", 2.0, 5.0, 6.0, "110"),),
        seed=11,
    )
    image = multislice.render(frame)
    (truth,) = image.objects
    dets = particle_detector.detect(image.image, pixel_size_nm=0.03)
    assert dets, "no particle found"
    best = max(dets, key=lambda d: iou(d, truth.mask))
    assert list(best.mask.size) == [
        384,
        384,
    ]  # masks come back in the frame's pixels, not binned ones
    assert iou(best, truth.mask) >= 0.5


@needs_shipped
def test_a_coarser_working_scale_analyses_the_frame_binned_and_answers_in_its_pixels(
    particle_detector,
):
    frame, mask = particle_frame()  # 512², 0.5 nm/px
    coarse = particle_model.ParticleDetector(particle_detector.session, work_pixel_nm=1.0)
    assert coarse.probabilities(frame, 0.5).shape == (2, 256, 256)
    dets = coarse.detect(frame, pixel_size_nm=0.5)
    best = max(dets, key=lambda d: iou(d, mask))
    assert list(best.mask.size) == [512, 512] and iou(best, mask) >= 0.5
    with pytest.raises(ValueError, match="> 0 nm"):
        particle_model.ParticleDetector(particle_detector.session, work_pixel_nm=0.0)


def test_the_working_scale_is_refused_for_other_models():
    from scopeflow.inference.processors import make_processor

    with pytest.raises(ValueError, match="applies to the particle_detector"):
        make_processor("flake_detector", "onnxruntime", detect_pixel_nm=1.0)
