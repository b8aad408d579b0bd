"""Wall-clock timing shared by the benchmarks: warm up, then time each call."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def sample_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls
    (allocations, kernel selection and caches settle in those)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median of :func:`sample_ms`."""
    return float(np.median(sample_ms(fn, repeats, warmup)))
