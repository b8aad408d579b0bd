"""Tiles of a chip scan: where they go, and where a pixel of a tile lies on the stage.

Positions come from a useq-schema ``GridFromEdges`` plan (serpentine, overlap in percent of
the field), so a scan is described as Micro-Manager users describe one; tile centres are then
kept inside the stage limits. Pixel → stage: the camera's columns run along +x and its rows
along +y of the stage, the frame centre at the stage position (the simulated microscope's
convention; a camera mounted otherwise needs its flip or rotation stated, see docs).
"""

from __future__ import annotations

from dataclasses import dataclass

from scopeflow.errors import UsageError
from scopeflow.schemas.state import Limits


@dataclass(frozen=True)
class TileGeometry:
    """A frame's footprint on the stage."""

    rows: int
    cols: int
    pixel_um: float

    @property
    def width_um(self) -> float:
        return self.cols * self.pixel_um

    @property
    def height_um(self) -> float:
        return self.rows * self.pixel_um

    def to_stage(self, col: float, row: float, centre: tuple[float, float]) -> tuple[float, float]:
        """Stage (x, y) µm of pixel (col, row) of a frame taken at ``centre``."""
        return (
            centre[0] + (col - (self.cols - 1) / 2) * self.pixel_um,
            centre[1] + (row - (self.rows - 1) / 2) * self.pixel_um,
        )


def plan_tiles(
    region: tuple[float, float, float, float],
    geometry: TileGeometry,
    overlap: float,
    limits: Limits,
) -> list[tuple[float, float]]:
    """Serpentine tile centres covering ``region`` (x0, y0, x1, y1 µm) with ``overlap`` (a
    fraction of the field) between neighbours, inside the stage limits."""
    import useq

    x0, y0, x1, y1 = region
    if not (x1 > x0 and y1 > y0):
        raise UsageError(f"region {region} is empty: give X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0")
    if not 0.0 <= overlap < 0.5:
        raise UsageError(f"overlap {overlap:g} must be in [0, 0.5)")
    if (
        x1 < limits.stage_x_min_um
        or x0 > limits.stage_x_max_um
        or y1 < limits.stage_y_min_um
        or y0 > limits.stage_y_max_um
    ):
        raise UsageError(
            f"region {region} µm lies outside the stage limits x [{limits.stage_x_min_um:g}, "
            f"{limits.stage_x_max_um:g}], y [{limits.stage_y_min_um:g}, {limits.stage_y_max_um:g}]"
        )
    plan = useq.GridFromEdges(
        top=y1,
        left=x0,
        bottom=y0,
        right=x1,
        fov_width=geometry.width_um,
        fov_height=geometry.height_um,
        overlap=100.0 * overlap,
        mode="row_wise_snake",
    )
    centres: dict[tuple[float, float], None] = {}
    for p in plan:
        x = min(max(float(p.x), limits.stage_x_min_um), limits.stage_x_max_um)
        y = min(max(float(p.y), limits.stage_y_min_um), limits.stage_y_max_um)
        centres[(round(x, 6), round(y, 6))] = None
    return list(centres)
