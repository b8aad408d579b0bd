"""What an in-situ run leaves in ``D/``: tables, plots and a short video with overlays.

- ``tracks.csv`` (one row per detection and frame), ``frames.csv`` (per-frame count, sizes,
  coverage), ``track_summary.csv`` (per track: frames, diameter, growth rate, D),
  ``events.csv`` (nucleation, dissolution, coalescence, split, entered, left — with frame
  numbers and image ids);
- ``sizes.png`` (the size distribution over time), ``msd.png`` (MSD against lag time per track,
  log–log, with the ensemble mean), ``counts.png`` (particle count and coverage over time);
- ``overlay.gif``: frames sampled during the run, each with its particles' outlines and ids;
- ``drift.csv``, ``drift.png``: the specimen drift estimated from the frames (``--drift``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.jobs.insitu.tracking import Analysis

GIF_SIDE = 256  # px: the video is for a look, not for measuring


def write_tables(analysis: Analysis, out: Path) -> list[Path]:
    """The four CSV tables; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in (
        ("tracks.csv", analysis.tracks),
        ("frames.csv", analysis.frames),
        ("track_summary.csv", analysis.summary),
        ("events.csv", analysis.events),
    ):
        path = out / name
        table.to_csv(path, index=False, float_format="%.6g")
        paths.append(path)
    return paths


def write_plots(analysis: Analysis, out: Path) -> list[Path]:
    """sizes.png, msd.png, counts.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    tracks, frames = analysis.tracks, analysis.frames

    fig, ax = plt.subplots(figsize=(7, 4))
    if len(tracks):
        t, d = tracks["time_s"].to_numpy(), tracks["diameter_nm"].to_numpy()
        bins_t = max(1, min(60, frames["time_s"].nunique()))
        bins_d = np.linspace(0, max(1.0, float(np.percentile(d, 99.5))), 40)
        h, xe, ye = np.histogram2d(t, d, bins=(bins_t, bins_d))
        mesh = ax.pcolormesh(xe, ye, h.T, cmap="viridis", shading="auto")
        fig.colorbar(mesh, ax=ax, label="particles")
    ax.set(xlabel="time (s)", ylabel="equivalent diameter (nm)",
           title="Size distribution over time")  # fmt: skip
    paths.append(_save(fig, out / "sizes.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    msd = analysis.msd
    if msd is not None and not msd.empty:
        lags = msd.index.to_numpy(float)
        for pid in msd.columns:
            ax.loglog(lags, msd[pid].to_numpy(float), color="0.6", lw=0.8, alpha=0.6)
        ax.loglog(lags, msd.mean(axis=1).to_numpy(float), color="C3", lw=2.5, label="mean")
        ax.legend()
    ax.set(xlabel="lag time (s)", ylabel="MSD (nm²)", title="Mean squared displacement per track")
    paths.append(_save(fig, out / "msd.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    if len(frames):
        ax.plot(frames["time_s"], frames["count"], color="C0", label="count")
        ax2 = ax.twinx()
        ax2.plot(frames["time_s"], 100 * frames["coverage"], color="C1", label="coverage")
        ax2.set_ylabel("coverage (%)", color="C1")
    ax.set(xlabel="time (s)", ylabel="particles", title="Particle count and coverage")
    paths.append(_save(fig, out / "counts.png"))
    return paths


def write_drift(table: Any, corrector: Any, out: Path) -> list[Path]:
    """``drift.csv`` (image_id, time_s, drift x/y nm, registration error) and ``drift.png``
    (drift against time; with corrections, what the stage moved in all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = out / "drift.csv"
    table.to_csv(csv_path, index=False, float_format="%.6g")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(table["time_s"], table["drift_x_nm"], label="drift x")
    ax.plot(table["time_s"], table["drift_y_nm"], label="drift y")
    title = "Specimen drift (from the frames)"
    if corrector is not None:
        title += f"; {corrector.moves} corrections"
    ax.set(xlabel="time (s)", ylabel="nm", title=title)
    ax.legend()
    return [csv_path, _save(fig, out / "drift.png")]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_gif(
    frames: list[tuple[int, np.ndarray]],
    analysis: Analysis,
    out: Path,
    pixel_size_nm: float,
    fps: float = 8.0,
) -> Path | None:
    """``overlay.gif`` from sampled (image_id, pixels) frames: each particle of that frame
    circled, with its track id. None when no frame was sampled."""
    if not frames:
        return None
    import cv2
    from PIL import Image

    tracks = analysis.tracks
    by_image = dict(iter(tracks.groupby("image_id"))) if len(tracks) else {}
    images = []
    for image_id, pixels in frames:
        p = pixels.astype(np.float32)
        lo, hi = np.percentile(p, (1, 99))
        gray = np.clip((p - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        scale = GIF_SIDE / max(gray.shape)
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB)
        rows = by_image.get(image_id)
        for _, row in rows.iterrows() if rows is not None else ():
            centre = (int(row["x_px"] * scale), int(row["y_px"] * scale))
            radius = max(2, int(row["diameter_nm"] / 2 / pixel_size_nm * scale))
            colour = _colour(int(row["particle"]))
            cv2.circle(rgb, centre, radius, colour, 1)
            cv2.putText(rgb, str(int(row["particle"])), (centre[0] + radius, centre[1]),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.3, colour, 1)  # fmt: skip
        images.append(Image.fromarray(rgb))
    path = out / "overlay.gif"
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=0)  # fmt: skip
    return path


def _colour(pid: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(pid)
    return tuple(int(v) for v in rng.integers(80, 256, 3))  # type: ignore[return-value]
