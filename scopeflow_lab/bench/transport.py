"""``scopeflow bench transport``: frame throughput per endpoint and frame size, and the
closed-loop latency of the autofocus pipeline.

Throughput: a sender (another process for ipc/tcp, a thread for inproc, which cannot cross
processes) pushes uint16 frames as protocol ``image`` messages, zero-copy; the receiver decodes,
validates and views each one as an array. Beside it, in the same run: the same array sent
pickled (``send_pyobj``/``recv_pyobj``) and a plain in-memory copy of it (``np.copyto``).
Rates are measured at the receiver from the first frame to the last; each figure is the median
of ``REPEATS`` runs (two processes and ZeroMQ's I/O threads share two cores here, so single runs
scatter by ±30 %), and the JSON keeps every run.

Loop latency: acquisition and inference nodes run as separate processes over ipc; the control
runner in this process runs autofocus repeatedly and records, for every WD command it sends,
the time from the acquisition of the frame that caused it to the command leaving the client.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from scopeflow.schemas.codec import decode, encode
from scopeflow.schemas.series import ImageHeader
from scopeflow.schemas.state import MicroscopeState

SIZES = (512, 2048, 4096)
SCHEMES = ("inproc", "ipc", "tcp")
BYTES_PER_RUN = 1.5e9
MIN_FRAMES = 20
REPEATS = 3
_STATE = MicroscopeState(
    wd_um=5000.0,
    wd_target_um=5000.0,
    settled=True,
    stage_x_um=0.0,
    stage_y_um=0.0,
    magnification=25_000.0,
    pixel_size_nm=10.0,
)


@dataclass
class Throughput:
    """One row of the throughput table."""

    endpoint: str
    frame_shape: list[int]
    dtype: str
    frames: int
    frames_per_s: float
    gb_per_s: float
    pickle_gb_per_s: float
    memcpy_gb_per_s: float
    runs_gb_per_s: list[float]
    pickle_runs_gb_per_s: list[float]

    @property
    def vs_pickle(self) -> float:
        return self.gb_per_s / self.pickle_gb_per_s if self.pickle_gb_per_s else float("inf")


def _frame(side: int) -> np.ndarray:
    return np.random.default_rng(side).integers(0, 4096, (side, side), dtype=np.uint16)


def _header(image_id: int, side: int) -> ImageHeader:
    return ImageHeader(
        series_id=0,
        series_unique_id="bench",
        image_id=image_id,
        shape=(side, side),
        dtype="uint16",
        start_time_ns=0,
        stop_time_ns=0,
        monotonic_ns=time.monotonic_ns(),
        command_seq=0,
        state=_STATE,
    )


def _send_frames(ctx: zmq.Context | None, endpoint: str, side: int, n: int, pickled: bool) -> None:
    """Sender side: connect a PUSH and send ``n`` frames as fast as possible."""
    own = ctx is None
    ctx = ctx or zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.setsockopt(zmq.LINGER, 10_000)
    sock.connect(endpoint)
    arr = _frame(side)
    for i in range(n):
        if pickled:
            sock.send_pyobj(arr, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            sock.send_multipart(encode(_header(i, side), [arr]), copy=False)
    sock.close()
    if own:
        ctx.term()


def _measure(scheme: str, side: int, n: int, pickled: bool, workdir: Path) -> float:
    """Frames per second received over ``scheme``."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 4)
    pull.setsockopt(zmq.LINGER, 0)
    if scheme == "inproc":
        endpoint = f"inproc://bench-{side}-{int(pickled)}"
        pull.bind(endpoint)
        sender: threading.Thread | mp.Process = threading.Thread(
            target=_send_frames, args=(ctx, endpoint, side, n, pickled)
        )
    else:
        endpoint = f"ipc://{workdir}/b{side}" if scheme == "ipc" else "tcp://127.0.0.1:*"
        pull.bind(endpoint)
        endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        sender = mp.get_context("spawn").Process(
            target=_send_frames, args=(None, endpoint, side, n, pickled)
        )
    sender.start()
    t_first = t_last = 0.0
    try:
        for i in range(n):
            if not pull.poll(60_000):
                raise RuntimeError(f"{scheme} {side}²: sender stalled after {i} frames")
            if pickled:
                arr = pull.recv_pyobj()
            else:
                arr = decode(pull.recv_multipart(copy=False)).array()
            assert arr.shape == (side, side)
            if i == 0:
                t_first = time.perf_counter()
            t_last = time.perf_counter()
    finally:
        sender.join(30)
        pull.close()
        ctx.term()
    return (n - 1) / (t_last - t_first)


def _memcpy_gb_per_s(side: int, repeats: int = 20) -> float:
    src = _frame(side)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = time.perf_counter()
    for _ in range(repeats):
        np.copyto(dst, src)
    return repeats * src.nbytes / (time.perf_counter() - t) / 1e9


def throughput(
    sizes=SIZES, schemes=SCHEMES, bytes_per_run: float = BYTES_PER_RUN, progress=print
) -> list[Throughput]:
    """Measure every (endpoint, size) pair, zero-copy beside pickled, plus memcpy."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="sfb-", dir="/tmp") as tmp:
        for side in sizes:
            nbytes = side * side * 2
            n = max(MIN_FRAMES, int(bytes_per_run / nbytes))
            memcpy = _memcpy_gb_per_s(side)
            for scheme in schemes:
                progress(
                    f"  {scheme:>6} {side}x{side}: {REPEATS}× {n} frames zero-copy and pickled …"
                )
                runs = [_measure(scheme, side, n, False, Path(tmp)) for _ in range(REPEATS)]
                pickled = [
                    _measure(scheme, side, max(MIN_FRAMES, n // 3), True, Path(tmp))
                    for _ in range(REPEATS)
                ]
                fps, pickle_fps = float(np.median(runs)), float(np.median(pickled))
                rows.append(
                    Throughput(
                        scheme,
                        [side, side],
                        "uint16",
                        n,
                        fps,
                        fps * nbytes / 1e9,
                        pickle_fps * nbytes / 1e9,
                        memcpy,
                        [r * nbytes / 1e9 for r in runs],
                        [r * nbytes / 1e9 for r in pickled],
                    )
                )
    return rows


def loop_latency(min_samples: int = 500, frame_size: int = 512, progress=print) -> dict:
    """Closed-loop latency (acquisition timestamp → WD command sent) over real processes.

    Runs autofocus repeatedly from alternating start offsets until ``min_samples`` WD commands
    have been timed. Returns p50/p99/mean/max in ms and the number of samples.
    """
    import subprocess
    import sys

    from scopeflow.jobs.autofocus import AutofocusJob
    from scopeflow.jobs.runner import RunnerConfig, run_job
    from scopeflow.scopes.remote import RemoteScope

    samples: list[float] = []
    runs = 0
    with tempfile.TemporaryDirectory(prefix="sfl-", dir="/tmp") as tmp:
        frames, commands, results = (f"ipc://{tmp}/{n}" for n in ("f", "c", "r"))
        base = [sys.executable, "-m", "scopeflow", "--log-level", "WARNING", "node"]
        procs = [
            subprocess.Popen(
                [
                    *base,
                    "acquire",
                    "--frames",
                    frames,
                    "--commands",
                    commands,
                    "--frame-size",
                    str(frame_size),
                    "--settle-s",
                    "0",
                ]
            ),
            subprocess.Popen([*base, "infer", "--frames", frames, "--results", results]),
        ]
        scope = RemoteScope(commands, results, timeout_s=10.0)
        try:
            start = None
            while len(samples) < min_samples:
                state = scope.status().state if start is None else None
                if state is not None:
                    start = state.wd_target_um
                    dof = state.depth_of_field_um() or 1.0
                offset = (10.0 if runs % 2 == 0 else -7.0) * dof
                scope.set_focus(start + offset)
                outcome, stats = run_job(AutofocusJob(), scope, RunnerConfig(ready_timeout_s=30))
                if outcome.reason not in ("converged", "limit"):
                    raise RuntimeError(
                        f"autofocus run {runs} ended {outcome.reason}: {outcome.message}"
                    )
                samples.extend(stats.loop_latency_ms or [])
                runs += 1
                progress(
                    f"  loop latency: {len(samples)}/{min_samples} samples ({runs} autofocus runs)"
                )
        finally:
            scope.close()
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)
    arr = np.asarray(samples)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "max": float(arr.max()),
        "n": int(arr.size),
        "frame_shape": [frame_size, frame_size],
        "autofocus_runs": runs,
    }
