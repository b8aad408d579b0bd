"""What a flake search leaves beside the catalog: a thumbnail per flake, the detections as COCO
(RLE masks per tile, in the tile's pixels, with stage positions), and a self-contained HTML chip
map whose flakes can be clicked."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scopeflow.jobs.flakes.catalog import Catalog, FlakeEntry
from scopeflow.schemas.results import Detection

THUMB_MARGIN = 0.5  # of the flake's box size, each side
THUMB_MIN_PX = 64


def thumbnail(pixels: np.ndarray, entry: FlakeEntry, path: Path) -> Path:
    """Crop the flake with a margin from its tile's RGB frame and write it as PNG."""
    x, y, w, h = entry.bbox_px
    mx, my = max(w * THUMB_MARGIN, THUMB_MIN_PX / 2), max(h * THUMB_MARGIN, THUMB_MIN_PX / 2)
    rows, cols = pixels.shape[:2]
    r0, r1 = int(max(0, y - my)), int(min(rows, y + h + my))
    c0, c1 = int(max(0, x - mx)), int(min(cols, x + w + mx))
    crop = np.ascontiguousarray(pixels[r0:r1, c0:c1])
    if crop.dtype != np.uint8:  # 16-bit cameras: scale to 8 bits for viewing
        crop = cv2.convertScaleAbs(crop, alpha=255.0 / max(float(crop.max()), 1.0))
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), crop)
    return path


class CocoTiles:
    """Detections of every tile as one COCO document (images = tiles)."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.categories: dict[str, int] = {}

    def add(
        self, tile: int, centre: tuple[float, float], shape: tuple[int, int], pixel_um: float,
        detections: list[Detection],
    ) -> None:  # fmt: skip
        self.images.append(
            {
                "id": tile,
                "file_name": f"tile-{tile:05d}",
                "height": shape[0],
                "width": shape[1],
                "stage_x_um": centre[0],
                "stage_y_um": centre[1],
                "pixel_size_um": pixel_um,
            }
        )
        for det in detections:
            name = str(det.attributes.get("class", det.category))
            cat = self.categories.setdefault(name, len(self.categories) + 1)
            ann: dict[str, Any] = {
                "id": len(self.annotations) + 1,
                "image_id": tile,
                "category_id": cat,
                "bbox": list(det.bbox_xywh_px),
                "area": det.area_px,
                "score": det.score,
                "iscrowd": 0,
                "attributes": det.attributes,
            }
            if det.mask is not None:
                ann["segmentation"] = {"size": list(det.mask.size), "counts": det.mask.counts}
            self.annotations.append(ann)

    def state(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CocoTiles:
        coco = cls()
        coco.images, coco.annotations = list(state["images"]), list(state["annotations"])
        coco.categories = dict(state["categories"])
        return coco

    def write(self, path: Path) -> Path:
        doc = {
            "info": {"description": "scopeflow flake search: detections per tile"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i, "name": n} for n, i in self.categories.items()],
        }
        path.write_text(json.dumps(doc))
        return path


def html_chip_map(
    path: Path, png: Path, catalog: Catalog, meta: dict[str, Any], extent: tuple[float, ...]
) -> Path:
    """A self-contained page: the scanned tiles (blurred ones red) and one clickable circle per
    flake, coloured by class (its thumbnail, size and stage position show on click), drawn in
    SVG in stage coordinates; the chip map picture below it."""
    x0, y0, x1, y1 = extent
    width = 900.0
    height = width * (y1 - y0) / max(x1 - x0, 1e-9)

    def sx(x: float) -> float:
        return (x - x0) / (x1 - x0) * width

    def sy(y: float) -> float:
        return (y1 - y) / (y1 - y0) * height  # SVG y runs down; stage y up

    shapes = []
    for t in meta["tiles"]:
        w, h = t["width_um"], t["height_um"]
        colour = "#c00" if t["blurred"] else "#bbb"
        shapes.append(
            f'<rect x="{sx(t["x_um"] - w / 2):.1f}" y="{sy(t["y_um"] + h / 2):.1f}" '
            f'width="{w / (x1 - x0) * width:.1f}" height="{h / (y1 - y0) * height:.1f}" '
            f'fill="none" stroke="{colour}" stroke-width="0.6"/>'
        )
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    classes = sorted({e.flake_class for e in catalog.entries})
    colour_of = {c: palette[i % len(palette)] for i, c in enumerate(classes)}
    legend = " ".join(
        f'<span style="color:{colour_of[c]}">&#9679; {html.escape(c)}</span>' for c in classes
    )
    circles = []
    for e in catalog.entries:
        cx, cy = sx(e.x_um), sy(e.y_um)
        info = {
            "id": e.id, "class": e.flake_class, "x_um": round(e.x_um, 1),
            "y_um": round(e.y_um, 1), "area_um2": round(e.area_um2, 1),
            "score": round(e.score, 3), "thumb": f"thumbs/flake-{e.id:05d}.png",
        }  # fmt: skip
        circles.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" class="flake" '
            f'style="fill:{colour_of[e.flake_class]}" '
            f"data-info='{html.escape(json.dumps(info), quote=True)}'>"
            f"<title>#{e.id} {html.escape(e.flake_class)}</title></circle>"
        )
    picture = base64.b64encode(png.read_bytes()).decode() if png.exists() else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>scopeflow chip map</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.flake {{ stroke: #000; stroke-width: 0.8; cursor: pointer; }}
.flake:hover {{ stroke-width: 2.5; }}
#info {{ margin-top: 1em; min-height: 6em; }}
</style></head><body>
<h1>{len(catalog.entries)} flakes on {len(meta["tiles"])} tiles</h1>
<p>Click a flake. Stage x runs right, y up; tiles outlined (red: blurred). {legend}</p>
<svg id="map" width="{width:.0f}" height="{height:.0f}" style="border:1px solid #999">
{"".join(shapes)}{"".join(circles)}
</svg>
<div id="info"></div>
<h2>Chip map</h2>
<img alt="chip map" style="max-width:100%" src="data:image/png;base64,{picture}">
<script>
for (const c of document.querySelectorAll('.flake')) {{
  c.addEventListener('click', () => {{
    const f = JSON.parse(c.dataset.info);
    document.getElementById('info').innerHTML =
      `<b>#${{f.id}} ${{f.class}}</b> at (${{f.x_um}}, ${{f.y_um}}) µm, ` +
      `${{f.area_um2}} µm², score ${{f.score}}<br><img src="${{f.thumb}}" height="200">`;
  }});
}}
</script></body></html>
"""
    path.write_text(page)
    return path
