"""What every training script shares: seeding, progress with an ETA, loss-curve PNGs."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and make torch use deterministic CPU kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class TrainLog:
    """Loss history and a progress line every ``every_s`` seconds, with an ETA."""

    total_steps: int
    progress: Callable[[str], None] = print
    every_s: float = 5.0
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    _t0: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def log(self, step: int, **values: float) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append((step, float(value)))
        now = time.monotonic()
        if now - self._last >= self.every_s or step + 1 == self.total_steps:
            self._last = now
            done = (step + 1) / self.total_steps
            eta = (now - self._t0) * (1 - done) / max(done, 1e-9)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            self.progress(
                f"  step {step + 1}/{self.total_steps} ({done:.0%}), {shown}, eta {eta:.0f} s"
            )

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._t0


def save_loss_curve(history: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """Plot every logged series (log scale) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for key, points in history.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2))
