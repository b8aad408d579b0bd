"""The flake catalog: detections of every tile in stage coordinates, each flake once.

A flake on the overlap of two tiles is detected twice. Entries of the same material whose
stage-coordinate boxes overlap (IoU ≥ ``DUPLICATE_IOU``) are one flake, and so are two where one
view is cut by its frame's edge and lies mostly inside the other's box (intersection over the
smaller box ≥ ``CUT_CONTAINED``): a cut view is a part of the flake, so its box is small against
the whole one. The view kept is the one whole in its tile (not touching the frame's edge), else
the larger one. Sizes come from the
mask: area, and the sides of its minimum-area rectangle.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scopeflow.jobs.flakes.tiles import TileGeometry
from scopeflow.schemas.results import Detection

DUPLICATE_IOU = 0.3
CUT_CONTAINED = 0.5
EDGE_PX = 2  # a box this close to the frame's edge is cut by it


@dataclass
class FlakeEntry:
    """One flake of the catalog (units in the names; stage µm)."""

    id: int
    x_um: float
    y_um: float
    bbox_um: tuple[float, float, float, float]  # x0, y0, x1, y1
    area_um2: float
    min_side_um: float
    max_side_um: float
    aspect: float
    material: str
    layers: int | str | None
    flake_class: str
    score: float
    tile: int
    tile_x_um: float
    tile_y_um: float
    bbox_px: tuple[float, float, float, float]
    cut_by_edge: bool
    focus_score: float | None
    blurred: bool
    magnification: float | None
    pixel_size_um: float
    model: str
    time: str
    seen_in_tiles: list[int] = field(default_factory=list)
    class_probabilities: dict[str, float] = field(default_factory=dict)
    p_false_positive: float | None = None
    contrast_rgb: tuple[float, float, float] | None = None  # mean, against the substrate
    contrast_rgb_std: tuple[float, float, float] | None = None
    calibration_id: str = ""  # the detector's setup calibration ("" when uncalibrated)
    oxide_nm: float | None = None  # the SiO₂ thickness the physics prior assumed (None: none)
    flat_field_id: str = ""  # the flat field its thumbnail was corrected with ("": not yet)

    def row(self) -> dict[str, Any]:
        """A flat dict for the CSV."""
        d = asdict(self)
        x0, y0, x1, y1 = d.pop("bbox_um")
        d.update(bbox_x0_um=x0, bbox_y0_um=y0, bbox_x1_um=x1, bbox_y1_um=y1)
        d.pop("bbox_px")
        d["seen_in_tiles"] = " ".join(str(t) for t in d["seen_in_tiles"])
        d["class_probabilities"] = json.dumps(d["class_probabilities"])
        for key in ("contrast_rgb", "contrast_rgb_std"):
            d[key] = "" if d[key] is None else " ".join(f"{v:.4f}" for v in d[key])
        return d


CSV_FIELDS = [
    *(f.name for f in fields(FlakeEntry) if f.name not in ("bbox_um", "bbox_px")),
    "bbox_x0_um",
    "bbox_y0_um",
    "bbox_x1_um",
    "bbox_y1_um",
]


def _mask_sides(det: Detection, pixel_um: float) -> tuple[float, float]:
    """(min, max) side of the mask's minimum-area rectangle, µm (bbox sides without a mask)."""
    if det.mask is None:
        w, h = det.bbox_xywh_px[2:]
        return min(w, h) * pixel_um, max(w, h) * pixel_um
    from pycocotools import mask as mask_utils

    rle = {"size": list(det.mask.size), "counts": det.mask.counts.encode()}
    ys, xs = np.nonzero(mask_utils.decode(rle))
    (_, _), (w, h), _ = cv2.minAreaRect(np.stack([xs, ys], axis=1).astype(np.float32))
    return (min(w, h) + 1) * pixel_um, (max(w, h) + 1) * pixel_um


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _triple(attrs: dict[str, Any], suffix: str) -> tuple[float, float, float] | None:
    values = [attrs.get(f"contrast_{c}{suffix}") for c in "rgb"]
    if not all(isinstance(v, (int, float)) for v in values):
        return None
    return (float(values[0]), float(values[1]), float(values[2]))  # type: ignore[arg-type]


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
    """(intersection over union, intersection over the smaller box) of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    smaller = min(area_a, area_b)
    return (inter / union if union > 0 else 0.0), (inter / smaller if smaller > 0 else 0.0)


def same_flake(a: FlakeEntry, b: FlakeEntry) -> bool:
    """Two views of one flake (see the module docstring)."""
    if a.material != b.material:
        return False
    iou, contained = _overlaps(a.bbox_um, b.bbox_um)
    return iou >= DUPLICATE_IOU or ((a.cut_by_edge or b.cut_by_edge) and contained >= CUT_CONTAINED)


class Catalog:
    """Flakes in stage coordinates, deduplicated as tiles are added."""

    def __init__(self) -> None:
        self.entries: list[FlakeEntry] = []
        self.duplicates_merged = 0
        self._next_id = 1

    def add_tile(
        self,
        detections: list[Detection],
        *,
        tile: int,
        centre: tuple[float, float],
        geometry: TileGeometry,
        focus_score: float | None,
        blurred: bool,
        magnification: float | None,
        model: str,
        time: str,
    ) -> int:
        """Add one tile's detections; the number of new flakes (the rest were duplicates)."""
        new = 0
        p = geometry.pixel_um
        for det in detections:
            x, y, w, h = det.bbox_xywh_px
            (bx0, by0), (bx1, by1) = (
                geometry.to_stage(x - 0.5, y - 0.5, centre),
                geometry.to_stage(x + w - 0.5, y + h - 0.5, centre),
            )
            cx, cy = geometry.to_stage(*det.centroid_xy_px, centre)
            lo, hi = _mask_sides(det, p)
            cut = (
                x <= EDGE_PX
                or y <= EDGE_PX
                or x + w >= geometry.cols - EDGE_PX
                or y + h >= geometry.rows - EDGE_PX
            )
            attrs = det.attributes
            entry = FlakeEntry(
                id=0,
                x_um=cx,
                y_um=cy,
                bbox_um=(bx0, by0, bx1, by1),
                area_um2=det.area_px * p * p,
                min_side_um=lo,
                max_side_um=hi,
                aspect=hi / lo if lo > 0 else math.inf,
                material=str(attrs.get("material", det.category)),
                layers=attrs.get("layers"),  # type: ignore[arg-type]
                flake_class=str(attrs.get("class", det.category)),
                score=det.score,
                tile=tile,
                tile_x_um=centre[0],
                tile_y_um=centre[1],
                bbox_px=(x, y, w, h),
                cut_by_edge=cut,
                focus_score=focus_score,
                blurred=blurred,
                magnification=magnification,
                pixel_size_um=p,
                model=model,
                time=time,
                seen_in_tiles=[tile],
                class_probabilities={
                    k[2:]: float(v)
                    for k, v in attrs.items()
                    if k.startswith("p_") and k != "p_false_positive"
                },
                p_false_positive=_float(attrs.get("p_false_positive")),
                contrast_rgb=_triple(attrs, ""),
                contrast_rgb_std=_triple(attrs, "_std"),
                calibration_id=str(attrs.get("calibration_id", "")),
                oxide_nm=_float(attrs.get("oxide_nm")),
            )
            new += self._merge(entry)
        return new

    def _merge(self, entry: FlakeEntry) -> int:
        for i, old in enumerate(self.entries):
            if not same_flake(old, entry):
                continue
            self.duplicates_merged += 1
            new_is_better = (old.cut_by_edge, -old.area_um2) > (entry.cut_by_edge, -entry.area_um2)
            if new_is_better:  # whole where the old view was cut, or larger: it replaces it
                entry.id, entry.seen_in_tiles = old.id, [*old.seen_in_tiles, entry.tile]
                self.entries[i] = entry
            else:
                old.seen_in_tiles.append(entry.tile)
            return 0
        entry.id = self._next_id
        self._next_id += 1
        self.entries.append(entry)
        return 1

    def new_entries_of(self, tile: int) -> list[FlakeEntry]:
        """Entries whose kept view comes from ``tile`` (new flakes, or better views)."""
        return [e for e in self.entries if e.tile == tile]

    def state(self) -> dict[str, Any]:
        """Everything needed to carry on after an interruption (JSON-serialisable)."""
        return {
            "entries": [asdict(e) for e in self.entries],
            "duplicates_merged": self.duplicates_merged,
            "next_id": self._next_id,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Catalog:
        catalog = cls()
        for d in state["entries"]:
            catalog.entries.append(
                FlakeEntry(**{**d, "bbox_um": tuple(d["bbox_um"]), "bbox_px": tuple(d["bbox_px"])})
            )
        catalog.duplicates_merged = int(state["duplicates_merged"])
        catalog._next_id = int(state["next_id"])
        return catalog

    def write(self, out: Path, meta: dict[str, Any]) -> list[Path]:
        """``catalog.json`` (meta + entries) and ``catalog.csv`` (one row per flake)."""
        doc = {**meta, "flakes": [asdict(e) for e in self.entries]}
        json_path = out / "catalog.json"
        json_path.write_text(json.dumps(doc, indent=2))
        csv_path = out / "catalog.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(e.row() for e in self.entries)
        return [json_path, csv_path]
