"""Ground truth that simulators hand to dataset writers and tests.

A simulator that can produce a dataset implements :class:`DatasetSource`: it yields
:class:`AnnotatedImage` objects (the image plus every object in it with a mask and attributes) and
reports the physical parameters it used. The dataset writer (``scopeflow simulate``) turns them
into image files, COCO annotations and ``metadata.json`` without knowing which simulator made them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ObjectTruth:
    """One object in an image.

    ``category`` names its class (e.g. ``"graphene"``, ``"hBN"``, ``"residue"``, ``"particle"``,
    ``"decoy"``); ``mask`` is a boolean array of the image's height × width; ``attributes`` holds
    JSON-serialisable extras written into the COCO annotation as they are (e.g. ``material``,
    ``layers``, ``expected_contrast_rgb``, ``track_id``, ``thickness_nm``).
    """

    category: str
    mask: np.ndarray
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnnotatedImage:
    """An image with its ground truth.

    ``image`` is (H, W) or (H, W, 3) RGB, uint8 or uint16. ``attributes`` holds JSON-serialisable
    per-image truth (e.g. ``defocus_um``, stage position, ``frame_index``, ``time_s``).
    """

    image: np.ndarray
    objects: list[ObjectTruth]
    attributes: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class DatasetSource(Protocol):
    """A simulator that can write a dataset; deterministic under the seed it was built with."""

    name: str

    def metadata(self) -> dict[str, Any]:
        """Every physical parameter used (units in the keys), JSON-serialisable, seed included."""

    def images(self, n: int) -> Iterator[AnnotatedImage]:
        """``n`` annotated images (for video sources: ``n`` consecutive frames)."""
