"""The ``insitu`` job: record every frame, analyse every frame, track the particles — live.

``scopeflow run insitu --scope sim:insitu --fps 300 --frame-size 512 --duration 60
--record D/rec.ome.zarr --out D`` runs, as processes on this machine:

- the camera: ``scopeflow node acquire`` in continuous mode with two lossless streams, one for
  the recorder and one for the analysis workers (a local scope's device; with
  ``--scope remote:…`` the user's own acquisition node, named by ``--lossless``/``--work``/
  ``--frames-endpoint``);
- the recorder (``scopeflow node record``, with ``--record``);
- ``--workers`` analysis workers (``scopeflow node infer --work … --model MODEL[,MODEL]``)
  sharing the every-frame stream;

and, in this process, the collector: detections from every worker put back in frame order
(:class:`~scopeflow.jobs.insitu.order.InOrder`; a frame whose result never comes is reported
missing), linked into tracks live (:class:`~scopeflow.jobs.insitu.tracking.LiveTracker`), a
line of live rates a second, and a frame sampled now and then from the latest-only frame
stream for the overlay video. At the end (``--duration`` or Ctrl-C): the camera stops, the
recorder closes the dataset, the workers finish, and ``D/`` gets the tables, plots, video and
``outcome.json`` (``docs/insitu.md``). Exit 0 only when every frame produced was recorded
(with ``--record``) and analysed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from scopeflow.devices.remote import MicroscopeClient
from scopeflow.errors import UsageError
from scopeflow.jobs.insitu.drift import DriftCorrector, DriftEstimator, FieldMover
from scopeflow.jobs.insitu.memory import MemoryTrace
from scopeflow.jobs.insitu.order import InOrder
from scopeflow.jobs.insitu.outputs import write_drift, write_gif, write_plots, write_tables
from scopeflow.jobs.insitu.tracking import LiveTracker, TrackingConfig
from scopeflow.transport.streams import recv

SF = [sys.executable, "-m", "scopeflow"]
GIF_EVERY_S = 0.5  # a frame for the overlay video this often
GIF_MAX_FRAMES = 120
LATENCY_SAMPLES = 100_000  # latencies kept (later, every 10th frame replaces one)
DRIFT_EVERY_S = 0.25  # a drift estimate (and, with --drift correct, a correction) this often
FINISH_S = 60.0  # default: after the camera stops, time for queued frames to be analysed
DISPLAY_FPS = 4.0  # default rate of the latest-only display denoiser (--display-model)
#: the display denoiser bins larger frames to this side: at 1024² the full-size denoiser at
#: 4 fps took the workers from 29 to 23 fps (bench insitu, 2026-12-08)
DISPLAY_SIDE = 512


@dataclass
class InsituJob:
    """Live in-situ video: record every frame, analyse each on N workers, track particles.

    See the module doc."""

    out_dir: Path
    fps: float = 300.0
    frame_size: int = 512
    duration_s: float = 60.0
    record: Path | None = None
    model: str = "denoiser,particle_detector"
    workers: int = 1
    detect_pixel_nm: float | None = None  # the particle detector's working pixel (None: 0.06)
    pool: int = 0
    search_range_nm: float = 12.0
    memory: int = 3
    lossless: str | None = None
    work: str | None = None
    frames_endpoint: str | None = None
    drift: str = "estimate"  # off, estimate, correct
    drift_actuator: str = "auto"  # auto (beam shift where the microscope has one), beam, stage
    finish_s: float = FINISH_S
    display_model: str | None = None  # latest-only denoiser beside the workers (video, drift)
    display_fps: float = DISPLAY_FPS

    name = "insitu"
    needs: tuple[str, ...] = ()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("in-situ video")
        g.add_argument("--fps", type=float, default=300.0, help="camera frame rate (local scope)")
        g.add_argument("--frame-size", type=int, default=512, help="square frame side, px")
        g.add_argument("--duration", type=float, default=60.0, help="seconds to acquire")
        g.add_argument("--record", type=Path, default=None, help="OME-Zarr dataset to write")
        g.add_argument(
            "--model",
            default="denoiser,particle_detector",
            help="model or chain each worker runs on every frame",
        )
        g.add_argument(
            "--display-model",
            choices=["denoiser"],
            default=None,
            help="a latest-only node beside the workers: denoises the newest frame at most "
            "--display-fps times a second for the video and the drift estimate, so that the "
            "every-frame workers need not (e.g. --model particle_detector --display-model "
            "denoiser)",
        )
        g.add_argument(
            "--display-fps",
            type=float,
            default=DISPLAY_FPS,
            help="frames a second the display node denoises (default %(default)s)",
        )
        g.add_argument("--workers", type=int, default=1, help="analysis worker processes")
        g.add_argument(
            "--detect-pixel-nm",
            type=float,
            default=None,
            metavar="NM",
            help="particle detector: analyse frames finer than this binned to about it (1 for "
            "0.5 nm/px liquid-cell frames: a quarter of the cost; default 0.06)",
        )
        g.add_argument(
            "--pool",
            type=int,
            default=0,
            help="sim:insitu: replay this many rendered frames (rates the simulator cannot "
            "render live); 0: render every frame",
        )
        g.add_argument("--search-range-nm", type=float, default=12.0,
                       help="tracking: largest move of a particle between frames")  # fmt: skip
        g.add_argument("--memory", type=int, default=3,
                       help="tracking: frames a particle may vanish and keep its id")  # fmt: skip
        g.add_argument(
            "--finish-s",
            type=float,
            default=FINISH_S,
            help="after the camera stops, seconds to finish analysing the frames still queued "
            "(the rest is reported missing)",
        )
        g.add_argument(
            "--drift",
            choices=["off", "estimate", "correct"],
            default="estimate",
            help="specimen drift from the live frames: off, estimate (drift.csv, drift.png), or "
            "correct (moves through the acquisition node, within its limits)",
        )
        g.add_argument(
            "--drift-actuator",
            choices=["auto", "beam", "stage"],
            default="auto",
            help="what --drift correct moves: the beam (image) shift, handing off to the stage "
            "near the end of its range, or the stage alone; auto: beam where the microscope "
            "reports a beam shift (protocol 1.4), else stage",
        )
        g.add_argument(
            "--lossless",
            default=None,
            help="remote scope: its acquisition node's lossless endpoint (recorder)",
        )
        g.add_argument(
            "--work",
            default=None,
            help="remote scope: its acquisition node's work endpoint (workers)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InsituJob:
        if args.fps <= 0 or args.duration <= 0 or args.workers < 1 or args.frame_size < 64:
            raise UsageError("--fps and --duration must be > 0, --workers ≥ 1, --frame-size ≥ 64")
        if args.detect_pixel_nm is not None and not args.detect_pixel_nm > 0:
            raise UsageError("--detect-pixel-nm must be > 0")
        if not args.display_fps > 0:
            raise UsageError("--display-fps must be > 0")
        if args.record is not None and Path(args.record).exists():
            raise UsageError(f"--record {args.record} exists: record to a new path")
        return cls(
            out_dir=args.out, fps=args.fps, frame_size=args.frame_size, duration_s=args.duration,
            record=args.record, model=args.model, workers=args.workers, pool=args.pool,
            search_range_nm=args.search_range_nm, memory=args.memory, lossless=args.lossless,
            work=args.work, frames_endpoint=args.frames_endpoint, drift=args.drift,
            finish_s=args.finish_s, detect_pixel_nm=args.detect_pixel_nm,
            display_model=args.display_model, display_fps=args.display_fps,
            drift_actuator=args.drift_actuator,
        )  # fmt: skip

    # -- the run -------------------------------------------------------------------------------
    def run_pipeline(self, scope_spec: str) -> int:
        """Run the whole pipeline; write ``out_dir``; the exit status."""
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ipc = Path(tempfile.mkdtemp(prefix="sf-insitu-", dir="/tmp"))
        procs: dict[str, subprocess.Popen] = {}
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        try:
            frames, lossless, work, camera = self._camera(scope_spec, ipc)
            commands = (
                scope_spec.split(":", 1)[1] if scope_spec.startswith("remote:")
                else f"ipc://{ipc}/commands"
            )  # fmt: skip
            # Consumers first (they connect before the camera binds; ZeroMQ reconnects), so
            # the camera's first frames find them instead of filling its buffers.
            if self.record is not None:
                assert lossless is not None
                procs["record"] = _start(
                    [*SF, "node", "record", "--lossless", lossless, "--out", str(self.record)],
                    logs / "record.log",
                )
            results = [f"ipc://{ipc}/results-{k}" for k in range(self.workers)]
            threads = max(1, (os.cpu_count() or 1) // self.workers)  # the cores, shared
            scale = (
                []
                if self.detect_pixel_nm is None
                else ["--detect-pixel-nm", str(self.detect_pixel_nm)]
            )
            for k, endpoint in enumerate(results):
                procs[f"worker-{k}"] = _start(
                    [*SF, "node", "infer", "--work", work, "--results", endpoint,
                     "--model", self.model, "--name", f"worker-{k}", "--threads", str(threads),
                     *scale],
                    logs / f"worker-{k}.log",
                )  # fmt: skip
            display = None
            if self.display_model is not None:
                display = f"ipc://{ipc}/display"
                procs["display"] = _start(
                    [*SF, "node", "infer", "--frames", frames, "--results", display,
                     "--model", self.display_model, "--name", "display", "--threads", "1",
                     "--max-rate", str(self.display_fps), "--max-side", str(DISPLAY_SIDE)],
                    logs / "display.log",
                )  # fmt: skip
            _wait_ready(procs)
            collector = _Collector(self, frames, results, commands, display)
            try:
                if camera is not None:
                    procs["acquire"] = _start(camera, logs / "acquire.log")
                    _wait_ready({"acquire": procs["acquire"]})
                summary = collector.run(procs)
            finally:
                collector.close()
        finally:
            for name, proc in procs.items():
                _stop(proc, name)
            shutil.rmtree(ipc, ignore_errors=True)
        return self._finish(out, summary)

    def _camera(self, spec: str, ipc: Path) -> tuple[str, str | None, str, list[str] | None]:
        """The (frames, lossless, work) endpoints, and the command of the acquisition node to
        start for a local scope (None: a remote scope's own node)."""
        if spec.startswith("remote:"):
            if self.work is None or self.frames_endpoint is None:
                raise UsageError(
                    "a remote scope needs its acquisition node's --work and --frames-endpoint "
                    "(and --lossless with --record): scopeflow node acquire --mode continuous "
                    "--work … --lossless …"
                )
            if self.record is not None and self.lossless is None:
                raise UsageError("--record on a remote scope needs its --lossless endpoint")
            return self.frames_endpoint, self.lossless, self.work, None
        device = spec
        if spec.startswith("sim:insitu"):
            given = {p.split("=", 1)[0].strip() for p in spec.split(",")[1:]}
            extra = {"frame_size": self.frame_size, "fps": self.fps, "pool": self.pool}
            device += "".join(f",{k}={v}" for k, v in extra.items() if k not in given and v)
        frames, lossless, work = (f"ipc://{ipc}/{n}" for n in ("frames", "lossless", "work"))
        cmd = [*SF, "node", "acquire", "--device", device, "--mode", "continuous",
               "--rate", str(self.fps), "--frames", frames, "--commands", f"ipc://{ipc}/commands",
               "--work", work, "--lossless-linger-s", str(self.finish_s)]  # fmt: skip
        if self.record is not None:
            cmd += ["--lossless", lossless]
        return frames, (lossless if self.record is not None else None), work, cmd

    def _finish(self, out: Path, s: dict[str, Any]) -> int:
        ok = s["frames_missing"] == 0 and (
            self.record is None or s.get("frames_recorded") == s["frames_produced"]
        )
        doc = {
            "job": self.name,
            "reason": s["reason"],
            "reached_goal": ok,
            "figures": {k: v for k, v in s.items() if not isinstance(v, (list, dict))},
            "record": str(self.record) if self.record else None,
            "model": self.model,
            "detect_pixel_nm": self.detect_pixel_nm,
            "workers": self.workers,
            "notes": s.get("notes", []),
            "memory": s.get("memory", {}),
        }
        (out / "outcome.json").write_text(json.dumps(doc, indent=2, default=_jsonable))
        rec = ""
        if self.record is not None:
            rec = f", recorded {s.get('frames_recorded')} to {self.record}"
        print(
            f"insitu: {s['reason']}; produced {s['frames_produced']} frames "
            f"({s['camera_fps']:.1f} fps){rec}; analysed {s['frames_analysed']}, missing "
            f"{s['frames_missing']}; {s['tracks']} tracks, {s['events']} events"
        )
        slopes = [
            f"{name} {m['rss_last_mb']:.0f} MB ({m['slope_kb_per_1k_frames']:+.1f} kB/1k frames)"
            for name, m in s.get("memory", {}).items()
            if m.get("slope_kb_per_1k_frames") is not None
        ]
        if slopes:
            print("memory: " + ", ".join(slopes))
        print(f"wrote {out}")
        return 0 if ok else 1


class _Collector:
    """Results in, in order, into the tracker; live rates; frames for the video."""

    def __init__(
        self,
        job: InsituJob,
        frames: str,
        results: list[str],
        commands: str,
        display: str | None = None,
    ) -> None:
        self.job = job
        self.ctx = zmq.Context()
        self.drift: DriftEstimator | None = None
        self.corrector: DriftCorrector | None = None
        self._client: MicroscopeClient | None = None
        self.mover: FieldMover | None = None
        if job.drift == "correct":  # the mover reads the microscope once the camera is up
            self._client = MicroscopeClient(self.ctx, commands, timeout_s=5.0)
        self._next_drift = 0.0
        # Import what the analysis needs now: seconds of imports once frames flow would stall
        # the collector (and the drift samples) at the start of the run.
        import pandas  # noqa: F401
        import skimage.registration  # noqa: F401
        import trackpy.linking  # noqa: F401

        self.results = self.ctx.socket(zmq.SUB)
        self.results.setsockopt(zmq.LINGER, 0)
        self.results.setsockopt(zmq.RCVHWM, 100_000)
        self.results.setsockopt(zmq.SUBSCRIBE, b"detections")
        for e in results:
            self.results.connect(e)
        self.frames = self.ctx.socket(zmq.SUB)
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames.setsockopt(zmq.RCVHWM, 4)
        # Images only when one is wanted for the video: the full stream would cost this
        # process as much as the recorder.
        for topic in (b"status", b"series_end"):
            self.frames.setsockopt(zmq.SUBSCRIBE, topic)
        self._want_image = False
        self.frames.connect(frames)
        self._poller = zmq.Poller()  # built once: _poll runs every 50 ms for the whole run
        self._poller.register(self.results, zmq.POLLIN)
        self._poller.register(self.frames, zmq.POLLIN)
        # The display node's denoised frames (latest-only): the video and the drift use them
        # instead of raw frames, and the raw image stream is then never subscribed to.
        self.display: zmq.Socket | None = None
        if display is not None:
            self.display = self.ctx.socket(zmq.SUB)
            self.display.setsockopt(zmq.LINGER, 0)
            self.display.setsockopt(zmq.RCVHWM, 2)
            self.display.setsockopt(zmq.SUBSCRIBE, b"denoised")
            self.display.connect(display)
            self._poller.register(self.display, zmq.POLLIN)
        self.order: InOrder[Any] = InOrder()
        self.tracker: LiveTracker | None = None
        self.series: str | None = None
        self.sent = 0  # the camera's frames_sent, from its heartbeats
        self.images_sent: int | None = None  # from series_end
        self.first: tuple[int, int] | None = None  # (image_id, monotonic_ns) of a result
        self.last: tuple[int, int] | None = None
        self.analysed = 0
        self.latency_ms: list[float] = []
        self.arrivals: tuple[int, int, int] = (0, 0, 0)  # first, last (monotonic ns), count
        self.gif: list[tuple[int, np.ndarray]] = []
        self._next_gif = 0.0
        self.pixel_size_nm = 1.0
        self.frame_interval_s = 1.0 / job.fps
        self.rss = MemoryTrace()  # every process's resident memory against frames
        self._pids: dict[str, int] = {}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.results.close()
        self.frames.close()
        if self.display is not None:
            self.display.close()
        self.ctx.term()

    def run(self, procs: dict[str, subprocess.Popen]) -> dict[str, Any]:
        reason = "done"
        t0 = time.monotonic()
        next_line = t0 + 1.0
        self._pids = {name: p.pid for name, p in procs.items()} | {"job": os.getpid()}
        if self._client is not None:
            try:
                self.mover = FieldMover.open(self._client, self.job.drift_actuator)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            self.corrector = DriftCorrector(self.mover.move_by)
        try:
            while time.monotonic() - t0 < self.job.duration_s:
                self._poll(50)
                if time.monotonic() >= next_line:
                    self._line(time.monotonic() - t0)
                    self.rss.sample(self._pids, self.sent)
                    next_line = time.monotonic() + 1.0
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    reason = f"{', '.join(dead)} exited"
                    break
        except KeyboardInterrupt:
            reason = "interrupted"
        # Stop the camera; let the queued frames be recorded and analysed.
        finish = self.job.finish_s
        if "acquire" in procs:
            self._stop_camera(procs["acquire"], finish)
        deadline = time.monotonic() + finish
        while time.monotonic() < deadline:
            got = self._poll(100)
            total = self.images_sent if self.images_sent is not None else self.sent
            if self.order.next_id >= total and not self.order.held:
                break
            if not got and self.images_sent is not None:
                deadline = min(deadline, time.monotonic() + 3.0)  # nothing more is coming
        self._release(self.order.flush())
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        return self._summary(reason)

    def _stop_camera(self, proc: subprocess.Popen, finish_s: float) -> None:
        """Stop the camera; while it hands its buffered frames on, keep collecting."""
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + finish_s + 10.0
        while proc.poll() is None and time.monotonic() < deadline:
            self._poll(100)
        _stop(proc, "acquire")

    def _poll(self, timeout_ms: int) -> int:
        got = 0
        events = dict(self._poller.poll(timeout_ms))
        while self.results in events:
            try:
                msg = recv(self.results, zmq.NOBLOCK)
            except zmq.Again:
                break
            h = msg.header
            if self.series is None:
                self.series = h.series_unique_id
            if h.series_unique_id != self.series:
                continue
            now_ns = time.monotonic_ns()
            latency = (now_ns - h.monotonic_ns) / 1e6
            if len(self.latency_ms) < LATENCY_SAMPLES:  # bounded: flat memory over any run
                self.latency_ms.append(latency)
            elif h.image_id % 10 == 0:
                self.latency_ms[(h.image_id // 10) % LATENCY_SAMPLES] = latency
            self.arrivals = (self.arrivals[0] or now_ns, now_ns, self.arrivals[2] + 1)
            self.order.add(h.image_id, h)
            got += 1
        if self.frames in events:
            self._frame_stream()
        if self.display is not None and self.display in events:
            self._display_stream()
        now = time.monotonic()
        gif_due = now >= self._next_gif and len(self.gif) < GIF_MAX_FRAMES
        drift_due = self.job.drift != "off" and now >= self._next_drift
        if self.display is None and not self._want_image and (gif_due or drift_due):
            self.frames.setsockopt(zmq.SUBSCRIBE, b"image")
            self._want_image = True
        self._release(self.order.ready())
        return got

    def _frame_stream(self) -> None:
        for _ in range(100):
            try:
                msg = recv(self.frames, zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg.kind == "status":
                self.sent = int(msg.header.counters.get("frames_sent", self.sent))
            elif msg.kind == "series_end":
                self.images_sent = int(msg.header.images)
            elif msg.kind == "image" and self._want_image:
                self._sampled(msg)
                self.frames.setsockopt(zmq.UNSUBSCRIBE, b"image")
                self._want_image = False

    def _display_stream(self) -> None:
        """The newest denoised frame of the display node, for the video and the drift."""
        assert self.display is not None
        newest = None
        for _ in range(100):
            try:
                newest = recv(self.display, zmq.NOBLOCK)
            except zmq.Again:
                break
        if newest is not None and self.series in (None, newest.header.series_unique_id):
            self._sampled(newest)

    def _sampled(self, msg: Any) -> None:
        """A frame from the latest-only stream: for the video, and the drift."""
        h, now = msg.header, time.monotonic()
        pixels = np.array(msg.array())
        if now >= self._next_gif and len(self.gif) < GIF_MAX_FRAMES:
            self.gif.append((h.image_id, pixels))
            self._next_gif = now + GIF_EVERY_S
        if self.job.drift == "off" or now < self._next_drift:
            return
        self._next_drift = now + DRIFT_EVERY_S
        st = h.state
        if self.drift is None:
            self.drift = DriftEstimator(float(st.pixel_size_nm))
        # Where this frame's field was, by our own doing (stage and beam shift): not drift.
        field_nm = (
            (st.stage_x_um + (st.beam_shift_x_um or 0.0)) * 1e3,
            (st.stage_y_um + (st.beam_shift_y_um or 0.0)) * 1e3,
        )
        t = h.image_id / self.job.fps
        drift = self.drift.update(h.image_id, t, pixels, field_nm)
        if drift is not None and self.corrector is not None:
            self.corrector.update(drift)

    def _release(self, items: list[tuple[int, Any]]) -> None:
        for image_id, header in items:
            if self.tracker is None:
                if header is None:
                    continue
                px = float(header.state.pixel_size_nm)
                self.pixel_size_nm = px
                interval = 1.0 / self.job.fps
                cfg = TrackingConfig(px, interval, self.job.search_range_nm, self.job.memory)
                # Rows go to D/tracks.csv, D/frames.csv as they come: flat memory.
                self.tracker = LiveTracker(cfg, tuple(header.frame_shape), Path(self.job.out_dir))
            t = image_id * self.tracker.config.frame_interval_s
            if header is None:
                self.tracker.skip(image_id)
                continue
            self.tracker.add(image_id, image_id, t, header.detections)
            self.analysed += 1
            mark = (image_id, int(header.monotonic_ns))
            self.first = self.first or mark
            self.last = mark

    def _line(self, t: float) -> None:
        rec = ""
        if self.job.record is not None:
            rec = f"  recorded {_recorded(self.job.record)}"
        fps = self.sent / t if t > 0 else 0.0
        line = (
            f"{t:5.0f} s  camera {self.sent} ({fps:.0f} fps)  analysed {self.analysed} "
            f"(lag {max(0, self.sent - self.order.next_id)})  missing {len(self.order.missing)}"
            f"{rec}"
        )
        # One updating line on a terminal; a line a second in a log.
        sys.stderr.write(f"\r\033[K{line}" if sys.stderr.isatty() else line + "\n")
        sys.stderr.flush()

    def _summary(self, reason: str) -> dict[str, Any]:
        produced = self.images_sent if self.images_sent is not None else self.sent
        camera_fps = 0.0  # from the frames' own acquisition times
        if self.first is not None and self.last is not None and self.last[1] > self.first[1]:
            camera_fps = (self.last[0] - self.first[0]) / ((self.last[1] - self.first[1]) / 1e9)
        s: dict[str, Any] = {
            "reason": reason,
            "frames_produced": produced,
            "camera_fps": camera_fps,
            "frames_analysed": self.analysed,
            "frames_missing": max(len(self.order.missing), produced - self.analysed),
            "late_results": self.order.late,
            "gap_wait_s": round(self.order.gap_timeout_s, 2),  # learned, see InOrder
            "analysis_fps": _rate(self.arrivals),
            "latency_ms_p50": _percentile(self.latency_ms, 50),
            "latency_ms_p99": _percentile(self.latency_ms, 99),
            "tracks": 0,
            "events": 0,
            "memory": self.rss.report(),
        }  # fmt: skip
        if self.job.record is not None:
            _wait_closed(self.job.record)
            s["frames_recorded"] = _recorded(self.job.record)
        out = Path(self.job.out_dir)
        if self.tracker is not None:
            analysis = self.tracker.analyse()
            write_tables(analysis, out)
            write_plots(analysis, out)
            write_gif(self.gif, analysis, out, self.pixel_size_nm)
            s["tracks"] = int(analysis.summary.shape[0])
            s["events"] = int(analysis.events.shape[0])
            for kind, n in analysis.events["event"].value_counts().items():
                s[f"events_{kind}"] = int(n)
            s["notes"] = analysis.notes
        if self.drift is not None and len(self.drift.rows) > 1:
            table = self.drift.table()
            write_drift(table, self.corrector, out)
            last = table.iloc[-1]
            s["drift_x_nm"], s["drift_y_nm"] = float(last["drift_x_nm"]), float(last["drift_y_nm"])
            s["drift_samples_lost"] = self.drift.lost
            s["drift_source"] = "raw" if self.display is None else "denoised"
            s["drift_time_s"] = float(last["time_s"] - table.iloc[0]["time_s"])
            if self.corrector is not None and self.mover is not None:
                s["drift_corrections"] = self.corrector.moves
                s["drift_actuator"] = self.mover.actuator
                s["field_moved_x_nm"] = self.corrector.corrected_nm[0]
                s["field_moved_y_nm"] = self.corrector.corrected_nm[1]
                s["beam_shift_x_um"], s["beam_shift_y_um"] = self.mover.beam_um
                s["beam_handoffs"] = self.mover.handoffs
                s["drift_corrections_refused"] = self.corrector.refused
        return s


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A node process, its output to ``log`` (unbuffered, so its log is current)."""
    fh = open(log, "w")  # noqa: SIM115 (kept open for the child's lifetime)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    proc._scopeflow_log = fh  # type: ignore[attr-defined]
    return proc


def _wait_ready(procs: dict[str, subprocess.Popen], timeout_s: float = 60.0) -> None:
    """Wait until each node logged that it is ready (imports and models take seconds)."""
    deadline = time.monotonic() + timeout_s
    for name, proc in procs.items():
        log = Path(proc._scopeflow_log.name)  # type: ignore[attr-defined]
        while "node ready" not in log.read_text():
            if proc.poll() is not None:
                raise UsageError(f"{name} did not start: {log.read_text()[-500:].strip()}")
            if time.monotonic() > deadline:
                raise UsageError(f"{name} not ready after {timeout_s:.0f} s (see {log})")
            time.sleep(0.1)
    time.sleep(0.5)  # the connections settle (ZeroMQ connects asynchronously)


def _stop(proc: subprocess.Popen, name: str, grace_s: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    log = getattr(proc, "_scopeflow_log", None)
    if log is not None and not log.closed:
        log.close()


def _recorded(path: Path) -> int:
    meta = Path(path) / "0" / "zarr.json"
    try:
        return int(json.loads(meta.read_text())["shape"][0])
    except (OSError, ValueError, KeyError):
        return 0


def _wait_closed(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Not there yet, or being replaced this instant: look again.
        with contextlib.suppress(OSError, ValueError, KeyError):
            attrs = json.loads((Path(path) / "zarr.json").read_text())["attributes"]["scopeflow"]
            if attrs.get("status") != "recording":
                return
        time.sleep(0.2)


def _rate(arrivals: tuple[int, int, int]) -> float | None:
    """Results per second while they flowed (first to last arrival)."""
    first, last, n = arrivals
    return (n - 1) / ((last - first) / 1e9) if n > 1 and last > first else None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)
