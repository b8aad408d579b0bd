"""COCO annotations from annotated images (RLE masks via pycocotools).

Beyond the COCO fields (``segmentation`` as RLE, ``bbox`` [x, y, w, h], ``area``,
``category_id``, ``iscrowd``), each annotation carries the simulator's per-object attributes
(``material``, ``layers``, ``expected_contrast_rgb``, ``track_id``, …) as they are. When objects
carry a ``track_id``, a top-level ``tracks`` list gathers each track's frames in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from scopeflow_lab.sim.truth import AnnotatedImage

RESERVED = {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd"}


@dataclass
class CocoBuilder:
    """Accumulates images and annotations; :meth:`to_dict` gives the COCO document."""

    description: str
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)

    def add(self, sample: AnnotatedImage, file_name: str) -> int:
        """Add one image and its objects; returns the image id."""
        image_id = len(self.images)
        h, w = sample.image.shape[:2]
        clash = RESERVED & sample.attributes.keys()
        if clash:
            raise ValueError(f"image attributes may not use COCO keys {sorted(clash)}")
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": h, "width": w, **sample.attributes}
        )
        for obj in sample.objects:
            if obj.mask.shape != (h, w):
                raise ValueError(f"mask of shape {obj.mask.shape} on an image of {(h, w)}")
            if not obj.mask.any():
                continue  # an object wholly outside the image is not annotated
            clash = RESERVED & obj.attributes.keys()
            if clash:
                raise ValueError(f"object attributes may not use COCO keys {sorted(clash)}")
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            category_id = self.categories.setdefault(obj.category, len(self.categories) + 1)
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": {
                        "size": [int(s) for s in rle["size"]],
                        "counts": rle["counts"].decode("ascii"),
                    },
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                    **obj.attributes,
                }
            )
        return image_id

    def tracks(self) -> list[dict[str, Any]]:
        """Per ``track_id``: its category and, frame by frame, image id, bbox and centroid."""
        by_track: dict[int, dict[str, Any]] = {}
        names = {v: k for k, v in self.categories.items()}
        for ann in self.annotations:
            if "track_id" not in ann:
                continue
            track = by_track.setdefault(
                int(ann["track_id"]),
                {
                    "track_id": int(ann["track_id"]),
                    "category": names[ann["category_id"]],
                    "frames": [],
                },
            )
            x, y, w, h = ann["bbox"]
            entry = {"image_id": ann["image_id"], "annotation_id": ann["id"], "bbox": ann["bbox"]}
            entry["centroid_xy_px"] = ann.get("centroid_xy_px", [x + w / 2, y + h / 2])
            track["frames"].append(entry)
        for track in by_track.values():
            track["frames"].sort(key=lambda f: f["image_id"])
        return [by_track[k] for k in sorted(by_track)]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "info": {"description": self.description, "version": "1.0"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {"id": i, "name": n}
                for n, i in sorted(self.categories.items(), key=lambda kv: kv[1])
            ],
        }
        tracks = self.tracks()
        if tracks:
            doc["tracks"] = tracks
        return doc


def decode_mask(annotation: dict[str, Any]) -> np.ndarray:
    """The boolean mask of a COCO annotation written by :class:`CocoBuilder`."""
    seg = annotation["segmentation"]
    rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)
