"""Resident memory of the job's processes over a run, and its slope per thousand frames.

A long in-situ series must not grow any process (the issue's 200 000-frame case): the job
samples each child's resident set (Linux ``/proc/PID/status``: ``VmRSS``) with the camera's frame
count, and reports per process the first and last samples and the least-squares slope after
the warm-up (the first fifth of the run, where imports, pools and buffers fill).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_SAMPLES = 2048  # per process; beyond, every other sample is dropped (bounded over any run)
WARM_UP_FRACTION = 0.2


def rss_kb(pid: int) -> int | None:
    """Resident set size of a process (kB), or None where /proc is not there or it exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryTrace:
    """(frames, RSS) samples per named process; :meth:`report` gives their trend."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[int, int]]] = {}

    def sample(self, pids: dict[str, int], frames: int) -> None:
        for name, pid in pids.items():
            kb = rss_kb(pid)
            if kb is None:
                continue
            rows = self.samples.setdefault(name, [])
            rows.append((int(frames), kb))
            if len(rows) > MAX_SAMPLES:
                del rows[::2]

    def report(self) -> dict[str, dict[str, float | int | None]]:
        """Per process: samples, first/last RSS (MB), the frames spanned, and the slope after
        warm-up in kB per 1000 frames (None with too few samples or frames)."""
        out: dict[str, dict[str, float | int | None]] = {}
        for name, rows in self.samples.items():
            frames = np.array([r[0] for r in rows], float)
            kb = np.array([r[1] for r in rows], float)
            start = int(len(rows) * WARM_UP_FRACTION)
            f, k = frames[start:], kb[start:]
            slope = None
            if len(f) >= 5 and f[-1] - f[0] >= 1000:
                slope = float(np.polyfit(f, k, 1)[0] * 1000.0)
            out[name] = {
                "samples": len(rows),
                "rss_first_mb": round(kb[0] / 1024.0, 1),
                "rss_last_mb": round(kb[-1] / 1024.0, 1),
                "rss_max_mb": round(kb.max() / 1024.0, 1),
                "frames_after_warm_up": int(f[-1] - f[0]) if len(f) else 0,
                "slope_kb_per_1k_frames": None if slope is None else round(slope, 2),
            }
        return out
