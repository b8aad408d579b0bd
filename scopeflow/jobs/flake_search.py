"""The ``flake-search`` job: scan a chip, catalog every flake in stage coordinates.

1. One frame where the stage stands gives the tile's size (rows × cols × pixel size).
2. A serpentine grid of tiles covers the region with the asked overlap, inside the stage limits.
3. Autofocus (the project's own job) at a grid of focus points; a plane or a quadratic through
   them is the chip's focus surface (:mod:`scopeflow.jobs.flakes.focus_surface`).
4. Each tile: move, set focus from the surface, take a frame, read focus and detections. A tile
   that reads blurred is refocused (counted), its point joins the surface; one still blurred is
   kept but flagged, never passed off as sharp.
5. Detections go into the catalog in stage coordinates, each flake once across overlaps
   (:mod:`scopeflow.jobs.flakes.catalog`); ``catalog.json``, ``catalog.csv`` and a chip map
   are written to the output folder.

Two-pass (``--two-pass 10x``): after the focus points at the search objective, an overview at
the low-magnification objective (its focus surface is the search surface shifted by the offset
one autofocus there measures: objectives need not be parfocal) gives candidates (overview
flakes that ``--candidates`` keeps); back at the search objective, one confirmation tile per
group of nearby candidates (:mod:`scopeflow.jobs.flakes.two_pass`), and the catalog is built
from the confirmation tiles only.

The job times its own phases (``details["time_s"]``): stage moves, focus moves from the
surface, autofocus (focus points and refocus), frames (camera and focus reading), and the time
it waited for detections (all of it with ``--serial-detection``; pipelined, what the stage and
camera did not hide).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

import cv2
import numpy as np

from scopeflow.errors import ScopeflowError, UsageError
from scopeflow.inference.models.flake_detector import CLASSES as DETECTOR_CLASSES
from scopeflow.jobs.autofocus import AutofocusJob, AutofocusJobConfig
from scopeflow.jobs.base import (
    Action,
    Collect,
    JobOutcome,
    JobPlan,
    JobStopped,
    MoveFocus,
    Progress,
    SetObjective,
    Snap,
    failure_reason,
    move_one_way,
)
from scopeflow.jobs.flakes.catalog import Catalog, FlakeEntry
from scopeflow.jobs.flakes.flat_field import FlatField
from scopeflow.jobs.flakes.focus_surface import FocusSurface, fit_surface, focus_points, shifted
from scopeflow.jobs.flakes.outputs import CocoTiles, html_chip_map, thumbnail
from scopeflow.jobs.flakes.select import compile_selection
from scopeflow.jobs.flakes.tiles import TileGeometry, plan_tiles
from scopeflow.jobs.flakes.two_pass import confirmation_tiles, entry_fields, select_candidates
from scopeflow.scopes.base import ScopeStatus, Shot

PROGRESS_FILE = "progress.json"
BLURRED_DOF = 1.0  # AENet reading above this: the tile is out of focus
CLASSICAL_DROP = 0.5  # a classical score below this × the median of sharp tiles: out of focus
PHASES = ("stage_s", "z_s", "autofocus_s", "frames_s", "detection_wait_s")
# What --candidates may name: the catalog fields and p_<class> of the detector's classes (None
# for an entry without them, e.g. from a detector that gives no probabilities: not selected).
CANDIDATE_FIELDS = {f.name for f in fields(FlakeEntry)} | {f"p_{c}" for c in DETECTOR_CLASSES}


def parse_region(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` in µm."""
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--region {text!r} is not X0,Y0,X1,Y1 (µm)") from None
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def chip_region(text: str) -> tuple[float, float, float, float]:
    """``W,H`` in mm: a chip of that size centred on the stage origin."""
    try:
        w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--chip-mm {text!r} is not W,H (mm)") from None
    if not (w > 0 and h > 0):
        raise UsageError("--chip-mm needs a positive width and height")
    return (-w * 500.0, -h * 500.0, w * 500.0, h * 500.0)


class FlakeSearchJob:
    """Scan a chip tile by tile and catalog every flake in stage coordinates."""

    name = "flake-search"
    needs = ("focus", "detections")
    # AENet was trained on SEM frames: on in-focus 20x optical tiles it reads 1-7 of 9 (more
    # than 1 DoF out), so its blur rule refocused every tile (bench, 2026-12-07). A classical
    # metric searches for focus and compares scores between tiles instead.
    default_focus_model = "tenengrad"

    def __init__(
        self,
        region: tuple[float, float, float, float],
        out_dir: Path,
        *,
        overlap: float = 0.1,
        focus_grid: int = 3,
        surface: str = "auto",
        autofocus: AutofocusJobConfig | None = None,
        refocus: bool = True,
        approach_um: float = 10.0,
        serial: bool = False,
        objective: str | None = None,
        two_pass: str | None = None,
        candidates: str = "True",
        flat_field: str = "auto",
    ) -> None:
        if two_pass is not None and objective is None:
            raise UsageError(
                "--two-pass needs --objective: the search objective to confirm candidates with"
            )
        self.region = region
        self.out_dir = Path(out_dir)
        self.overlap = overlap
        self.focus_grid = focus_grid
        self.surface_kind = surface
        self.autofocus = autofocus or AutofocusJobConfig()
        self.refocus = refocus
        #: where our last one-way move put the stage (None: not known to be reached from below)
        self._last_xy: tuple[float, float] | None = None
        self.approach_um = approach_um
        self.serial = serial
        self.objective = objective
        self.two_pass = two_pass
        self.candidates_text = candidates
        self.candidates = compile_selection(candidates, CANDIDATE_FIELDS)
        self.flat_field_spec = flat_field
        self.flat = _flat_field(flat_field)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument(
            "--region",
            help="X0,Y0,X1,Y1: the area to scan, stage µm (--region=-500,... when X0 < 0)",
        )
        where.add_argument("--chip-mm", help="W,H: a chip of this size centred on the origin")
        parser.add_argument(
            "--overlap", type=float, default=0.1, help="between tiles, fraction of the field"
        )
        parser.add_argument(
            "--focus-grid", type=int, default=3, help="N: autofocus at N × N points first"
        )
        parser.add_argument(
            "--surface",
            choices=["auto", "plane", "quadratic"],
            default="auto",
            help="focus surface through the focus points (auto: quadratic if clearly better)",
        )
        parser.add_argument(
            "--no-refocus", action="store_true", help="flag blurred tiles without refocusing"
        )
        parser.add_argument(
            "--approach-um",
            type=float,
            default=10.0,
            help="reach every position from this far below in x and y, so the stage's "
            "backlash is the same everywhere (0: move directly)",
        )
        parser.add_argument(
            "--flat-field",
            default="auto",
            metavar="auto|none|IMAGE",
            help="flat field and white balance for thumbnails: from the scan's blank tiles "
            "(auto), none, or a reference image of bare substrate",
        )
        parser.add_argument(
            "--serial-detection",
            action="store_true",
            help="wait for each tile's detections before moving on (the slower baseline)",
        )
        parser.add_argument(
            "--objective", default=None, help="swing this (search) objective in first, e.g. 20x"
        )
        parser.add_argument(
            "--two-pass",
            default=None,
            metavar="OBJECTIVE",
            help="overview at this low-magnification objective first, then confirm only its "
            "candidates at --objective (needs an objective changer)",
        )
        parser.add_argument(
            "--candidates",
            default="True",
            help="two-pass: which overview flakes to confirm, a --select style expression over "
            "catalog fields and p_<class>, e.g. 'material==\"graphene\" and layers in (1, 2)' "
            "(default: every overview flake)",
        )
        AutofocusJob.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FlakeSearchJob:
        region = parse_region(args.region) if args.region else chip_region(args.chip_mm)
        if args.focus_grid < 1:
            raise UsageError("--focus-grid must be at least 1")
        return cls(
            region,
            args.out,
            overlap=args.overlap,
            focus_grid=args.focus_grid,
            surface=args.surface,
            autofocus=AutofocusJob.config_from_args(args),
            refocus=not args.no_refocus,
            approach_um=args.approach_um,
            serial=args.serial_detection,
            objective=args.objective,
            two_pass=args.two_pass,
            candidates=args.candidates,
            flat_field=args.flat_field,
        )

    # -- the plan -----------------------------------------------------------------------------
    def plan(self, status: ScopeStatus) -> JobPlan:
        self._t0 = time.monotonic()
        self._restore()
        reason, message = "done", ""
        try:
            if self.objective is not None:
                status = (yield SetObjective(self.objective)).status
            first = yield Snap(self.needs)
            self.geometry = _geometry(first.results["detections"])
            tiles = plan_tiles(self.region, self.geometry, self.overlap, status.limits)
            if not self.points:
                for i, (x, y) in enumerate(self._focus_points(status)):
                    yield Progress(i, self.focus_grid**2, "focus points")
                    yield from self._timed("autofocus_s", self._focus_at(x, y, status, self.points))
            if not self.points:
                raise JobStopped("no_focus", "autofocus converged at none of the focus points")
            search = _Lens(self.geometry, self.points, self.sharp_scores, self._refit_search)
            search.surface = self._refit_search()
            if self.two_pass is not None:
                tiles = yield from self._overview(status)
                assert self.objective is not None  # __init__ refuses two-pass without it
                status = (yield SetObjective(self.objective)).status
            done = {t["tile"] for t in self.tiles_done}
            todo = [(i, x, y) for i, (x, y) in enumerate(tiles) if i not in done]
            yield from self._scan(todo, status, search, lambda t: self._catalogue(t, len(tiles)))
        except JobStopped as stop:
            reason, message = stop.reason, stop.message
        except ScopeflowError as exc:
            reason, message = failure_reason(exc), exc.reason
        # Interrupted (Ctrl-C): write what was found, keep progress.json. The runner closes
        # the plan (GeneratorExit) when Ctrl-C lands while an action is carried out; when it
        # lands while the job itself computes, it is raised here, in the job's own frame.
        except (GeneratorExit, KeyboardInterrupt):
            self._finish("interrupted", "interrupted", time.monotonic() - self._t0)
            raise
        return self._finish(reason, message, time.monotonic() - self._t0)

    def _scan(
        self,
        todo: list[tuple[int, float, float]],
        status: ScopeStatus,
        lens: _Lens,
        collect: Callable[[_Pending], JobPlan],
    ) -> JobPlan:
        """Take the tiles in order; ``collect`` reads each one's detections."""
        pending: _Pending | None = None
        for i, x, y in todo:
            # The detector works on the previous tile while the stage moves to this one
            # and the camera takes it; its detections are collected after this frame.
            taken = yield from self._tile(i, x, y, status, lens)
            if self.serial:  # the baseline: wait for each tile's detections
                yield from collect(taken)
                continue
            if pending is not None:
                yield from collect(pending)
            pending = taken
        if pending is not None:
            yield from collect(pending)

    def _overview(self, status: ScopeStatus) -> JobPlan:
        """The first pass: swing the overview objective in, measure its focus offset, scan the
        region, and return the confirmation tiles for the candidates it found."""
        t0 = time.monotonic()
        search_geometry, search_surface = self.geometry, self.surface
        assert self.two_pass is not None and search_surface is not None
        status = (yield SetObjective(self.two_pass)).status
        geometry = TileGeometry(
            search_geometry.rows, search_geometry.cols, status.state.pixel_size_nm / 1e3
        )
        points: list[tuple[float, float, float]] = []

        def refit() -> FocusSurface:
            # The search surface moved by the overview objective's focus offset (0 when no
            # autofocus converged there: parfocal objectives, the usual design).
            offsets = [z - search_surface.predict(x, y) for x, y, z in points]
            return shifted(search_surface, median(offsets) if offsets else 0.0)

        lens = _Lens(geometry, points, [], refit)
        x0, y0, x1, y1 = self.region
        (cx, cy), lim = ((x0 + x1) / 2, (y0 + y1) / 2), status.limits
        cx = min(max(cx, lim.stage_x_min_um), lim.stage_x_max_um)
        cy = min(max(cy, lim.stage_y_min_um), lim.stage_y_max_um)
        yield from self._timed("autofocus_s", self._focus_at(cx, cy, status, points))
        lens.surface = refit()
        self.overview_offset_um = lens.surface.coefficients[0] - search_surface.coefficients[0]
        tiles = plan_tiles(self.region, geometry, self.overlap, status.limits)
        found = Catalog()

        def collect(tile: _Pending) -> JobPlan:
            obs = yield from self._timed("detection_wait_s", _act(Collect(tile.shot, _DETS)))
            result = obs.results["detections"]
            _add_tile(found, tile, result, geometry)
            self.overview_tiles.append(
                {"tile": tile.index, "x_um": tile.x_um, "y_um": tile.y_um,
                 "width_um": geometry.width_um, "height_um": geometry.height_um,
                 "blurred": tile.blurred, "focus_score": tile.focus_score}
            )  # fmt: skip
            yield Progress(len(self.overview_tiles), len(tiles), "overview tiles")

        refocus_before = self.refocus_count
        yield from self._scan([(i, x, y) for i, (x, y) in enumerate(tiles)], status, lens, collect)
        self.overview_refocus_count = self.refocus_count - refocus_before
        self.refocus_count = refocus_before  # the search's own count stays apart
        self.overview_flakes = len(found.entries)
        chosen = select_candidates(found.entries, self.candidates, CANDIDATE_FIELDS)
        self.candidate_records = [{k: entry_fields(e)[k] for k in _CANDIDATE_KEYS} for e in chosen]
        self.overview_seconds = time.monotonic() - t0
        return confirmation_tiles(chosen, search_geometry, status.limits)

    def _tile(self, i: int, x: float, y: float, status: ScopeStatus, lens: _Lens) -> JobPlan:
        """One tile: move, focus from the surface, frame (its detections computed meanwhile);
        refocus when it reads blurred. Returns what ``_catalogue`` needs."""
        # Along a row scanned in +x (and onto the next row up) the move itself comes from below
        # in both axes: the approach move would only add a settle. Known only after a move of
        # ours (the stage's first position may have been reached from anywhere).
        last = self._last_xy
        onward = last is not None and last[0] <= x and last[1] <= y
        approach = 0.0 if onward else self.approach_um
        yield from self._timed("stage_s", move_one_way(x, y, status, approach))
        self._last_xy = (x, y)
        assert lens.surface is not None
        z = self._predicted(x, y, status, lens.surface)
        yield from self._timed("z_s", _act(MoveFocus(z)))
        snap = Snap(("focus",), pixels=True, later=_DETS)
        obs = yield from self._timed("frames_s", _act(snap))
        blurred = _blurred(obs.results["focus"], lens.sharp_scores)
        if blurred and self.refocus:
            self.refocus_count += 1
            # The stage is already there: autofocus where it stands.
            refocus = self._focus_at(x, y, obs.status, lens.points, move=False)
            if (yield from self._timed("autofocus_s", refocus)):
                lens.surface = lens.refit()
                obs = yield from self._timed("frames_s", _act(snap))
                blurred = _blurred(obs.results["focus"], lens.sharp_scores)
        focus = obs.results["focus"]
        if not blurred:
            lens.sharp_scores.append(focus.score)
        assert obs.shot is not None
        return _Pending(i, x, y, obs.shot, obs.pixels, focus.score, blurred)

    def _timed(self, phase: str, plan: JobPlan) -> JobPlan:
        """Run ``plan`` (actions the runner carries out) and add its wall time to ``phase``."""
        t0 = time.monotonic()
        try:
            return (yield from plan)
        finally:
            self.time_s[phase] += time.monotonic() - t0

    def _catalogue(self, tile: _Pending, total: int) -> JobPlan:
        """Collect a tile's detections; into the catalog, COCO and thumbnails; save progress."""
        obs = yield from self._timed("detection_wait_s", _act(Collect(tile.shot, _DETS)))
        found = obs.results["detections"]
        g, i, centre = self.geometry, tile.index, (tile.x_um, tile.y_um)
        _add_tile(self.catalog, tile, found, g)
        self.coco.add(i, centre, (g.rows, g.cols), g.pixel_um, found.detections)
        if tile.pixels is not None:
            pixels = tile.pixels
            if self.flat is not None:
                self.flat.offer(pixels, len(found.detections))
                if self.flat.ready:  # thumbnails corrected from here on
                    pixels = self.flat.correct(pixels)
            for entry in self.catalog.new_entries_of(i):
                if self.flat is not None and self.flat.ready:
                    entry.flat_field_id = self.flat.id
                thumbnail(pixels, entry, self.out_dir / "thumbs" / f"flake-{entry.id:05d}.png")
        self.tiles_done.append(
            {
                "tile": i,
                "x_um": tile.x_um,
                "y_um": tile.y_um,
                "width_um": g.width_um,
                "height_um": g.height_um,
                "blurred": tile.blurred,
                "focus_score": tile.focus_score,
            }
        )
        self._save_progress()
        yield self._progress(total)

    def _progress(self, total: int) -> Progress:
        minutes = max((time.monotonic() - self._t0) / 60, 1e-9)
        mm2 = len(self.tiles_done) * self.geometry.width_um * self.geometry.height_um * 1e-6
        rate = f"{len(self.catalog.entries)} flakes, {mm2 / minutes:.2f} mm²/min"
        return Progress(len(self.tiles_done), total, f"tiles, {rate}")

    # -- resume --------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Start afresh, or carry on from ``progress.json`` of an interrupted run in the same
        folder (same region and overlap): its focus points and tiles are not redone."""
        self.catalog, self.coco = Catalog(), CocoTiles()
        self.tiles_done: list[dict[str, Any]] = []
        self.points: list[tuple[float, float, float]] = []
        self.sharp_scores: list[float] = []
        self.refocus_count = 0
        self.surface: FocusSurface | None = None
        self.resumed_tiles = 0
        self.time_s = dict.fromkeys(PHASES, 0.0)
        self.overview_tiles: list[dict[str, Any]] = []
        self.overview_refocus_count = 0
        self.overview_flakes = 0
        self.overview_offset_um: float | None = None
        self.overview_seconds = 0.0
        self.candidate_records: list[dict[str, Any]] = []
        path = self.out_dir / PROGRESS_FILE
        if not path.exists():
            return
        state = json.loads(path.read_text())
        if self.two_pass is not None or state.get("two_pass") is not None:
            # Its confirmation tiles come from the overview of that run: nothing to carry on.
            raise UsageError(
                f"{self.out_dir} holds an unfinished search and two-pass searches do not "
                "resume; choose another --out"
            )
        if state["region_um"] != list(self.region) or state["overlap"] != self.overlap:
            raise UsageError(
                f"{self.out_dir} holds an unfinished search of another region or overlap; "
                "choose another --out, or the same --region and --overlap to resume it"
            )
        self.catalog = Catalog.from_state(state["catalog"])
        self.coco = CocoTiles.from_state(state["coco"])
        self.tiles_done = state["tiles"]
        self.points = [tuple(p) for p in state["focus_points"]]  # type: ignore[misc]
        self.sharp_scores = state["sharp_scores"]
        self.refocus_count = state["refocus_count"]
        self.resumed_tiles = len(self.tiles_done)

    def _save_progress(self) -> None:
        """After every tile, so an interruption loses at most the tile under way."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "region_um": list(self.region),
            "overlap": self.overlap,
            "two_pass": self.two_pass,
            "focus_points": [list(p) for p in self.points],
            "tiles": self.tiles_done,
            "sharp_scores": self.sharp_scores,
            "refocus_count": self.refocus_count,
            "catalog": self.catalog.state(),
            "coco": self.coco.state(),
        }
        tmp = self.out_dir / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.out_dir / PROGRESS_FILE)  # atomic: never a half-written file

    def _focus_points(self, status: ScopeStatus) -> list[tuple[float, float]]:
        lim = status.limits
        return [
            (
                min(max(x, lim.stage_x_min_um), lim.stage_x_max_um),
                min(max(y, lim.stage_y_min_um), lim.stage_y_max_um),
            )
            for x, y in focus_points(self.region, self.focus_grid)
        ]

    def _focus_at(
        self,
        x: float,
        y: float,
        status: ScopeStatus,
        points: list[tuple[float, float, float]],
        move: bool = True,
    ) -> JobPlan:
        """Move to (x, y) (unless it stands there) and autofocus; a converged focus joins
        ``points``."""
        if move:
            status = (yield from move_one_way(x, y, status, self.approach_um)).status
            self._last_xy = (x, y)
        done = yield from AutofocusJob(self.autofocus).plan(status)
        if done.reason in ("timeout", "device_error"):
            raise JobStopped(done.reason, done.message)
        if done.reached_goal and done.details.get("final_wd_um") is not None:
            points.append((x, y, float(done.details["final_wd_um"])))
            return True
        return False

    def _refit_search(self) -> FocusSurface:
        self.surface = fit_surface(self.points, self.surface_kind)  # type: ignore[arg-type]
        return self.surface

    @staticmethod
    def _predicted(x: float, y: float, status: ScopeStatus, surface: FocusSurface) -> float:
        lim = status.limits
        return min(max(surface.predict(x, y), lim.wd_min_um), lim.wd_max_um)

    def _finish(self, reason: str, message: str, seconds: float) -> JobOutcome:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        catalog = self.catalog
        meta = {
            "job": self.name,
            "region_um": list(self.region),
            "focus_surface": self.surface.to_dict() if self.surface else None,
            "focus_points": [list(p) for p in self.points],
            "tiles": self.tiles_done,
        }
        if self.flat is not None and self.flat.ready:
            meta["flat_field"] = {k: v for k, v in self.flat.to_json().items() if k != "flat_rgb"}
            self.flat.save(self.out_dir)
        files = [str(p) for p in catalog.write(self.out_dir, meta)]
        files.append(str(self.coco.write(self.out_dir / "catalog.coco.json")))
        if self.tiles_done:
            from scopeflow.jobs.flakes.chip_map import chart_extent, draw_chip_map

            png = draw_chip_map(self.out_dir / "chip_map.png", catalog, meta)
            page = html_chip_map(
                self.out_dir / "chip_map.html", png, catalog, meta, chart_extent(meta)
            )
            files += [str(png), str(page)]
        if reason == "done":  # finished: nothing to resume
            (self.out_dir / PROGRESS_FILE).unlink(missing_ok=True)
        blurred = sum(t["blurred"] for t in self.tiles_done)
        figures: dict[str, Any] = {}
        details: dict[str, Any] = {}
        if self.two_pass is not None:
            figures = {
                "overview_objective": self.two_pass,
                "search_objective": self.objective,
                "overview_tiles": len(self.overview_tiles),
                "overview_flakes": self.overview_flakes,
                "candidates": len(self.candidate_records),
                "overview_refocus_count": self.overview_refocus_count,
                "overview_focus_offset_um": self.overview_offset_um,
                "overview_minutes": self.overview_seconds / 60,
            }
            details["overview"] = {
                "objective": self.two_pass,
                "candidates_rule": self.candidates_text,
                "tiles": self.overview_tiles,
                "candidates": self.candidate_records,
            }
        return JobOutcome(
            self.name,
            reason,
            reason == "done",
            message or f"{len(self.tiles_done)} tiles, {len(catalog.entries)} flakes",
            figures={
                "tiles": len(self.tiles_done),
                "flakes": len(catalog.entries),
                "duplicates_merged": catalog.duplicates_merged,
                "refocus_count": self.refocus_count,
                "blurred_tiles": blurred,
                "focus_surface": self.surface.kind if self.surface else None,
                "focus_surface_rms_um": self.surface.rms_um if self.surface else None,
                "minutes": seconds / 60,
                "resumed_tiles": self.resumed_tiles,
                **figures,
            },
            details={
                **meta,
                **details,
                "time_s": {**self.time_s, "total_s": seconds},
                "files": files,
            },
        )


_DETS = ("detections",)
# What the outcome keeps of each candidate (details["overview"]["candidates"]).
_CANDIDATE_KEYS = ("id", "x_um", "y_um", "bbox_um", "area_um2", "flake_class", "score")


def _act(action: Action) -> JobPlan:
    """One action as a sub-plan (to time it with ``_timed``)."""
    return (yield action)


@dataclass
class _Lens:
    """What the tile loop needs of one objective: its tile geometry, its autofocus points, the
    focus scores of its sharp tiles, and its focus surface (``refit`` after a refocus)."""

    geometry: TileGeometry
    points: list[tuple[float, float, float]]
    sharp_scores: list[float]
    refit: Callable[[], FocusSurface]
    surface: FocusSurface | None = None


@dataclass(frozen=True)
class _Pending:
    """A tile whose frame is taken and whose detections are still being computed."""

    index: int
    x_um: float
    y_um: float
    shot: Shot
    pixels: Any
    focus_score: float
    blurred: bool


def _add_tile(catalog: Catalog, tile: _Pending, result: Any, geometry: TileGeometry) -> None:
    """A tile's detections result into ``catalog`` (the overview's or the search's)."""
    catalog.add_tile(
        result.detections,
        tile=tile.index,
        centre=(tile.x_um, tile.y_um),
        geometry=geometry,
        focus_score=tile.focus_score,
        blurred=tile.blurred,
        magnification=result.state.magnification,
        model=result.model,
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _flat_field(spec: str) -> FlatField | None:
    """``--flat-field``: auto (from blank tiles), none, or a reference image file."""
    if spec == "none":
        return None
    if spec == "auto":
        return FlatField()
    image = cv2.imread(spec, cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3:
        raise UsageError(f"--flat-field {spec}: not a colour image OpenCV can read")
    return FlatField(np.ascontiguousarray(image[..., 2::-1]))  # OpenCV reads BGR(A)


def _geometry(detections: Any) -> TileGeometry:
    if detections.frame_shape is None:
        raise JobStopped("device_error", "the detector reports no frame shape (protocol < 1.3)")
    rows, cols = detections.frame_shape
    return TileGeometry(rows, cols, detections.state.pixel_size_nm / 1e3)


def _blurred(focus: Any, sharp_scores: list[float]) -> bool:
    """Out of focus: AENet reads more than BLURRED_DOF, or (classical metric) the score fell
    below CLASSICAL_DROP × the median of the sharp tiles so far."""
    if focus.signal != "ok":
        return True
    if focus.abs_defocus_dof is not None:
        return focus.abs_defocus_dof > BLURRED_DOF
    return bool(sharp_scores) and focus.score < CLASSICAL_DROP * median(sharp_scores)
