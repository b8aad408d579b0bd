"""Particle tracks from per-frame detections: trackpy links them live; statistics, motion,
growth and events at the end.

- **Linking** (:class:`LiveTracker`): trackpy's Crocker–Grier linker (``trackpy.linking.
  Linker``, the engine of ``trackpy.link_iter``) frame by frame, as results arrive in order; a
  particle may vanish for ``memory`` frames and keep its id. Positions are linked in nm, so
  ``search_range_nm`` is a physical speed limit (largest move between two frames).
- **Per frame**: count, mean and median equivalent diameter, coverage (particle area over the
  field).
- **Per track**: frames, first/last, mean diameter, growth rate (least-squares slope of
  diameter against time), MSD (``trackpy.imsd``) and the 2-D diffusion coefficient D from
  MSD = 4 D τ over its first lags.
- **Events**, with frame numbers: a track that ends away from the field's edge before the last
  frame either *coalesced* (a neighbour within touching distance grows by at least half the
  vanished particle's area in the next frame it is seen) or *dissolved*; one that starts away
  from the edge after the first frame either *split* off a neighbour that shrank, or
  *nucleated*; at the edge, tracks *entered* or *left* the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: columns of the per-detection table (tracks.csv)
TRACK_COLUMNS = ("frame", "image_id", "time_s", "particle", "x_nm", "y_nm", "x_px", "y_px",
                 "area_nm2", "diameter_nm", "score")  # fmt: skip
EVENT_KINDS = ("nucleation", "dissolution", "coalescence", "split", "entered", "left")


@dataclass(frozen=True)
class TrackingConfig:
    """How detections become tracks and events."""

    pixel_size_nm: float
    frame_interval_s: float
    search_range_nm: float = 12.0  # largest move of a particle between two frames
    memory: int = 3  # frames a particle may go undetected and keep its id
    edge_px: float = 4.0  # a track starting/ending this close to the edge entered/left
    min_track_frames: int = 5  # shorter tracks get no growth rate or D
    msd_max_lag: int = 10  # lags (frames) the diffusion fit uses at most
    merge_growth: float = 0.5  # coalescence: the survivor gains ≥ this × the lost area
    split_loss: float = 0.3  # split: the parent loses ≥ this × the new particle's area


@dataclass
class Analysis:
    """What a run's tracking produced (pandas DataFrames)."""

    tracks: Any  # per detection: TRACK_COLUMNS
    frames: Any  # per frame: frame, image_id, time_s, count, diameters, coverage
    summary: Any  # per track
    events: Any  # frame, image_id, time_s, event, particle, other, x_nm, y_nm
    msd: Any = None  # trackpy.imsd: lag time (s) × particle, nm²
    notes: list[str] = field(default_factory=list)


FRAME_COLUMNS = ("frame", "image_id", "time_s", "count", "mean_diameter_nm",
                 "median_diameter_nm", "coverage")  # fmt: skip
SPILL_ROWS = 50_000  # rows held before they go to the spill file


class LiveTracker:
    """Links each frame's detections to the tracks so far (frames must come in order).

    With ``spill_dir`` the per-detection and per-frame rows go to CSV files there as they come
    (``tracks.csv``, ``frames.csv``), so memory stays flat over an hours-long series; the
    analysis at the end reads them back."""

    def __init__(
        self, config: TrackingConfig, frame_shape: tuple[int, int], spill_dir: Any = None
    ) -> None:
        from trackpy.linking import Linker

        self.config = config
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self._linker = Linker(config.search_range_nm, memory=config.memory)
        self._started = False
        self._rows: list[tuple[Any, ...]] = []
        self._frames: list[tuple[int, int, float, int, float, float, float]] = []
        self._files: dict[str, Any] = {}
        if spill_dir is not None:
            from pathlib import Path

            for name, cols in (("tracks", TRACK_COLUMNS), ("frames", FRAME_COLUMNS)):
                fh = open(Path(spill_dir) / f"{name}.csv", "w")  # noqa: SIM115 (closed in analyse)
                fh.write(",".join(cols) + "\n")
                self._files[name] = fh
        self.skipped_frames: list[int] = []  # frames with no result (reported missing)
        self._frames_seen = 0

    @property
    def frames_seen(self) -> int:
        return self._frames_seen

    def _spill(self, force: bool = False) -> None:
        if not self._files:
            return
        for name, rows in (("tracks", self._rows), ("frames", self._frames)):
            if rows and (force or len(rows) >= SPILL_ROWS):
                self._files[name].write(
                    "".join(",".join(_cell(v) for v in row) + "\n" for row in rows)
                )
                rows.clear()

    def add(self, frame: int, image_id: int, time_s: float, detections: list[Any]) -> list[int]:
        """Link one frame; returns the particle id of each detection (in order)."""
        px = self.config.pixel_size_nm
        xy_px = np.array([d.centroid_xy_px for d in detections], float).reshape(-1, 2)
        coords = xy_px * px
        if not self._started:
            self._linker.init_level(coords, frame)
            self._started = True
        else:
            self._linker.next_level(coords, frame)
        ids = [int(i) for i in self._linker.particle_ids]
        areas = np.array([d.area_px for d in detections], float) * px * px
        diam = 2.0 * np.sqrt(areas / math.pi)
        for k, det in enumerate(detections):
            self._rows.append((frame, image_id, time_s, ids[k], coords[k, 0], coords[k, 1],
                               xy_px[k, 0], xy_px[k, 1], areas[k], diam[k],
                               float(det.score)))  # fmt: skip
        field_nm2 = self.frame_shape[0] * self.frame_shape[1] * px * px
        self._frames.append((
            frame, image_id, time_s, len(detections),
            float(diam.mean()) if len(diam) else math.nan,
            float(np.median(diam)) if len(diam) else math.nan,
            float(areas.sum() / field_nm2),
        ))  # fmt: skip
        self._frames_seen += 1
        self._spill()
        return ids

    def skip(self, frame: int) -> None:
        """A frame whose result never came: linking bridges it (``memory``)."""
        self.skipped_frames.append(frame)

    def analyse(self) -> Analysis:
        """The tables, motion and events of everything added so far."""
        import pandas as pd

        if self._files:
            self._spill(force=True)
            for fh in self._files.values():
                fh.close()
            tracks = pd.read_csv(self._files["tracks"].name)
            frames = pd.read_csv(self._files["frames"].name)
            self._files = {}
        else:
            tracks = pd.DataFrame(self._rows, columns=list(TRACK_COLUMNS))
            frames = pd.DataFrame(self._frames, columns=list(FRAME_COLUMNS))
        summary, msd = _summary(tracks, self.config)
        events = _events(tracks, self.config, self.frame_shape, frames)
        notes = []
        if self.skipped_frames:
            notes.append(f"{len(self.skipped_frames)} frame(s) had no result (reported missing)")
        return Analysis(tracks, frames, summary, events, msd, notes)


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _summary(tracks: Any, cfg: TrackingConfig) -> tuple[Any, Any]:
    import pandas as pd
    import trackpy

    rows = []
    for pid, t in tracks.groupby("particle"):
        n = len(t)
        growth = math.nan
        if n >= cfg.min_track_frames and t["time_s"].nunique() > 1:
            growth = float(np.polyfit(t["time_s"], t["diameter_nm"], 1)[0])
        rows.append({
            "particle": int(pid), "first_frame": int(t["frame"].min()),
            "last_frame": int(t["frame"].max()), "frames": n,
            "mean_diameter_nm": float(t["diameter_nm"].mean()),
            "growth_nm_per_s": growth, "diffusion_nm2_per_s": math.nan,
        })  # fmt: skip
    summary = pd.DataFrame(rows)
    msd = None
    long = tracks.groupby("particle").filter(lambda t: len(t) >= cfg.min_track_frames)
    if len(long):
        # imsd in our units: positions already in nm (mpp=1), lag times in s.
        traj = long.rename(columns={"x_nm": "x", "y_nm": "y"})[["frame", "particle", "x", "y"]]
        msd = trackpy.imsd(traj, mpp=1.0, fps=1.0 / cfg.frame_interval_s,
                           max_lagtime=cfg.msd_max_lag)  # fmt: skip
        for pid in msd.columns:
            lags = msd.index.to_numpy(float)
            values = msd[pid].to_numpy(float)
            ok = np.isfinite(values)
            if ok.sum() >= 2:
                # MSD = 4 D τ through the origin (2-D); least squares.
                d = float((lags[ok] @ values[ok]) / (lags[ok] @ lags[ok]) / 4.0)
                summary.loc[summary["particle"] == pid, "diffusion_nm2_per_s"] = d
    return summary, msd


def _near_edge(x_px: float, y_px: float, shape: tuple[int, int], margin: float) -> bool:
    return (x_px < margin or y_px < margin or x_px > shape[1] - 1 - margin
            or y_px > shape[0] - 1 - margin)  # fmt: skip


def _events(tracks: Any, cfg: TrackingConfig, shape: tuple[int, int], frames: Any) -> Any:
    import pandas as pd

    cols = ["frame", "image_id", "time_s", "event", "particle", "other", "x_nm", "y_nm"]
    if tracks.empty:
        return pd.DataFrame(columns=cols)
    first_frame, last_frame = int(frames["frame"].min()), int(frames["frame"].max())
    by_frame = {f: t for f, t in tracks.groupby("frame")}
    by_particle = {p: t.sort_values("frame") for p, t in tracks.groupby("particle")}
    frame_info = frames.set_index("frame")
    events = []

    def add(frame: int, kind: str, pid: int, other: int | None, x: float, y: float) -> None:
        info = frame_info.loc[frame] if frame in frame_info.index else None
        events.append((
            frame, int(info["image_id"]) if info is not None else -1,
            float(info["time_s"]) if info is not None else math.nan,
            kind, pid, -1 if other is None else other, x, y,
        ))  # fmt: skip

    def area_of(pid: int, frame: int) -> float | None:
        row = by_particle[pid][by_particle[pid]["frame"] == frame]
        return float(row["area_nm2"].iloc[0]) if len(row) else None

    def next_seen(pid: int, after: int) -> int | None:
        later = by_particle[pid][by_particle[pid]["frame"] > after]["frame"]
        return int(later.iloc[0]) if len(later) else None

    def last_seen(pid: int, before: int) -> int | None:
        earlier = by_particle[pid][by_particle[pid]["frame"] < before]["frame"]
        return int(earlier.iloc[-1]) if len(earlier) else None

    for pid, t in by_particle.items():
        start, end = t.iloc[0], t.iloc[-1]
        # -- the end of a track --------------------------------------------------------------
        f_end = int(end["frame"])
        if f_end + cfg.memory < last_frame:  # really gone, not just the run's end
            if _near_edge(end["x_px"], end["y_px"], shape, cfg.edge_px):
                add(f_end, "left", pid, None, end["x_nm"], end["y_nm"])
            else:
                kind, other = "dissolution", None
                r_end = end["diameter_nm"] / 2
                for f in range(f_end, f_end + cfg.memory + 1):
                    for _, nb in by_frame.get(f, pd.DataFrame(columns=TRACK_COLUMNS)).iterrows():
                        q = int(nb["particle"])
                        if q == pid:
                            continue
                        gap = math.hypot(nb["x_nm"] - end["x_nm"], nb["y_nm"] - end["y_nm"])
                        if gap > r_end + nb["diameter_nm"] / 2 + cfg.search_range_nm:
                            continue
                        after = next_seen(q, f_end)
                        before = area_of(q, last_seen(q, f_end + 1) or f)
                        if after is None or before is None:
                            continue
                        gained = (area_of(q, after) or 0.0) - before
                        if gained >= cfg.merge_growth * end["area_nm2"]:
                            kind, other = "coalescence", q
                            break
                    if other is not None:
                        break
                add(f_end + 1 if kind == "coalescence" else f_end, kind, pid, other,
                    end["x_nm"], end["y_nm"])  # fmt: skip
        # -- the start of a track ------------------------------------------------------------
        f_start = int(start["frame"])
        if f_start > first_frame:
            if _near_edge(start["x_px"], start["y_px"], shape, cfg.edge_px):
                add(f_start, "entered", pid, None, start["x_nm"], start["y_nm"])
            else:
                kind, other = "nucleation", None
                for _, nb in by_frame.get(f_start, pd.DataFrame(columns=TRACK_COLUMNS)).iterrows():
                    q = int(nb["particle"])
                    if q == pid:
                        continue
                    gap = math.hypot(nb["x_nm"] - start["x_nm"], nb["y_nm"] - start["y_nm"])
                    if gap > (start["diameter_nm"] + nb["diameter_nm"]) / 2 + cfg.search_range_nm:
                        continue
                    prev = last_seen(q, f_start)
                    if prev is None:
                        continue
                    lost = (area_of(q, prev) or 0.0) - float(nb["area_nm2"])
                    if lost >= cfg.split_loss * start["area_nm2"]:
                        kind, other = "split", q
                        break
                add(f_start, kind, pid, other, start["x_nm"], start["y_nm"])
    out = pd.DataFrame(events, columns=cols)
    return out.sort_values(["frame", "event", "particle"]).reset_index(drop=True)
