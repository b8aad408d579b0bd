"""Dataset writing: COCO annotations with RLE masks, images on disk, metadata, contact sheet."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scopeflow_lab.datasets import contact_sheet
from scopeflow_lab.datasets.coco import CocoBuilder, decode_mask
from scopeflow_lab.datasets.writer import load_image, write_dataset
from scopeflow_lab.sim.sem.dataset import SEMDatasetConfig, SEMFocusSource
from scopeflow_lab.sim.truth import AnnotatedImage, ObjectTruth


def disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_coco_annotations_round_trip_masks_boxes_areas_and_tracks():
    shape = (40, 60)
    coco = CocoBuilder("test")
    for frame in range(3):
        a = disk(shape, (10, 10 + 5 * frame), 4)
        b = np.zeros(shape, bool)
        b[20:30, 40:52] = True
        coco.add(
            AnnotatedImage(
                np.zeros(shape, np.uint16),
                [
                    ObjectTruth("particle", a, {"track_id": 1}),
                    ObjectTruth("decoy", b, {"track_id": 2, "speed": 9.5}),
                    ObjectTruth("particle", np.zeros(shape, bool), {"track_id": 3}),  # out of view
                ],
                {"frame_index": frame},
            ),
            f"images/{frame:06d}.tif",
        )
    doc = json.loads(json.dumps(coco.to_dict()))  # what lands on disk
    assert [c["name"] for c in doc["categories"]] == ["particle", "decoy"]
    assert len(doc["annotations"]) == 6  # empty masks are not annotated
    first = doc["annotations"][0]
    np.testing.assert_array_equal(decode_mask(first), disk(shape, (10, 10), 4))
    assert first["area"] == disk(shape, (10, 10), 4).sum()
    box = doc["annotations"][1]
    assert box["bbox"] == [40.0, 20.0, 12.0, 10.0] and box["area"] == 120.0
    assert box["speed"] == 9.5 and doc["images"][2]["frame_index"] == 2
    tracks = {t["track_id"]: t for t in doc["tracks"]}
    assert sorted(tracks) == [1, 2]
    assert [f["image_id"] for f in tracks[1]["frames"]] == [0, 1, 2]
    xs = [f["centroid_xy_px"][0] for f in tracks[1]["frames"]]
    assert xs == pytest.approx([10.5, 15.5, 20.5])  # bbox centre: pixel edges, +0.5


def test_coco_refuses_masks_of_the_wrong_shape_and_reserved_keys():
    coco = CocoBuilder("test")
    with pytest.raises(ValueError, match="mask of shape"):
        coco.add(
            AnnotatedImage(np.zeros((4, 4), np.uint8), [ObjectTruth("x", np.ones((3, 4), bool))]),
            "a.png",
        )
    with pytest.raises(ValueError, match="COCO keys"):
        coco.add(
            AnnotatedImage(
                np.zeros((4, 4), np.uint8), [ObjectTruth("x", np.ones((4, 4), bool), {"bbox": 1})]
            ),
            "b.png",
        )


def small_sem(seed: int, ideal: bool = False) -> SEMFocusSource:
    return SEMFocusSource(seed=seed, ideal=ideal, config=SEMDatasetConfig(frame_size=128))


def test_sem_dataset_on_disk_matches_the_source_and_is_deterministic(tmp_path):
    summary = write_dataset(small_sem(4), 3, tmp_path / "a", progress=lambda _: None)
    assert summary["images"] == 3
    doc = json.loads((tmp_path / "a" / "annotations.json").read_text())
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["seed"] == 4 and meta["source"] == "sem" and meta["ideal"] is False
    assert (tmp_path / "a" / "contact_sheet.png").stat().st_size > 1000
    again = list(small_sem(4).images(3))
    for entry, sample in zip(doc["images"], again, strict=True):
        image = load_image(tmp_path / "a" / entry["file_name"])
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, sample.image)
        assert entry["defocus_um"] == pytest.approx(entry["defocus_dof"] * entry["dof_um"])
    other = next(iter(small_sem(5).images(1))).image
    assert not np.array_equal(other, again[0].image)


def test_ideal_sem_frames_are_noise_free_and_in_focus():
    a = next(iter(small_sem(7, ideal=True).images(1)))
    b = next(iter(small_sem(7, ideal=True).images(1)))
    assert a.attributes["defocus_dof"] == 0.0 and a.attributes["astigmatism_um"] == 0.0
    np.testing.assert_array_equal(a.image, b.image)
    noisy = next(iter(small_sem(7).images(1)))
    # Same field and dose: the ideal frame is the expectation the noisy one scatters around.
    assert abs(float(a.image.mean()) / float(noisy.image.mean()) - 1) < 0.1


def test_refuses_to_overwrite_a_dataset(tmp_path):
    write_dataset(small_sem(1), 1, tmp_path, progress=lambda _: None)
    with pytest.raises(FileExistsError):
        write_dataset(small_sem(1), 1, tmp_path, progress=lambda _: None)


def test_contact_sheet_draws_outlines_in_category_colours():
    image = np.full((200, 300, 3), 90, np.uint8)
    mask = np.zeros((200, 300), bool)
    mask[50:150, 100:200] = True
    sheet = contact_sheet.render([AnnotatedImage(image, [ObjectTruth("graphene", mask)])])
    first_colour = np.array(contact_sheet.PALETTE[0], np.uint8)
    assert np.all(sheet == first_colour, axis=2).sum() > 100  # the outline is drawn


def test_simulate_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "sem"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "scopeflow",
            "simulate",
            "sem",
            "--n",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    for name in ("annotations.json", "metadata.json", "contact_sheet.png"):
        assert (out / name).exists()
    assert len(list((out / "images").glob("*.tif"))) == 2


def _ring(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    import cv2

    k = lambda r: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))  # noqa: E731
    m = mask.astype(np.uint8)
    return cv2.dilate(m, k(outer)).astype(bool) & ~cv2.dilate(m, k(inner)).astype(bool)


def test_ideal_flake_dataset_on_disk_shows_the_predicted_contrast(tmp_path):
    """The acceptance check of issue 3, end to end: images and masks read back from disk."""
    import cv2

    from scopeflow_lab.datasets.sources import dataset_source

    write_dataset(
        dataset_source("flakes", seed=1, ideal=True), 4, tmp_path, progress=lambda _: None
    )
    doc = json.loads((tmp_path / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    checked = {"graphene": 0, "hBN": 0}
    for entry in doc["images"]:
        image = load_image(tmp_path / entry["file_name"]).astype(np.float64)
        anns = [a for a in doc["annotations"] if a["image_id"] == entry["id"]]
        anything = np.zeros(image.shape[:2], bool)
        for a in anns:
            anything |= decode_mask(a)
        for a in anns:
            mask = decode_mask(a)
            core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            background = _ring(mask, 4, 25) & ~anything
            if names[a["category_id"]] not in checked or min(core.sum(), background.sum()) < 200:
                continue  # flakes with room to measure
            if a.get("truncated") or a.get("kind") != "flake":
                continue
            measured = image[core].mean(axis=0) / image[background].mean(axis=0) - 1
            assert measured == pytest.approx(a["expected_contrast_rgb"], abs=0.01), a["id"]
            checked[names[a["category_id"]]] += 1
    assert checked["graphene"] >= 3 and checked["hBN"] >= 1, checked


@pytest.mark.parametrize(("kind", "n"), [("flakes", 2), ("insitu", 3)])
def test_datasets_are_deterministic_under_a_seed(tmp_path, kind, n):
    from scopeflow_lab.datasets.sources import dataset_source

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_dataset(
            dataset_source(kind, seed=seed, ideal=False),
            n,
            tmp_path / name,
            progress=lambda _: None,
        )
    docs = {name: json.loads((tmp_path / name / "annotations.json").read_text()) for name in "abc"}
    assert docs["a"] == docs["b"]
    assert docs["a"] != docs["c"]
    for entry in docs["a"]["images"]:
        np.testing.assert_array_equal(
            load_image(tmp_path / "a" / entry["file_name"]),
            load_image(tmp_path / "b" / entry["file_name"]),
        )
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["seed"] == 5 and meta["source"] == kind


def test_same_seed_gives_identical_files_across_processes(tmp_path):
    # Separate processes: catches library state that differs on first use (it did once).
    for name in ("a", "b"):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "scopeflow",
                "simulate",
                "sem",
                "--n",
                "6",
                "--seed",
                "4",
                "--ideal",
                "--out",
                str(tmp_path / name),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
    files = sorted((tmp_path / "a" / "images").iterdir())
    assert len(files) == 6
    for f in files:
        assert f.read_bytes() == (tmp_path / "b" / "images" / f.name).read_bytes(), f.name
    assert (tmp_path / "a" / "annotations.json").read_text() == (
        tmp_path / "b" / "annotations.json"
    ).read_text()
