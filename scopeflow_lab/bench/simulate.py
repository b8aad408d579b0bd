"""``scopeflow bench simulate``: milliseconds per frame of each simulator.

Each case renders frames the way a live adapter does (``acquire()`` on a simulator built once)
and reports the median and p90 over repeated frames after a warm-up. Beside each, in the same
run, the naive baseline for its noise step alone — numpy's Poisson sampler on a frame of the
same size — shows what a straightforward implementation spends before any physics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scopeflow_lab.bench.timing import sample_ms

WARMUP = 3


@dataclass
class Case:
    """One benchmark case: a name, a frame shape, a target budget and a frame factory."""

    name: str
    shape: tuple[int, ...]
    target_ms: float | None
    make: Callable[[], Callable[[], object]]  # builds the simulator, returns acquire()


def _sem(size: int, defocus_dof: float) -> Callable[[], object]:
    from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

    dof_um = 10.0 / 3.0  # default 10 nm pixels at 3 mrad
    sem = SimulatedSEM(
        SEMConfig(
            frame_shape=(size, size),
            settle_s=0.0,
            seed=1,
            start_wd_um=5000.0 + defocus_dof * dof_um,
        )
    )
    return sem.acquire


def _optical() -> Callable[[], object]:
    from scopeflow_lab.sim.optical import OpticalConfig, SimulatedOpticalMicroscope

    scope = SimulatedOpticalMicroscope(OpticalConfig(seed=1))
    return scope.acquire


def _insitu(size: int) -> Callable[[], object]:
    from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera

    clock = [0.0]

    def tick() -> float:  # a new frame on every call: advance the camera's clock one period
        clock[0] += 1.0 / cam.config.fps
        return clock[0]

    cam = SimulatedInSituCamera(
        InSituConfig(frame_shape=(size, size), seed=1), clock=tick, sleep=lambda s: None
    )
    return cam.acquire


CASES = [
    Case("sem 1024², 1 DoF", (1024, 1024), 30.0, lambda: _sem(1024, 1.0)),
    # 3 DoF: blur disks of 6–16 px take the full-resolution FFT path, the slowest defocus.
    Case("sem 1024², 3 DoF", (1024, 1024), 30.0, lambda: _sem(1024, 3.0)),
    Case("chip tile 1920×1200 RGB", (1200, 1920, 3), 100.0, _optical),
    Case("insitu 1024²", (1024, 1024), 30.0, lambda: _insitu(1024)),
    Case("insitu 2048²", (2048, 2048), None, lambda: _insitu(2048)),
]


def _poisson_baseline(shape: tuple[int, ...], repeats: int) -> list[float]:
    rng = np.random.default_rng(0)
    lam = np.full(shape, 50.0, np.float32)
    return sample_ms(lambda: rng.poisson(lam), repeats, WARMUP)


def run(repeats: int = 20, progress=print) -> list[dict]:
    """Time every case; one row each."""
    rows = []
    for case in CASES:
        progress(f"  {case.name}: building and timing {repeats} frames …")
        acquire = case.make()
        times = sample_ms(acquire, repeats, WARMUP)
        base = _poisson_baseline(case.shape, max(5, repeats // 2))
        median = float(np.median(times))
        rows.append(
            {
                "case": case.name,
                "frame_shape": list(case.shape),
                "frames": repeats,
                "ms_median": median,
                "ms_p90": float(np.percentile(times, 90)),
                "frames_per_s": 1e3 / median,
                "target_ms": case.target_ms,
                "meets_target": None if case.target_ms is None else median <= case.target_ms,
                "numpy_poisson_ms": float(np.median(base)),
                "vs_numpy_poisson": float(np.median(base)) / median,
            }
        )
    return rows
