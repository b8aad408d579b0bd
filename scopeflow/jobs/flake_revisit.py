"""The ``flake-revisit`` job: drive back to catalogued flakes and image each one again.

It reads ``catalog.json`` of a flake search, keeps the flakes ``--select`` chooses, optionally
swings in another objective (``--objective 50x``), and for each flake: moves there (the same
one-way approach as the search), autofocuses, takes a frame with its detections, and writes the
frame as ``flake-NNNNN.png``. The detection nearest the expected position tells how far the
flake is from where the catalog put it: the revisit position error, reported per flake and as
median and maximum.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import median
from typing import Any

import cv2
import numpy as np

from scopeflow.errors import ScopeflowError, UsageError
from scopeflow.jobs.autofocus import AutofocusJob, AutofocusJobConfig
from scopeflow.jobs.base import (
    JobOutcome,
    JobPlan,
    Progress,
    SetObjective,
    Snap,
    failure_reason,
    move_one_way,
)
from scopeflow.jobs.flakes.select import compile_selection, matches
from scopeflow.jobs.flakes.tiles import TileGeometry
from scopeflow.scopes.base import ScopeStatus

FOUND_WITHIN_UM = 10.0  # a detection this close to the catalog position is the flake


def catalog_oxide_nm(flakes: list[dict[str, Any]]) -> float | None:
    """The oxide thickness the search's detector assumed: the median of its flakes' ``oxide_nm``
    (a search's estimate can move in its first tiles), or None when none recorded one."""
    values = []
    for f in flakes:
        try:
            value = float(f.get("oxide_nm"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            values.append(value)
    return float(median(values)) if values else None


class FlakeRevisitJob:
    """Drive back to selected flakes of a catalog, refocus, image each at high magnification."""

    name = "flake-revisit"
    needs = ("focus", "detections")
    default_focus_model = "tenengrad"  # as flake-search: AENet is an SEM model

    def __init__(
        self,
        flakes: list[dict[str, Any]],
        out_dir: Path,
        *,
        objective: str | None = None,
        autofocus: AutofocusJobConfig | None = None,
        approach_um: float = 10.0,
        oxide_nm: float | None = None,
    ) -> None:
        self.flakes = flakes
        #: the SiO₂ thickness the search's physics prior settled on (None: it had none); the
        #: command gives it to the detector, so a revisit of a few flakes need not estimate it
        self.oxide_nm = oxide_nm
        self.out_dir = Path(out_dir)
        self.objective = objective
        self.autofocus = autofocus or AutofocusJobConfig()
        self.approach_um = approach_um

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--catalog", type=Path, required=True, help="a search's catalog.json")
        parser.add_argument(
            "--select",
            default="True",
            help="which flakes, e.g. 'material==\"graphene\" and layers==1 and area_um2>=50'",
        )
        parser.add_argument("--objective", default=None, help="swing this objective in first")
        parser.add_argument("--approach-um", type=float, default=10.0)
        AutofocusJob.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FlakeRevisitJob:
        try:
            catalog = json.loads(args.catalog.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the catalog {args.catalog}: {exc}") from None
        flakes = catalog.get("flakes", [])
        fields = set(flakes[0]) if flakes else {"material", "layers", "area_um2"}
        tree = compile_selection(args.select, fields)
        chosen = [f for f in flakes if matches(tree, f)]
        if not chosen:
            raise UsageError(f"--select {args.select!r} chooses none of {len(flakes)} flakes")
        return cls(
            chosen,
            args.out,
            objective=args.objective,
            autofocus=AutofocusJob.config_from_args(args),
            approach_um=args.approach_um,
            oxide_nm=catalog_oxide_nm(flakes),
        )

    def plan(self, status: ScopeStatus) -> JobPlan:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        visits: list[dict[str, Any]] = []
        reason, message = "done", ""
        try:
            if self.objective is not None:
                status = (yield SetObjective(self.objective)).status
            for n, flake in enumerate(self.flakes):
                yield Progress(n, len(self.flakes), "flakes revisited")
                visits.append((yield from self._visit(flake, status)))
            yield Progress(len(self.flakes), len(self.flakes), "flakes revisited")
        except ScopeflowError as exc:
            reason, message = failure_reason(exc), exc.reason
        found = [v["position_error_um"] for v in visits if v["position_error_um"] is not None]
        (self.out_dir / "revisit.json").write_text(json.dumps({"visits": visits}, indent=2))
        return JobOutcome(
            self.name,
            reason,
            reason == "done" and len(found) == len(self.flakes),
            message or f"{len(found)} of {len(self.flakes)} flakes found again",
            figures={
                "selected": len(self.flakes),
                "visited": len(visits),
                "found": len(found),
                "position_error_um_median": median(found) if found else None,
                "position_error_um_max": max(found) if found else None,
            },
            details={"visits": visits, "objective": self.objective},
        )

    def _visit(self, flake: dict[str, Any], status: ScopeStatus) -> JobPlan:
        x, y = float(flake["x_um"]), float(flake["y_um"])
        obs = yield from move_one_way(x, y, status, self.approach_um)
        focused = yield from AutofocusJob(self.autofocus).plan(obs.status)
        obs = yield Snap(self.needs, pixels=True)
        found = obs.results["detections"]
        state = found.state
        visit: dict[str, Any] = {
            "id": flake["id"],
            "x_um": x,
            "y_um": y,
            "autofocus": focused.reason,
            "magnification": state.magnification,
            "position_error_um": None,
            "image": None,
            # the oxide the detector's physics prior assumed on this frame (None: no prior)
            "oxide_nm": next(
                (d.attributes["oxide_nm"] for d in found.detections if "oxide_nm" in d.attributes),
                None,
            ),
        }
        if obs.pixels is not None:
            path = self.out_dir / f"flake-{int(flake['id']):05d}.png"
            pixels = np.ascontiguousarray(obs.pixels)
            if pixels.ndim == 3:
                pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
            cv2.imwrite(str(path), pixels)
            visit["image"] = path.name
        if found.frame_shape is not None:
            rows, cols = found.frame_shape
            geometry = TileGeometry(rows, cols, state.pixel_size_nm / 1e3)
            # The flake of the catalog's material nearest to where it should be; failing that,
            # any flake there (at another magnification the detector may read it as another
            # material: recorded as ``material_seen``, the catalog is not rewritten).
            for material in (flake.get("material"), None):
                nearest = _nearest(found.detections, geometry, (x, y), material)
                if nearest is not None and nearest[0] <= FOUND_WITHIN_UM:
                    visit["position_error_um"], visit["material_seen"] = nearest
                    break
        return visit


def _nearest(
    detections: list[Any], geometry: TileGeometry, at: tuple[float, float], material: Any
) -> tuple[float, str] | None:
    """Distance (µm) from ``at`` to the nearest detection of ``material`` (None: any) in the
    frame taken there, and that detection's material."""
    best = None
    for det in detections:
        seen = str(det.attributes.get("material"))
        if material is not None and seen != material:
            continue
        sx, sy = geometry.to_stage(*det.centroid_xy_px, at)
        d = math.hypot(sx - at[0], sy - at[1])
        best = (d, seen) if best is None or d < best[0] else best
    return best
