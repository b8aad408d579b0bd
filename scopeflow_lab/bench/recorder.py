"""``scopeflow bench recorder``: which writer, and does the recorder keep every frame.

1. **Writers alone**, in one process, on the in-situ simulator's frames (uint16, 512² and
   1024²): a raw ``tofile`` (the floor: no format, no compression), zarr-python v3 and
   tensorstore (our writer, :class:`~scopeflow.recording.ome_zarr.OmeZarrWriter`) with the same
   codec (Blosc-LZ4, bit shuffle) and chunks, and ome-writers with its tensorstore backend.
2. **End to end**, two processes as a user runs them: ``scopeflow node acquire`` (a pooled
   in-situ camera at 300 fps 512² and at 100 fps 1024²) and ``scopeflow node record``, for
   ``--seconds`` each. Frames produced (the series' own count) against frames in the dataset,
   overruns (the acquisition node's Prometheus counter, scraped), the camera's achieved rate,
   the recorder's resident memory over the run (its slope), bytes on disk. Each dataset is
   deleted after it is checked, so long runs fit on the disk.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

CASES = ((512, 300.0), (1024, 100.0))  # (side, fps): the two camera modes
WRITER_FRAMES = {512: 900, 1024: 240}
WRITER_REPEATS = 3  # interleaved; the median (the page cache makes single runs scatter 2×)


def _pool(side: int, n: int = 16) -> list[np.ndarray]:
    from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera

    cam = SimulatedInSituCamera(InSituConfig(frame_shape=(side, side)))
    return [np.ascontiguousarray(cam.acquire().pixels) for _ in range(n)]


def _disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _timed_writer(name: str, frames: int, pool: list[np.ndarray], write, root: Path) -> dict:
    path = root / name
    t0 = time.perf_counter()
    error = None
    try:
        write(path, frames, pool)
    except Exception as exc:  # a writer that cannot do it is reported, not hidden
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    seconds = time.perf_counter() - t0
    # ome-writers appends its own suffix to the path it is given
    written = path if path.exists() else path.with_name(path.name + ".ome.zarr")
    raw_mb = frames * pool[0].nbytes / 1e6
    row = {
        "writer": name,
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds if error is None else None,
        "mb_per_s": raw_mb / seconds if error is None else None,
        "compression": raw_mb / _disk_mb(written) if error is None and written.exists() else None,
        "error": error,
    }
    if written.is_dir():
        shutil.rmtree(written, ignore_errors=True)
    else:
        written.unlink(missing_ok=True)
    return row


def _raw(path: Path, n: int, pool: list[np.ndarray]) -> None:
    with open(path, "wb") as fh:
        for i in range(n):
            pool[i % len(pool)].tofile(fh)


def _zarr_python(path: Path, n: int, pool: list[np.ndarray]) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    side = pool[0].shape[0]
    k = max(1, (8 << 20) // pool[0].nbytes)
    arr = zarr.create_array(
        str(path), shape=(n, side, side), chunks=(k, side, side), dtype="uint16",
        compressors=BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle"), fill_value=0,
    )  # fmt: skip
    block = np.empty((k, side, side), np.uint16)
    for i in range(n):
        block[i % k] = pool[i % len(pool)]
        if i % k == k - 1 or i == n - 1:
            start = i - i % k
            arr[start : i + 1] = block[: i % k + 1]


def _ome_writers(chunk: int):
    def write(path: Path, n: int, pool: list[np.ndarray]) -> None:
        import ome_writers as ow

        side = pool[0].shape[0]
        settings = ow.AcquisitionSettings(
            root_path=str(path),
            dimensions=[
                ow.Dimension(name="t", count=None, chunk_size=chunk, type="time"),
                ow.Dimension(name="y", count=side, type="space"),
                ow.Dimension(name="x", count=side, type="space"),
            ],
            dtype="uint16",
            format=ow.OmeZarrFormat(backend="tensorstore"),
            compression="blosc-lz4",
        )
        with ow.create_stream(settings) as stream:
            for i in range(n):
                stream.append(pool[i % len(pool)])

    return write


def _ours(path: Path, n: int, pool: list[np.ndarray]) -> None:
    from scopeflow.recording.ome_zarr import FrameMeta, OmeZarrWriter

    writer = OmeZarrWriter(path, frame_shape=pool[0].shape, dtype="uint16", pixel_size_nm=0.5)
    nan = (float("nan"),) * 6
    for i in range(n):
        writer.append(pool[i % len(pool)], FrameMeta(i, i, i, i, nan))
    writer.close()


def writers(root: Path, quick: bool, progress) -> list[dict[str, Any]]:
    """Each writer on the same frames, the runs interleaved; per writer the median run. Every
    writer ends when its data are handed to the operating system (no fsync), as a recorder's
    do."""
    rows = []
    candidates = [
        ("raw tofile (no format)", _raw),
        ("scopeflow: tensorstore zarr3", _ours),
        ("zarr-python 3", _zarr_python),
        ("ome-writers, tensorstore, 1 frame/chunk", _ome_writers(1)),
        ("ome-writers, tensorstore, 16 frames/chunk", _ome_writers(16)),
    ]
    for side, _ in CASES:
        frames = WRITER_FRAMES[side] // (8 if quick else 1)
        pool = _pool(side)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in candidates}
        for _ in range(1 if quick else WRITER_REPEATS):
            for name, write in candidates:
                runs[name].append(_timed_writer(f"w{len(rows)}", frames, pool, write, root))
        for name, _ in candidates:
            done = [r for r in runs[name] if r["fps"] is not None]
            row = sorted(done, key=lambda r: r["fps"])[len(done) // 2] if done else runs[name][0]
            row = {"side": side, **row, "writer": name, "repeats": len(runs[name]),
                   "fps_runs": [r["fps"] for r in runs[name]]}  # fmt: skip
            rows.append(row)
            said = f"{row['fps']:.0f} fps" if row["fps"] else row["error"]
            progress(f"  {side}² {name}: {said}")
    return rows


# -- end to end ---------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _scrape(port: int, name: str) -> float:
    """Counter ``scopeflow_NAME`` from a node's Prometheus endpoint (prometheus_client's own
    text parser), summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == f"scopeflow_{name}":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def end_to_end(side: int, fps: float, seconds: float, root: Path, progress) -> dict[str, Any]:
    ipc = Path(tempfile.mkdtemp(prefix="sfrec-", dir="/tmp"))
    lossless, port = f"ipc://{ipc}/lossless", _free_port()
    out = root / f"rec-{side}.ome.zarr"
    sf = [sys.executable, "-m", "scopeflow"]
    acquire = subprocess.Popen(
        [*sf, "node", "acquire", "--device", f"sim:insitu,frame_size={side},fps={fps},pool=32",
         "--mode", "continuous", "--rate", str(fps), "--frames", f"ipc://{ipc}/frames",
         "--commands", f"ipc://{ipc}/commands", "--lossless", lossless,
         "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    recorder = subprocess.Popen(
        [*sf, "node", "record", "--lossless", lossless, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rss: list[tuple[float, float]] = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            if (mb := _rss_mb(recorder.pid)) is not None:
                rss.append((time.monotonic() - t0, mb))
        overruns = _scrape(port, "overruns")
        sent = _scrape(port, "frames_sent")
        acquire.send_signal(signal.SIGINT)
        acquire.wait(60)
        deadline = time.monotonic() + 60
        attrs: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if (out / "zarr.json").exists():
                attrs = json.loads((out / "zarr.json").read_text())["attributes"]["scopeflow"]
                if attrs.get("status") != "recording":
                    break
            time.sleep(0.2)
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    finally:
        for p in (acquire, recorder):
            if p.poll() is None:
                p.kill()
        shutil.rmtree(ipc, ignore_errors=True)
    import zarr

    group = zarr.open_group(str(out), mode="r")
    recorded = group["0"].shape[0]
    starts = group["frames/ids"][:recorded, 1]
    # The camera's rate from its own timestamps (the run's start-up excluded).
    camera_fps = (len(starts) - 1) / ((starts[-1] - starts[0]) / 1e9) if len(starts) > 1 else None
    produced = int(attrs.get("images_sent", -1))
    disk = _disk_mb(out)
    shutil.rmtree(out, ignore_errors=True)
    steady = rss[len(rss) // 4 :]  # after the start-up (imports, first chunks)
    slope = None
    if len(steady) > 2:
        slope = float(np.polyfit([t / 60 for t, _ in steady], [m for _, m in steady], 1)[0])
    row = {
        "side": side,
        "fps_asked": fps,
        "seconds": seconds,
        "frames_produced": produced,
        "frames_sent_live": sent,
        "frames_recorded": recorded,
        "frames_lost": int(attrs.get("frames_lost", -1)),
        "overruns": int(overruns),
        "status": attrs.get("status"),
        "camera_fps": camera_fps,
        "mb_per_s": recorded * side * side * 2 / 1e6 / seconds,
        "disk_mb": disk,
        "recorder_rss_mb": [rss[0][1], rss[-1][1]] if rss else None,
        "recorder_rss_slope_mb_per_min": slope,
    }
    progress(
        f"  {side}² at {fps:.0f} fps for {seconds:.0f} s: produced {produced}, "
        f"recorded {recorded}, lost {row['frames_lost']}, overruns {row['overruns']} "
        f"({row['status']})"
    )
    return row


def run_recorder_bench(json_path: Path | None, seconds: float, quick: bool) -> int:
    """Print both tables; write JSON; exit 1 when a frame was lost end to end."""
    progress = print
    root = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    t0 = time.time()
    try:
        progress("writers alone (in-situ simulator frames, uint16):")
        writer_rows = writers(root, quick, progress)
        progress("end to end (scopeflow node acquire → scopeflow node record, two processes):")
        secs = 5.0 if quick else seconds
        e2e = [end_to_end(side, fps, secs, root, progress) for side, fps in CASES]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'writer':<46} {'side':>5} {'fps':>7} {'MB/s':>7} {'× raw':>6} {'compr.':>7}")
    raw = {r["side"]: r["fps"] for r in writer_rows if r["writer"].startswith("raw")}
    for r in writer_rows:
        if r["fps"] is None:
            print(f"{r['writer']:<46} {r['side']:>5}   failed: {r['error']}")
            continue
        print(f"{r['writer']:<46} {r['side']:>5} {r['fps']:>7.0f} {r['mb_per_s']:>7.0f} "
              f"{r['fps'] / raw[r['side']]:>6.2f} {r['compression'] or 0:>7.2f}")  # fmt: skip
    print(f"\n{'case':<18} {'produced':>9} {'recorded':>9} {'lost':>5} {'overruns':>8} "
          f"{'camera fps':>10} {'MB/s':>6} {'RSS MB':>13} {'MB/min':>7}")  # fmt: skip
    for r in e2e:
        mb = r["recorder_rss_mb"]
        rss = "—" if not mb else f"{mb[0]:.0f}→{mb[1]:.0f}"
        slope = r["recorder_rss_slope_mb_per_min"]
        print(f"{r['side']}² @ {r['fps_asked']:.0f} fps".ljust(18)
              + f" {r['frames_produced']:>9} {r['frames_recorded']:>9} {r['frames_lost']:>5} "
              f"{r['overruns']:>8} {r['camera_fps'] or 0:>10.1f} {r['mb_per_s']:>6.0f} {rss:>13} "
              f"{'—' if slope is None else f'{slope:.1f}':>7}")  # fmt: skip
    doc = {
        "bench": "recorder",
        "quick": quick,
        "seconds_per_case": 5.0 if quick else seconds,
        "writers": writer_rows,
        "end_to_end": e2e,
        "wall_s": time.time() - t0,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2))
        print(f"wrote {json_path}")
    ok = all(r["frames_recorded"] == r["frames_produced"] and r["frames_lost"] == 0 for r in e2e)
    return 0 if ok else 1
