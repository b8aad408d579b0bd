"""Calibrating the flake detector to a setup: the contrast models, the file, the command, and a
flake search that uses it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scopeflow.inference.models import flake_calibration as fc
from scopeflow.inference.models import flake_detector as model

from harness import scopeflow_cli


def _z(c: float) -> float:
    """A contrast in the network's input space (asinh(c / 0.03)), computed here by hand."""
    return math.asinh(c / 0.03)


def _gauss(mean_contrast: tuple[float, float, float], sd: float = 0.2) -> fc.ClassGaussian:
    mean = np.array([_z(c) for c in mean_contrast])
    return fc.ClassGaussian(mean, np.eye(3) * sd**2, 1000, 5)


def test_contrast_models_decide_where_the_network_is_unsure() -> None:
    # A 40×40 map: bare substrate (contrast 0) with a 10×10 patch of a monolayer's contrast
    # on 285 nm oxide (−0.08, −0.08, −0.01). The network is told nothing (uniform
    # probabilities); a calibration that knows both colours must find the patch and only it.
    contrast = np.zeros((3, 40, 40), np.float32)
    contrast[:, 15:25, 15:25] = np.array([-0.08, -0.08, -0.01], np.float32)[:, None, None]
    probs = np.full((len(model.CLASSES), 40, 40), 1.0 / len(model.CLASSES), np.float32)
    cal = fc.FlakeCalibration(
        {"background": _gauss((0.0, 0.0, 0.0)), "graphene_1L": _gauss((-0.08, -0.08, -0.01))},
        net_weight=0.05,
    )
    classes = cal.adjust(probs, contrast).argmax(axis=0)
    inner = classes[17:23, 17:23]  # away from the 3×3 smoothing of the patch's edge
    assert (inner == model.CLASSES.index("graphene_1L")).all()
    assert (classes[:10] == 0).all() and (classes[30:] == 0).all()


def test_a_confident_network_keeps_classes_the_labels_never_showed() -> None:
    # The labels showed only background and 1L graphene; the network is sure of dirt at a
    # colour neither calibrated class explains. Dirt must survive the calibration.
    contrast = np.zeros((3, 20, 20), np.float32)
    contrast[:, 5:15, 5:15] = -0.6
    probs = np.full((len(model.CLASSES), 20, 20), 1e-4, np.float32)
    probs[0] = 0.99
    dirt = model.CLASSES.index("dirt")
    probs[:, 5:15, 5:15] = 1e-4
    probs[dirt, 5:15, 5:15] = 0.99
    cal = fc.FlakeCalibration(
        {"background": _gauss((0.0, 0.0, 0.0)), "graphene_1L": _gauss((-0.08, -0.08, -0.01))},
        net_weight=1.0,
    )
    classes = cal.adjust(probs, contrast).argmax(axis=0)
    assert classes[10, 10] == dirt
    assert classes[0, 0] == 0


@pytest.mark.parametrize(
    ("category", "attrs", "expected"),
    [
        ("graphene_2L", {}, "graphene_2L"),
        ("graphene", {"material": "graphene", "layers": 1}, "graphene_1L"),
        ("graphene", {"material": "graphene", "layers": 7}, "graphene_thick"),
        ("MoS2", {"material": "MoS2", "layers": 2}, "MoS2_2L"),
        ("WSe2", {"material": "WSe2", "layers": 3}, "WSe2_thick"),
        ("hBN", {"material": "hBN", "thickness_nm": 25.0}, "hBN_medium"),
        ("hBN", {"material": "hBN", "thickness_nm": 1.0}, None),  # invisible: not a class
        ("tape", {}, None),
        ("dirt", {"material": "dirt"}, "dirt"),
    ],
)
def test_labels_map_to_detector_classes(category, attrs, expected) -> None:
    assert fc.class_name_for(category, attrs) == expected


def test_calibration_file_round_trip_and_tamper_check(tmp_path: Path) -> None:
    cal = fc.FlakeCalibration(
        {"background": _gauss((0.0, 0.0, 0.0)), "graphene_1L": _gauss((-0.08, -0.08, -0.01))},
        net_weight=0.5,
        images=["a.png"],
    )
    path = cal.save(tmp_path / "cal")
    again = fc.FlakeCalibration.load(tmp_path / "cal")
    assert again.id == cal.id and again.net_weight == 0.5
    assert set(again.classes) == {"background", "graphene_1L"}
    doc = json.loads(path.read_text())
    doc["classes"]["graphene_1L"]["mean"][0] += 1.0
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="edited"):
        fc.FlakeCalibration.load(tmp_path / "cal")
    with pytest.raises(ValueError, match="no calibration"):
        fc.FlakeCalibration.load(tmp_path / "missing")


def test_calibrate_command_then_a_search_that_records_it(tmp_path: Path) -> None:
    data = tmp_path / "tiles"
    made = scopeflow_cli("simulate", "flakes", "--n", "4", "--seed", "9100", "--out", str(data))
    assert made.returncode == 0, made.stderr
    images = sorted((data / "images").glob("*.png"))
    assert len(images) == 4
    cal_dir = tmp_path / "cal"
    run = scopeflow_cli(
        "calibrate",
        "flake-detector",
        *map(str, images),
        "--labels",
        str(data / "annotations.json"),
        "--out",
        str(cal_dir),
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads((cal_dir / "calibration.json").read_text())
    labelled = json.loads((data / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in labelled["categories"]}
    graphene_1l = [
        a
        for a in labelled["annotations"]
        if names[a["category_id"]] == "graphene" and a.get("layers") == 1
    ]
    assert "background" in doc["classes"]
    if graphene_1l:  # what the labels showed is what was calibrated
        assert "graphene_1L" in doc["classes"]
    assert doc["net_weight"] in fc.NET_WEIGHTS
    assert doc["id"].startswith("cal-") and doc["id"] in run.stdout

    out = tmp_path / "search"
    search = scopeflow_cli(
        "run",
        "flake-search",
        "--scope",
        "sim:optical,settle_s=0",
        "--region=-300,-200,300,200",
        "--focus-grid",
        "1",
        "--focus-model",
        "tenengrad",
        "--calibration",
        str(cal_dir),
        "--out",
        str(out),
        timeout=600,
    )
    assert search.returncode == 0, search.stderr
    catalog = json.loads((out / "catalog.json").read_text())
    assert catalog["flakes"], "the region holds flakes on this chip"
    assert {f["calibration_id"] for f in catalog["flakes"]} == {doc["id"]}


def test_a_bad_calibration_is_refused_before_anything_moves(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "calibration.json").write_text('{"format": "something else"}')
    out = tmp_path / "search"
    run = scopeflow_cli(
        "run",
        "flake-search",
        "--scope",
        "sim:optical",
        "--region=-100,-100,100,100",
        "--calibration",
        str(bad),
        "--out",
        str(out),
    )
    assert run.returncode == 2
    assert "not a flake-detector calibration" in run.stderr
    assert not (out / "progress.json").exists()


def _matched_classes(a: list, b: list) -> tuple[int, int]:
    """(flakes of ``a`` that ``b`` has at IoU ≥ 0.5, of those with the same class)."""
    from pycocotools import mask as mask_utils

    def rle(d):
        return {"size": list(d.mask.size), "counts": d.mask.counts.encode()}

    found = same = 0
    for da in a:
        ious = [mask_utils.iou([rle(da)], [rle(db)], [0])[0][0] for db in b]
        if ious and max(ious) >= 0.5:
            found += 1
            same += b[int(np.argmax(ious))].attributes["class"] == da.attributes["class"]
    return found, same


def test_detection_does_not_depend_on_white_balance_vignetting_or_exposure() -> None:
    # The same chip positions through two camera set-ups: the lamp preset white balance, mild
    # vignetting and a mid exposure; versus no white balance (the raw colour cast of a 3200 K
    # lamp), strong vignetting (55 % at the corners) and a darker exposure. The detector
    # divides each tile by its own fitted substrate, so it must find the same flakes with the
    # same classes.
    from scopeflow.inference import backends
    from scopeflow_lab.sim.optical import CameraConfig, ChipConfig, FlakeChipSource, OpticalConfig

    detector = model.FlakeDetector(
        backends.load(model.NAME, "onnxruntime"), materials=("graphene", "hBN")
    )
    chip = ChipConfig(oxide_nm=285.0)
    plain = CameraConfig(shape=(600, 960))
    harsh = CameraConfig(
        shape=(600, 960), white_balance=None, vignetting_corner=0.55, auto_level=0.25
    )
    found = same = total = 0
    for a, b in zip(
        FlakeChipSource(OpticalConfig(chip=chip, camera=plain), seed=9321).images(12),
        FlakeChipSource(OpticalConfig(chip=chip, camera=harsh), seed=9321).images(12),
        strict=True,
    ):
        ref = [d for d in detector.detect(a.image) if d.area_px >= 300]
        other = detector.detect(b.image)
        f, s = _matched_classes(ref, other)
        found, same, total = found + f, same + s, total + len(ref)
    assert total >= 5, "the tiles hold flakes"
    assert found >= 0.9 * total and same >= 0.85 * total, (found, same, total)


def test_bench_flake_detector_quick_writes_conditions_and_calibration_gain(tmp_path: Path) -> None:
    out = tmp_path / "fd.json"
    run = scopeflow_cli("bench", "flake-detector", "--quick", "--json", str(out), timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(out.read_text())
    conditions = doc["flake_detector"]["conditions"]
    assert {c["held_out"] for c in conditions} == {True, False}
    for c in conditions:
        assert 0 <= c["graphene_1L"]["precision"] <= 1 and 0 <= c["layer_accuracy"] <= 1
        assert c["baseline"]["f1"] >= 0
    held = [c["condition"] for c in conditions if c["held_out"]]
    gain = doc["calibration_gain"]
    assert [g["condition"] for g in gain] == held
    for g in gain:
        assert g["calibration_id"].startswith("cal-") and g["net_weight"] in fc.NET_WEIGHTS
        assert set(g["after"]) >= {"graphene_1L", "layer_accuracy", "f1"}
    assert "| held-out condition |" in run.stdout  # the table a reader looks at


def test_the_chips_materials_leave_out_the_other_materials_classes() -> None:
    # Three pixels: the network's favourite is WSe2 thick, MoS2 1L and graphene 1L. On a
    # graphene + hBN chip the first two must go to the best remaining class.
    k = len(model.CLASSES)
    probs = np.full((k, 1, 3), 0.01, np.float32)
    idx = model.CLASSES.index
    probs[idx("WSe2_thick"), 0, 0], probs[idx("graphene_thick"), 0, 0] = 0.7, 0.2
    probs[idx("MoS2_1L"), 0, 1], probs[idx("residue"), 0, 1] = 0.6, 0.3
    probs[idx("graphene_1L"), 0, 2] = 0.9
    out = model.restrict_to_materials(probs, ("graphene", "hBN"))
    assert list(out.argmax(axis=0)[0]) == [
        idx("graphene_thick"),
        idx("residue"),
        idx("graphene_1L"),
    ]
    assert np.allclose(out.sum(axis=0), 1.0)
    assert out[idx("WSe2_thick")].max() == 0.0 and out[idx("MoS2_1L")].max() == 0.0
    with pytest.raises(ValueError, match="unknown flake materials"):
        model.check_materials(["graphene", "unobtainium"])
