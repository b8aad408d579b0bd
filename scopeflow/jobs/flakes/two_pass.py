"""Two-pass search: candidates from a low-magnification overview, confirmation tiles for them.

The overview's catalog entries chosen by ``--candidates`` (a :mod:`.select` expression over the
catalog fields, with each class probability as ``p_<class>`` beside them) are grouped so that
one confirmation tile at the search objective covers every candidate of a group: candidates are
taken in a serpentine order (bands one field high, alternate bands right to left) and each joins
the first open group whose union of boxes, with ``margin`` of the field kept free on every side,
still fits in the field. The margin absorbs the overview's position error (its pixels are 2–4×
larger) and keeps a flake off the confirmation tile's edge, where it would be cut.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from scopeflow.jobs.flakes.catalog import FlakeEntry
from scopeflow.jobs.flakes.select import matches
from scopeflow.jobs.flakes.tiles import TileGeometry
from scopeflow.schemas.state import Limits

MARGIN = 0.15  # of the field, each side: kept free around a group of candidates


def entry_fields(entry: FlakeEntry, names: Iterable[str] = ()) -> dict[str, Any]:
    """An entry's fields as ``--candidates`` sees them: the catalog fields plus ``p_<class>``
    for each class probability (``p_graphene_1L >= 0.2``); any of ``names`` the entry lacks is
    None (a comparison with None is false: not selected)."""
    fields: dict[str, Any] = dict.fromkeys(names)
    fields.update(asdict(entry))
    for name, p in entry.class_probabilities.items():
        fields[f"p_{name}"] = p
    return fields


def select_candidates(
    entries: list[FlakeEntry], tree: ast.Expression, names: Iterable[str] = ()
) -> list[FlakeEntry]:
    """The overview entries the compiled ``--candidates`` expression (over ``names``) keeps."""
    return [e for e in entries if matches(tree, entry_fields(e, names))]


def confirmation_tiles(
    candidates: list[FlakeEntry],
    geometry: TileGeometry,
    limits: Limits,
    margin: float = MARGIN,
) -> list[tuple[float, float]]:
    """Centres of the confirmation tiles (stage µm, inside the stage limits), in serpentine
    order, one per group of candidates that fits one field (see the module docstring). A
    candidate larger than the free part of the field gets a tile of its own, centred on it."""
    free_w = geometry.width_um * (1 - 2 * margin)
    free_h = geometry.height_um * (1 - 2 * margin)
    band = geometry.height_um

    def order(e: FlakeEntry) -> tuple[int, float]:
        row = int((e.y_um - min(c.y_um for c in candidates)) // band)
        return row, (e.x_um if row % 2 == 0 else -e.x_um)

    groups: list[list[float]] = []  # union boxes x0, y0, x1, y1
    for e in sorted(candidates, key=order):
        x0, y0, x1, y1 = e.bbox_um
        for box in groups:
            ux0, uy0 = min(box[0], x0), min(box[1], y0)
            ux1, uy1 = max(box[2], x1), max(box[3], y1)
            if ux1 - ux0 <= free_w and uy1 - uy0 <= free_h:
                box[:] = [ux0, uy0, ux1, uy1]
                break
        else:
            groups.append([x0, y0, x1, y1])
    centres = []
    for x0, y0, x1, y1 in groups:
        x = min(max((x0 + x1) / 2, limits.stage_x_min_um), limits.stage_x_max_um)
        y = min(max((y0 + y1) / 2, limits.stage_y_min_um), limits.stage_y_max_um)
        centres.append((x, y))
    return centres
