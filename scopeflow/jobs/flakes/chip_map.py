"""The chip map: the scanned tiles, the focus surface and every flake coloured by class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from scopeflow.jobs.flakes.catalog import Catalog
from scopeflow.jobs.flakes.focus_surface import FocusSurface


def draw_chip_map(path: Path, catalog: Catalog, meta: dict[str, Any]) -> Path:
    """Write the chip map PNG: tiles (blurred ones hatched), the focus surface as contours with
    its focus points, and the flakes as markers sized by area, coloured by class."""
    x0, y0, x1, y1 = chart_extent(meta)
    aspect = (y1 - y0) / max(x1 - x0, 1e-9)
    fig, ax = plt.subplots(figsize=(9, max(4.0, 6.5 * aspect) + 1.5), constrained_layout=True)
    if meta.get("focus_surface"):
        surface = FocusSurface(
            meta["focus_surface"]["kind"],
            tuple(meta["focus_surface"]["coefficients"]),
            tuple(meta["focus_surface"]["centre_um"]),
            meta["focus_surface"]["rms_um"],
            meta["focus_surface"]["points"],
        )
        gx, gy = np.meshgrid(np.linspace(x0, x1, 80), np.linspace(y0, y1, 80))
        gz = np.vectorize(surface.predict)(gx, gy)
        cs = ax.contourf(gx / 1e3, gy / 1e3, gz, levels=12, cmap="Greys", alpha=0.35)
        fig.colorbar(cs, ax=ax, label="focus surface Z (µm)", orientation="horizontal",
                     shrink=0.6, pad=0.02)  # fmt: skip
        px = [p[0] / 1e3 for p in meta["focus_points"]]
        py = [p[1] / 1e3 for p in meta["focus_points"]]
        ax.plot(px, py, "k+", ms=10, label="focus points")
    rx0, ry0, rx1, ry1 = meta["region_um"]
    ax.add_patch(
        Rectangle((rx0 / 1e3, ry0 / 1e3), (rx1 - rx0) / 1e3, (ry1 - ry0) / 1e3, fill=False,
                  ls="--", lw=1.0, ec="tab:blue", label="region asked for")
    )  # fmt: skip
    for tile in meta["tiles"]:
        fw, fh = tile["width_um"], tile["height_um"]
        ax.add_patch(
            Rectangle(
                ((tile["x_um"] - fw / 2) / 1e3, (tile["y_um"] - fh / 2) / 1e3),
                fw / 1e3,
                fh / 1e3,
                fill=False,
                lw=0.4,
                ec="tab:red" if tile["blurred"] else "0.6",
                hatch="//" if tile["blurred"] else None,
            )
        )
    classes = sorted({e.flake_class for e in catalog.entries})
    colours = plt.get_cmap("tab10")
    for k, name in enumerate(classes):
        sel = [e for e in catalog.entries if e.flake_class == name]
        ax.scatter(
            [e.x_um / 1e3 for e in sel],
            [e.y_um / 1e3 for e in sel],
            s=[max(6.0, min(120.0, e.area_um2 / 4)) for e in sel],
            color=colours(k % 10),
            label=f"{name} ({len(sel)})",
            edgecolors="k",
            linewidths=0.3,
        )
    ax.set_xlim(x0 / 1e3, x1 / 1e3)
    ax.set_ylim(y0 / 1e3, y1 / 1e3)
    ax.set_aspect("equal")
    ax.set_xlabel("stage x (mm)")
    ax.set_ylabel("stage y (mm)")
    ax.set_title(f"{len(catalog.entries)} flakes on {len(meta['tiles'])} tiles")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def chart_extent(meta: dict[str, Any]) -> tuple[float, float, float, float]:
    """The region and every scanned tile, µm."""
    x0, y0, x1, y1 = meta["region_um"]
    for t in meta["tiles"]:
        x0 = min(x0, t["x_um"] - t["width_um"] / 2)
        x1 = max(x1, t["x_um"] + t["width_um"] / 2)
        y0 = min(y0, t["y_um"] - t["height_um"] / 2)
        y1 = max(y1, t["y_um"] + t["height_um"] / 2)
    return x0, y0, x1, y1
