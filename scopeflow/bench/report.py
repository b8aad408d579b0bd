"""Entry points of ``scopeflow bench``: run, print a table, write JSON."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

from scopeflow.bench import transport

# Targets from the transport issue, for the table's verdict column.
TARGET_IPC_2048_GB_S = 2.4
TARGET_VS_PICKLE = 2.0
TARGET_LOOP_P99_MS = 20.0


def run_transport_bench(json_path: Path | None = None, quick: bool = False,
                        progress=print) -> int:
    """Throughput table and loop latency; returns 0 (figures are reported, not judged)."""
    sizes = (256, 512) if quick else transport.SIZES
    bytes_per_run = 5e7 if quick else transport.BYTES_PER_RUN
    progress("transport throughput (uint16 frames, zero-copy vs pickled vs memcpy):")
    rows = transport.throughput(sizes=sizes, bytes_per_run=bytes_per_run, progress=progress)
    progress("closed-loop latency (acquisition → WD command sent), 512² frames:")
    latency = transport.loop_latency(min_samples=40 if quick else 500, progress=progress)
    result = {
        "transport": [{**asdict(r), "vs_pickle": r.vs_pickle} for r in rows],
        "loop_latency_ms": latency,
        "machine": {"cpu_count": __import__("os").cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "quick": quick,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _print_table(rows, latency, progress)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
        progress(f"wrote {json_path}")
    return 0


def run_simulate_bench(json_path: Path | None = None, repeats: int = 20,
                       progress=print) -> int:
    """Milliseconds per frame of each simulator, with the naive noise baseline."""
    from scopeflow.bench import simulate

    progress("simulators, ms per frame (median of repeated acquire() after warm-up):")
    rows = simulate.run(repeats=repeats, progress=progress)
    head = (f"{'case':<26} {'median ms':>10} {'p90 ms':>8} {'frames/s':>9} {'target':>7} "
            f"{'np.poisson ms':>14}")
    progress("")
    progress(head)
    progress("-" * len(head))
    for r in rows:
        target = "—" if r["target_ms"] is None else f"≤{r['target_ms']:g}"
        progress(f"{r['case']:<26} {r['ms_median']:>10.1f} {r['ms_p90']:>8.1f} "
                 f"{r['frames_per_s']:>9.1f} {target:>7} {r['numpy_poisson_ms']:>14.1f}")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({
            "simulate": rows, "repeats": repeats,
            "machine": {"cpu_count": __import__("os").cpu_count(),
                        "platform": platform.platform(), "python": platform.python_version()},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
        progress(f"wrote {json_path}")
    return 0


def _print_table(rows, latency: dict, progress) -> None:
    head = (f"{'endpoint':<8} {'frame':>11} {'frames/s':>10} {'GB/s':>7} {'pickle':>7} "
            f"{'memcpy':>7} {'×pickle':>8}")
    progress("")
    progress(head)
    progress("-" * len(head))
    for r in rows:
        shape = f"{r.frame_shape[0]}x{r.frame_shape[1]}"
        progress(f"{r.endpoint:<8} {shape:>11} {r.frames_per_s:>10.1f} {r.gb_per_s:>7.2f} "
                 f"{r.pickle_gb_per_s:>7.2f} {r.memcpy_gb_per_s:>7.2f} {r.vs_pickle:>8.2f}")
    progress("")
    progress(f"loop latency over {latency['n']} commands ({latency['autofocus_runs']} autofocus "
             f"runs): p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms, "
             f"max {latency['max']:.2f} ms")
    ipc = [r for r in rows if r.endpoint == "ipc" and r.frame_shape == [2048, 2048]]
    if ipc:
        r = ipc[0]
        progress(f"targets: ipc 2048² {r.gb_per_s:.2f} GB/s (≥ {TARGET_IPC_2048_GB_S}), "
                 f"{r.vs_pickle:.2f}× pickle (≥ {TARGET_VS_PICKLE}), loop p99 "
                 f"{latency['p99']:.2f} ms (≤ {TARGET_LOOP_P99_MS})")
