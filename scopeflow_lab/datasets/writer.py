"""Write a simulated dataset: ``images/``, ``annotations.json`` (COCO), ``metadata.json`` and
``contact_sheet.png``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from scopeflow import __version__
from scopeflow_lab.datasets import contact_sheet
from scopeflow_lab.datasets.coco import CocoBuilder
from scopeflow_lab.sim.truth import AnnotatedImage, DatasetSource


def save_image(image: np.ndarray, path_stem: Path, fmt: str) -> Path:
    """Save as 16/8-bit TIFF (tifffile) or PNG (OpenCV); RGB stays RGB on disk."""
    if fmt == "tiff":
        path = path_stem.with_suffix(".tif")
        tifffile.imwrite(path, image, photometric="rgb" if image.ndim == 3 else "minisblack")
    elif fmt == "png":
        path = path_stem.with_suffix(".png")
        data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        if not cv2.imwrite(str(path), data):
            raise OSError(f"could not write {path}")
    else:
        raise ValueError(f"unknown image format {fmt!r}: tiff or png")
    return path


def load_image(path: Path) -> np.ndarray:
    """Read an image written by :func:`save_image` back, as RGB or grey."""
    if path.suffix == ".tif":
        return tifffile.imread(path)
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise OSError(f"could not read {path}")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB) if data.ndim == 3 else data


def _caption(k: int, sample: AnnotatedImage) -> str:
    """Thumbnail caption: the index, and the defocus when the source records one."""
    defocus = sample.attributes.get("defocus_dof")
    return f"#{k}" if defocus is None else f"#{k}  {defocus:+.1f} DoF"


def write_dataset(
    source: DatasetSource,
    n: int,
    out: Path,
    *,
    fmt: str | None = None,
    run_info: dict[str, Any] | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write ``n`` images of ``source`` to ``out``; returns a summary (counts, paths, seconds).

    ``fmt`` is "tiff" or "png"; by default 16-bit images go to TIFF and 8-bit ones to PNG.
    Refuses a folder that already holds a dataset, so nothing is overwritten silently.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(out)
    if (out / "annotations.json").exists():
        raise FileExistsError(f"{out} already holds a dataset; choose another --out")
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco = CocoBuilder(description=f"scopeflow simulate {source.name}")
    shown: list[AnnotatedImage] = []
    t0 = time.monotonic()
    step = max(1, n // 10)
    for k, sample in enumerate(source.images(n)):
        kind = fmt or ("png" if sample.image.dtype == np.uint8 else "tiff")
        path = save_image(sample.image, out / "images" / f"{k:06d}", kind)
        coco.add(sample, f"images/{path.name}")
        if len(shown) < contact_sheet.MAX_TILES:
            shown.append(sample)
        if (k + 1) % step == 0 or k + 1 == n:
            progress(f"  {k + 1}/{n} images ({time.monotonic() - t0:.1f} s)")
    doc = coco.to_dict()
    (out / "annotations.json").write_text(json.dumps(doc))
    metadata = {
        "source": source.name,
        "images": n,
        "scopeflow_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(run_info or {}),
        **source.metadata(),
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    sheet = contact_sheet.render(shown, [_caption(k, s) for k, s in enumerate(shown)])
    cv2.imwrite(str(out / "contact_sheet.png"), sheet)
    return {
        "images": n,
        "annotations": len(doc["annotations"]),
        "categories": [c["name"] for c in doc["categories"]],
        "tracks": len(doc.get("tracks", [])),
        "seconds": time.monotonic() - t0,
        "out": str(out),
    }
