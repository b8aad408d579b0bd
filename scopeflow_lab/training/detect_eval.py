"""Scoring detections against truth, shared by training (held-out metrics in metrics.json) and
the benchmarks: one-to-one greedy mask matching by IoU, TP/FP/FN counts with ignored truths, and
the particle truths of a simulated in-situ frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scopeflow.schemas.results import Detection

IOU = 0.5


@dataclass
class Truth:
    """A true object: class name, COCO RLE (bytes counts), area, whether it is ignored."""

    name: str
    rle: dict
    area: int
    ignored: bool


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def report(self) -> dict[str, float | int]:
        p = self.tp / max(self.tp + self.fp, 1)
        r = self.tp / max(self.tp + self.fn, 1)
        f1 = 2 * p * r / max(p + r, 1e-12)
        return {
            "precision": p,
            "recall": r,
            "f1": f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "truths": self.tp + self.fn,
        }


def encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def rle_of(det: Detection) -> dict:
    assert det.mask is not None
    return {"size": list(det.mask.size), "counts": det.mask.counts.encode("ascii")}


def ious(preds: list[dict], truths: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if not preds or not truths:
        return np.zeros((len(preds), len(truths)))
    return np.asarray(mask_utils.iou(preds, truths, [0] * len(truths)), float)


def greedy_match(iou: np.ndarray, threshold: float = IOU) -> list[tuple[int, int]]:
    """One-to-one pairs (pred, truth) with IoU ≥ threshold, highest IoU first."""
    if iou.size == 0:
        return []
    order = np.argsort(-iou, axis=None, kind="stable")
    used_p, used_t, pairs = set(), set(), []
    for flat in order:
        p, t = divmod(int(flat), iou.shape[1])
        if iou[p, t] < threshold:
            break
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        pairs.append((p, t))
    return pairs


def count(pred_rles: list[dict], truths: list[Truth]) -> tuple[Counts, list[tuple[int, int]]]:
    """TP/FP/FN of one class in one frame; ignored truths neither count as missed nor make
    the predictions that match them false."""
    iou = ious(pred_rles, [t.rle for t in truths])
    valid = np.array([not t.ignored for t in truths], bool)
    valid_idx = np.flatnonzero(valid)
    pairs = [
        (p, int(valid_idx[t])) for p, t in greedy_match(iou[:, valid] if len(truths) else iou, IOU)
    ]
    matched = {p for p, _ in pairs}
    fp = 0
    for p in range(len(pred_rles)):
        if p in matched:
            continue
        if (~valid).any() and iou[p, ~valid].max() >= IOU:
            continue  # it found an ignored object
        fp += 1
    return Counts(len(pairs), fp, int(valid.sum()) - len(pairs)), pairs


PARTICLE_MIN_TRUTH_PX = 20  # ≈ 5 nm² at 0.5 nm/px: edge slivers


def particle_truths(image: Any) -> list[Truth]:
    found = []
    for obj in image.objects:
        if obj.category != "particle":
            continue
        area = int(obj.mask.sum())
        found.append(Truth("particle", encode(obj.mask), area, area < PARTICLE_MIN_TRUTH_PX))
    return found
