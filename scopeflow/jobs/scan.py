"""The ``scan`` job: visit a grid of stage positions, focus at each, take a frame.

Positions come from a useq-schema grid plan (``GridRowsColumns`` by default, serpentine,
centred on where the stage stands; ``GridFromEdges`` or any plan with absolute positions is
taken as is), so a scan is described the way Micro-Manager users already describe one. At each
tile the job runs the autofocus job (unless told not to) and, when other result kinds are asked
for (``detections``), takes one more frame at focus and records its results. A tile whose
autofocus fails is recorded with its reason and the scan goes on.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scopeflow.errors import ScopeflowError
from scopeflow.jobs.autofocus import AutofocusJob, AutofocusJobConfig
from scopeflow.jobs.base import (
    JobOutcome,
    JobPlan,
    JobStopped,
    MoveStage,
    Progress,
    Snap,
    failure_reason,
)
from scopeflow.scopes.base import ScopeStatus


@dataclass
class TileRecord:
    """One tile of a scan."""

    index: int
    x_um: float
    y_um: float
    autofocus: str | None  # its stop reason; None when not focused
    wd_um: float | None
    final_error_dof: float | None  # from ground truth, simulators only
    detections: int | None = None
    frames: int = 0


@dataclass
class ScanRecord:
    tiles: list[TileRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_positions(plan: Any, centre: tuple[float, float]) -> list[tuple[float, float]]:
    """Absolute (x, y) µm of every point of a useq-schema grid plan (relative points are taken
    around ``centre``), or of every distinct stage position of an ``MDASequence`` in its order
    (absolute, as pymmcore-plus would visit them)."""
    import useq

    if isinstance(plan, useq.MDASequence):
        seen = {(e.x_pos, e.y_pos): None for e in plan if e.x_pos is not None}
        if not seen:
            raise ValueError("the MDASequence visits no stage positions")
        return [(float(x), float(y if y is not None else centre[1])) for x, y in seen]
    points = []
    for p in plan:
        dx, dy = centre if p.is_relative else (0.0, 0.0)
        points.append((float(p.x) + dx, float(p.y) + dy))
    return points


class ScanJob:
    """Tile a grid of stage positions: autofocus and a frame at each."""

    name = "scan"

    def __init__(
        self,
        grid: Any,
        *,
        autofocus: AutofocusJobConfig | None = None,
        focus_each_tile: bool = True,
        kinds: tuple[str, ...] = ("focus",),
    ) -> None:
        self.grid = grid
        self.autofocus = autofocus
        self.focus_each_tile = focus_each_tile
        self.needs = tuple(dict.fromkeys(("focus", *kinds)))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rows", type=int, default=3)
        parser.add_argument("--cols", type=int, default=3)
        parser.add_argument(
            "--step-um", type=float, default=1000.0, help="distance between tile centres, µm"
        )
        parser.add_argument(
            "--plan",
            type=Path,
            default=None,
            help="a useq-schema MDASequence (JSON or YAML) whose stage positions to visit, "
            "instead of --rows/--cols/--step-um",
        )
        parser.add_argument("--no-autofocus", action="store_true", help="image where Z stands")
        parser.add_argument(
            "--detect", action="store_true", help="also read detections of each tile's frame"
        )
        AutofocusJob.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScanJob:
        import useq

        if args.plan is not None:
            try:
                grid = useq.MDASequence.from_file(args.plan)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read the plan {args.plan}: {exc}") from None
        else:
            if args.rows < 1 or args.cols < 1:
                raise ValueError("--rows and --cols must be at least 1")
            if not args.step_um > 0:
                raise ValueError("--step-um must be positive")
            grid = useq.GridRowsColumns(
                rows=args.rows, columns=args.cols, fov_width=args.step_um, fov_height=args.step_um
            )
        return cls(
            grid,
            autofocus=AutofocusJob.config_from_args(args),
            focus_each_tile=not args.no_autofocus,
            kinds=("focus", "detections") if args.detect else ("focus",),
        )

    def plan(self, status: ScopeStatus) -> JobPlan:
        record = ScanRecord()
        state = status.state
        positions = grid_positions(self.grid, (state.stage_x_um, state.stage_y_um))
        reason, message = "done", ""
        try:
            for i, (x, y) in enumerate(positions):
                yield Progress(i, len(positions), "tiles")
                obs = yield MoveStage(x, y)
                tile = TileRecord(i, x, y, None, None, None)
                record.tiles.append(tile)
                if self.focus_each_tile:
                    focused = yield from AutofocusJob(self.autofocus).plan(obs.status)
                    tile.autofocus = focused.reason
                    tile.wd_um = focused.details.get("final_wd_um")
                    tile.final_error_dof = focused.figures.get("final_error_dof")
                    tile.frames = focused.figures.get("frames", 0)
                    if focused.reason in ("timeout", "device_error"):  # the scope is gone
                        raise JobStopped(focused.reason, focused.message)
                if not self.focus_each_tile or "detections" in self.needs:
                    obs = yield Snap(self.needs)
                    tile.frames += 1
                    found = obs.results.get("detections")
                    tile.detections = len(found.detections) if found is not None else None
            yield Progress(len(positions), len(positions), "tiles")
        except JobStopped as exc:
            reason, message = exc.reason, exc.message
        except ScopeflowError as exc:
            reason, message = failure_reason(exc), exc.reason
        focused = [t for t in record.tiles if t.autofocus == "converged"]
        done = reason == "done" and len(record.tiles) == len(positions)
        return JobOutcome(
            self.name,
            reason,
            done,
            message or f"{len(record.tiles)} of {len(positions)} tiles",
            figures={
                "tiles": len(record.tiles),
                "planned_tiles": len(positions),
                "tiles_focused": len(focused) if self.focus_each_tile else None,
                "frames": sum(t.frames for t in record.tiles),
            },
            details=record.to_dict(),
        )
