"""``scopeflow calibrate flake-detector IMAGES... --labels COCO|--oxide-nm NM --out CAL``.

With ``--labels``: reads a handful of the user's tiles and their COCO labels, runs the shipped
detector on each, fits the per-class contrast models and the network's weight
(:mod:`scopeflow.inference.models.flake_calibration`). With ``--oxide-nm`` and no labels: the
physics prior (:mod:`scopeflow.inference.models.flake_physics`) estimates the oxide from the
flakes on the tiles (or takes the one given) and predicts each class's colours there. Either
way it writes ``CAL/calibration.json``; a job or an inference node uses it with
``--calibration CAL``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scopeflow.errors import UsageError

MAX_IMAGES = 50  # calibration is for a handful of tiles; more is a training set


def _read_image(path: Path, channel_order: str) -> np.ndarray:
    """An RGB image (8/16-bit) from a file OpenCV reads, or a .npy array in ``channel_order``."""
    if path.suffix.lower() == ".npy":
        pixels = np.load(path, allow_pickle=False)
        if channel_order == "BGR" and pixels.ndim == 3:
            pixels = pixels[..., ::-1]
    else:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise UsageError(f"{path}: not an image OpenCV can read")
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            pixels = pixels[..., :3]
        if pixels.ndim == 3:
            pixels = pixels[..., ::-1]  # OpenCV reads colour files as BGR
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise UsageError(f"{path}: need a colour (RGB) tile, got shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


def _annotation_mask(ann: dict[str, Any], h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):  # polygons
        rles = mask_utils.frPyObjects(seg, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, h, w)
    elif isinstance(seg, dict):
        counts = seg["counts"]
        rle = {
            "size": seg["size"],
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    else:
        raise ValueError("annotation without a segmentation (polygon or RLE)")
    return mask_utils.decode(rle).astype(bool)


def load_labels(
    coco_path: Path, images: list[Path]
) -> dict[str, list[tuple[str, dict[str, Any], Any]]]:
    """Per image file name: (category, attributes, annotation) of its labelled objects."""
    try:
        doc = json.loads(coco_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read the labels {coco_path}: {exc}") from None
    if not isinstance(doc, dict) or not {"images", "annotations", "categories"} <= doc.keys():
        raise UsageError(f"{coco_path} is not a COCO file (images, annotations, categories)")
    categories = {c["id"]: c["name"] for c in doc["categories"]}
    by_id = {im["id"]: Path(im["file_name"]).name for im in doc["images"]}
    wanted = {p.name for p in images}
    missing = wanted - set(by_id.values())
    if missing:
        raise UsageError(f"{coco_path} has no labels for {sorted(missing)}")
    out: dict[str, list[tuple[str, dict[str, Any], Any]]] = {name: [] for name in wanted}
    for ann in doc["annotations"]:
        name = by_id.get(ann["image_id"])
        if name in out:
            category = categories.get(ann["category_id"], "")
            attrs = {k: v for k, v in ann.items() if k not in ("segmentation",)}
            out[name].append((category, attrs, ann))
    return out


def calibrate_flake_detector(args: argparse.Namespace) -> int:
    """The command: fit and write a calibration; print what it learned."""
    from scopeflow.inference import backends
    from scopeflow.inference.models import flake_calibration as fc
    from scopeflow.inference.models.flake_detector import NAME, FlakeDetector

    images = [Path(p) for p in args.images]
    if not 1 <= len(images) <= MAX_IMAGES:
        raise UsageError(f"give 1–{MAX_IMAGES} images (3–10 is the usual)")
    for p in images:
        if not p.is_file():
            raise UsageError(f"no image file {p}")
    if (args.labels is None) == (args.oxide_nm is None):
        raise UsageError(
            "give either --labels COCO (fit to your labels) or --oxide-nm NM|LO-HI|auto "
            "(the physics prior, no labels)"
        )
    if args.oxide_nm is not None:
        return _calibrate_from_physics(args, images)
    labels = load_labels(Path(args.labels), images)
    detector = FlakeDetector(backends.load(NAME, args.backend))
    t0 = time.monotonic()
    tiles, skipped = [], []
    for i, path in enumerate(images, 1):
        frame = _read_image(path, args.channel_order)
        h, w = frame.shape[:2]
        objects = []
        for category, attrs, ann in labels[path.name]:
            cls = fc.class_name_for(category, attrs)
            if cls is None:
                skipped.append(f"{path.name}: {category or '?'} {attrs.get('layers', '')}")
                continue
            try:
                objects.append((cls, _annotation_mask(ann, h, w)))
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{path.name}: annotation {ann.get('id')}: {exc}") from None
        tiles.append(fc.labelled_tile(path.name, frame, objects, detector, args.pixel_size_nm))
        print(f"[{i}/{len(images)}] {path.name}: {len(objects)} labelled objects", flush=True)
    if skipped:
        print(
            f"  {len(skipped)} labels name no detector class and were left out, e.g. {skipped[0]}"
        )
    try:
        cal = fc.fit(tiles, progress=print)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cal.report["seconds"] = round(time.monotonic() - t0, 2)
    cal.report["pixel_size_nm"] = args.pixel_size_nm
    path = cal.save(Path(args.out))
    counts = ", ".join(f"{c} {g.flakes}" for c, g in cal.classes.items() if c != "background")
    print(f"calibration {cal.id}: classes {counts}; network weight {cal.net_weight:g}")
    print(f"wrote {path} ({cal.report['seconds']:.1f} s); use it with --calibration {args.out}")
    return 0


def _calibrate_from_physics(args: argparse.Namespace, images: list[Path]) -> int:
    """``--oxide-nm``: the physics prior's calibration from unlabelled tiles."""
    from scopeflow.inference import backends
    from scopeflow.inference.models import flake_physics as fp
    from scopeflow.inference.models.flake_detector import NAME, FlakeDetector, check_materials

    try:
        oxide = fp.parse_oxide(args.oxide_nm)
        materials = check_materials(args.materials.split(",")) if args.materials else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    detector = FlakeDetector(backends.load(NAME, args.backend), materials=materials, oxide=oxide)
    t0 = time.monotonic()
    for i, path in enumerate(images, 1):
        frame = _read_image(path, args.channel_order)
        found = detector.detect(frame, pixel_size_nm=args.pixel_size_nm)
        print(f"[{i}/{len(images)}] {path.name}: {len(found)} flakes", flush=True)
    state = detector.self_calibration
    cal = state.calibration
    if cal is None:
        raise UsageError(
            f"the tiles hold {len(state.colours)} flakes the detector could segment; the "
            f"oxide estimate needs at least {fp.MIN_VOTING_FLAKES}: give tiles with flakes"
        )
    cal.images = [p.name for p in images]
    cal.report["seconds"] = round(time.monotonic() - t0, 2)
    cal.report["pixel_size_nm"] = args.pixel_size_nm
    cal.report["materials"] = list(materials) if materials else None
    path = cal.save(Path(args.out))
    est = state.estimate
    if est is not None and est.range_nm[0] != est.range_nm[1]:
        print(
            f"oxide {est.oxide_nm:g} nm (within {est.range_nm[0]:g}–{est.range_nm[1]:g} nm "
            f"explains the {est.flakes} flakes almost as well)"
        )
    elif est is not None:
        print(f"oxide {est.oxide_nm:g} nm (given); setups chosen by {est.flakes} flakes")
    print(f"calibration {cal.id}: physics prior, network weight {cal.net_weight:g}")
    print(f"wrote {path} ({cal.report['seconds']:.1f} s); use it with --calibration {args.out}")
    return 0


def add_parser(sub: Any) -> None:
    """``scopeflow calibrate flake-detector``."""
    cal = sub.add_parser("calibrate", help="adapt a shipped model to your setup")
    kinds = cal.add_subparsers(dest="calibrate", required=True)
    fd = kinds.add_parser(
        "flake-detector",
        help="per-class contrast models for your chips, lamp and camera: from 3–10 labelled "
        "tiles (--labels), or from the physics of thin films and unlabelled tiles (--oxide-nm)",
    )
    fd.add_argument("images", nargs="+", help="tiles (PNG/TIFF, 8 or 16 bit, or .npy)")
    fd.add_argument("--labels", default=None, help="COCO file labelling those tiles")
    fd.add_argument(
        "--oxide-nm",
        default=None,
        metavar="NM|LO-HI|auto",
        help="no labels: the chip's SiO₂ thickness, a range to estimate it within, or auto",
    )
    fd.add_argument(
        "--materials",
        default=None,
        metavar="M1,M2",
        help="with --oxide-nm: the flake materials on the chip (default: any)",
    )
    fd.add_argument("--out", required=True, help="calibration folder to write")
    fd.add_argument(
        "--pixel-size-nm", type=float, default=None, help="tile pixel size (default: 20x camera)"
    )
    fd.add_argument(
        "--channel-order",
        choices=["RGB", "BGR"],
        default="RGB",
        help=".npy tiles: their channel order (image files are read as what they are)",
    )
    fd.add_argument("--backend", default="auto", help="inference backend")
    fd.set_defaults(func=calibrate_flake_detector)
