"""The flake detector's physics prior: the oxide estimated from a chip's own flakes, the
calibration it yields, the command that writes it, a search that uses it, and the two fixes it
needed in the detector (blurred edges, a tile half over the holder)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from scopeflow.inference.models import flake_detector as model
from scopeflow.inference.models import flake_physics as fp

from harness import scopeflow_cli

HELD_OUT_OXIDE_NM = 300.0  # never trained on (training: 90, 100, 270, 285 ± 5 nm)


def _tiles(oxide_nm: float, n: int, seed: int) -> list:
    """``n`` rendered 600×960 tiles (graphene and hBN) of a chip with ``oxide_nm`` of SiO₂."""
    from scopeflow_lab.sim.optical import CameraConfig, ChipConfig, FlakeChipSource, OpticalConfig

    config = OpticalConfig(
        chip=ChipConfig(oxide_nm=oxide_nm, flakes_per_mm2=250.0),
        camera=CameraConfig(shape=(600, 960)),
    )
    return list(FlakeChipSource(config, seed=seed).images(n))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("285", 285.0), (" 90 ", 90.0), ("270-300", (270.0, 300.0)), ("auto", (60.0, 340.0))],
)
def test_oxide_option_values(text: str, expected: object) -> None:
    assert fp.parse_oxide(text) == expected


@pytest.mark.parametrize("text", ["", "thin", "20", "400", "300-270", "90-"])
def test_oxide_option_refuses_what_it_cannot_use(text: str) -> None:
    with pytest.raises(ValueError, match="--oxide-nm takes"):
        fp.parse_oxide(text)


def test_the_prior_knows_the_textbook_monolayer_contrast() -> None:
    # Blake et al. 2007, Fig. 1: on 285–300 nm SiO₂ monolayer graphene is ~ −0.1 in green-ish
    # light and near 0 in blue; on 90 nm it is ~ −0.1 across the visible. Every setup of the
    # ensemble must agree in sign and rough size.
    table = fp.contrast_table((90.0, 300.0))
    one = table.contrast["graphene_1L"][:, 0]  # (setups, oxides, 3)
    at_90, at_300 = one[:, 0], one[:, 1]
    assert np.all(at_90 < -0.03) and np.all(at_90 > -0.3)
    assert np.all(at_300[:, 0] < -0.03)  # red: dark
    assert np.all(np.abs(at_300[:, 2]) < 0.05)  # blue: next to invisible


def test_a_blurred_edge_is_not_a_monolayer() -> None:
    # A bilayer square (contrast −0.2) whose one-pixel edge the colour model calls a monolayer;
    # beside it a thin monolayer strip that stands alone, and a wide monolayer terrace that
    # touches the bilayer. Only the edge is dropped.
    k1, k2 = model.CLASSES.index("graphene_1L"), model.CLASSES.index("graphene_2L")
    class_map = np.zeros((60, 90), np.uint8)
    contrast = np.zeros((3, 60, 90), np.float32)
    class_map[10:30, 10:30] = k1  # the edge ring …
    class_map[11:29, 11:29] = k2  # … around the bilayer
    contrast[:, 10:30, 10:30] = -0.1
    contrast[:, 11:29, 11:29] = -0.2
    class_map[40:43, 5:45] = k1  # a lone strip, 3 px wide
    contrast[:, 40:43, 5:45] = -0.1
    class_map[10:30, 30:60] = k1  # a terrace 30 px wide beside the bilayer
    contrast[:, 10:30, 30:60] = -0.1
    probs = np.zeros((len(model.CLASSES), 60, 90), np.float32)
    for k in (0, k1, k2):
        probs[k][class_map == k] = 1.0
    comps = model.components(probs, class_map, (k1,), 4, 0.0)
    verdicts = sorted((c.bbox, model.is_rim(c, class_map, contrast)) for c in comps)
    # The ring and the terrace touch, so they are one component: wide, so kept. Draw the
    # terrace apart to see the ring alone.
    assert all(not rim for _, rim in verdicts)
    class_map[10:30, 30:31] = 0
    comps = model.components(probs, class_map, (k1,), 4, 0.0)
    rims = {c.bbox: model.is_rim(c, class_map, contrast) for c in comps}
    assert rims[(10, 10, 20, 20)] is True  # the ring: x, y, w, h
    assert rims[(5, 40, 40, 3)] is False  # the lone strip
    assert rims[(31, 10, 29, 20)] is False  # the terrace


def test_a_tile_half_over_the_holder_keeps_its_substrate_at_zero() -> None:
    # Left half: the dark-brown holder beyond the chip edge; right half: a pink substrate
    # (dark in red, as 300 nm SiO₂ under a warm LED is) with vignetting. Per-channel modes would
    # take the holder's red and the substrate's blue and fit nothing.
    h, w = 600, 960
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1.0 - 0.3 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2)
    frame = np.empty((h, w, 3), np.float32)
    frame[:] = np.array([0.09, 0.13, 0.33]) * 0.9  # substrate, fraction of full scale
    frame[:, : w // 2] = np.array([0.045, 0.035, 0.015])  # holder
    frame *= vignette[..., None]
    rng = np.random.default_rng(0)
    frame8 = np.clip(frame * 255 + rng.normal(0, 1.0, frame.shape), 0, 255).astype(np.uint8)
    contrast = model.flake_contrast(frame8, factor=2)
    right = contrast[:, :, contrast.shape[2] // 2 + 10 :]
    assert np.all(np.abs(np.median(right, axis=(1, 2))) < 0.03)
    left = contrast[:, :, : contrast.shape[2] // 2 - 10]
    assert np.all(np.abs(left) < 1e-6)  # the holder is shown as bare substrate, not a flake


@pytest.fixture(scope="module")
def session():
    from scopeflow.inference import backends

    return backends.load(model.NAME, "onnxruntime")


def test_the_oxide_is_found_from_the_chips_own_flakes(session) -> None:
    det = model.FlakeDetector(session, materials=("graphene", "hBN"), oxide=fp.parse_oxide("auto"))
    truth_1l = found_1l = calibrated = 0
    for image in _tiles(HELD_OUT_OXIDE_NM, 6, seed=9411):
        found = det.detect(image.image)
        ones = [d for d in found if d.attributes["class"] == "graphene_1L"]
        for obj in image.objects:
            a = obj.attributes
            if a["material"] == "graphene" and a["layers"] == 1 and obj.mask.sum() >= 400:
                truth_1l += 1
                r, c = np.argwhere(obj.mask).mean(axis=0)
                found_1l += any(
                    d.bbox_xywh_px[0] <= c <= d.bbox_xywh_px[0] + d.bbox_xywh_px[2]
                    and d.bbox_xywh_px[1] <= r <= d.bbox_xywh_px[1] + d.bbox_xywh_px[3]
                    for d in ones
                )
        calibrated += sum(d.attributes.get("oxide_nm") is not None for d in found)
    est = det.self_calibration.estimate
    assert est is not None and est.flakes >= fp.MIN_VOTING_FLAKES
    assert abs(est.oxide_nm - HELD_OUT_OXIDE_NM) <= 12.0, est
    assert truth_1l >= 1, "the tiles hold monolayers"
    assert found_1l >= truth_1l - 1, (found_1l, truth_1l)
    assert calibrated > 0, "detections record the oxide their calibration assumed"


def test_calibrate_from_physics_then_a_search_that_uses_it(tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i, image in enumerate(_tiles(245.0, 4, seed=9423)):
        cv2.imwrite(str(tiles / f"t{i}.png"), image.image[..., ::-1])
    cal_dir = tmp_path / "cal"
    pngs = sorted(map(str, tiles.glob("*.png")))
    both = scopeflow_cli(
        "calibrate", "flake-detector", *pngs, "--labels", "x.json", "--oxide-nm", "auto",
        "--out", str(cal_dir),
    )  # fmt: skip
    assert both.returncode == 2 and "either --labels" in both.stderr
    run = scopeflow_cli(
        "calibrate", "flake-detector", *pngs, "--oxide-nm", "auto",
        "--materials", "graphene,hBN", "--out", str(cal_dir),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads((cal_dir / "calibration.json").read_text())
    physics = doc["report"]["physics"]
    assert abs(physics["oxide_nm"] - 245.0) <= 12.0, physics
    assert "components" in doc["classes"]["graphene_1L"]  # a mixture over setups
    assert doc["id"] in run.stdout and "oxide" in run.stdout

    from scopeflow.inference.models.flake_calibration import FlakeCalibration

    assert FlakeCalibration.load(cal_dir).id == doc["id"]  # the mixture survives the file
    doc["classes"]["graphene_1L"]["weights"][0] *= 2
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="edited"):
        FlakeCalibration.load(tmp_path / "edited.json")

    out = tmp_path / "search"
    search = scopeflow_cli(
        "run", "flake-search", "--scope", "sim:optical,settle_s=0",
        "--region=-300,-200,300,200", "--focus-grid", "1", "--oxide-nm", "285",
        "--materials", "graphene,hBN", "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert search.returncode == 0, search.stderr
    catalog = json.loads((out / "catalog.json").read_text())
    assert catalog["flakes"], "the region holds flakes on this chip"
    assert all(f["calibration_id"].startswith("cal-") for f in catalog["flakes"])
    assert {f["oxide_nm"] for f in catalog["flakes"]} == {285.0}  # the oxide it was told


def test_oxide_and_calibration_together_are_refused_before_anything_moves(
    tmp_path: Path,
) -> None:
    out = tmp_path / "search"
    run = scopeflow_cli(
        "run", "flake-search", "--scope", "sim:optical", "--region=-100,-100,100,100",
        "--oxide-nm", "auto", "--calibration", str(tmp_path), "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 2 and "not both" in run.stderr
    bad = scopeflow_cli(
        "run", "flake-search", "--scope", "sim:optical", "--region=-100,-100,100,100",
        "--oxide-nm", "thick", "--out", str(out),
    )  # fmt: skip
    assert bad.returncode == 2 and "--oxide-nm takes" in bad.stderr
    assert not (out / "progress.json").exists()
