"""Figures people look at: the autofocus trace."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on lab servers or CI
import matplotlib.pyplot as plt


def focus_trace(outcome: dict, path: Path, title: str = "autofocus") -> Path:
    """Plot WD and focus score per frame (with the true focus when known) to a PNG."""
    records = outcome["records"]
    frames = list(range(1, len(records) + 1))
    fig, (ax_wd, ax_score) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, constrained_layout=True
    )
    ax_wd.plot(frames, [r["wd_um"] for r in records], "o-", color="tab:blue", label="WD")
    truth = [r["true_focus_wd_um"] for r in records]
    dof = outcome.get("dof_um")
    if all(t is not None for t in truth) and truth:
        ax_wd.plot(frames, truth, "--", color="tab:green", label="true focus")
        if dof:
            lo = [t - 0.5 * dof for t in truth]
            hi = [t + 0.5 * dof for t in truth]
            ax_wd.fill_between(frames, lo, hi, color="tab:green", alpha=0.15, label="±0.5 DoF")
    if outcome.get("final_wd_um") is not None:
        ax_wd.axhline(outcome["final_wd_um"], color="tab:red", lw=0.8, label="final WD")
    ax_wd.set_ylabel("working distance (µm)")
    ax_wd.legend(loc="best", fontsize=8)
    ax_score.plot(frames, [r["score"] for r in records], "s-", color="tab:orange")
    ax_score.set_ylabel(f"focus score ({outcome.get('evaluator') or '?'})")
    ax_score.set_xlabel("frame (every acquired frame)")
    ax_wd.set_title(f"{title}: {outcome.get('stop_reason')} after {len(records)} frames")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
