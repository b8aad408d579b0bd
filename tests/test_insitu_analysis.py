"""Per-frame analysis of the in-situ stream: a model chain in one node, N workers sharing the
every-frame stream, results put back in frame order, a killed worker's frames reported."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest
import zmq

from scopeflow.acquisition.node import AcquireConfig, AcquireNode
from scopeflow.inference.node import InferConfig, InferNode
from scopeflow.jobs.insitu.order import InOrder
from scopeflow.transport.streams import recv
from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera
from tests.harness import running


def _camera(fps: float) -> SimulatedInSituCamera:
    # A dense cell: a 128 nm field holds about 25 particles (the default density, ~1).
    config = InSituConfig(frame_shape=(256, 256), fps=fps, seed=2, particle_density_per_um2=1500)
    return SimulatedInSituCamera(config)


def _acquire(ipc_dir, camera, fps: float) -> AcquireNode:
    return AcquireNode(
        camera,
        AcquireConfig(
            frames_endpoint=f"ipc://{ipc_dir}/frames",
            commands_endpoint=f"ipc://{ipc_dir}/commands",
            work_endpoint=f"ipc://{ipc_dir}/work",
            mode="continuous",
            frame_rate_hz=fps,
        ),
    )


def _results_sub(ctx: zmq.Context, endpoints: list[str]) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for kind in (b"denoised", b"detections"):
        sub.setsockopt(zmq.SUBSCRIBE, kind)
    for e in endpoints:
        sub.connect(e)
    return sub


def _collect(sub: zmq.Socket, until: float, arrivals: list) -> None:
    """Every result message until ``until`` (monotonic), as (kind, image_id, header)."""
    while time.monotonic() < until:
        if sub.poll(50):
            msg = recv(sub)
            arrivals.append((msg.kind, msg.header.image_id, msg.header))


def test_a_chain_publishes_every_stage_for_every_frame(ipc_dir):
    camera = _camera(10.0)
    acquire = _acquire(ipc_dir, camera, 10.0)
    worker = InferNode(
        InferConfig(
            work_endpoint=acquire.work_endpoint,
            results_endpoint=f"ipc://{ipc_dir}/results",
            model="denoiser,particle_detector",
            backend="onnxruntime",
        )
    )
    ctx = zmq.Context()
    sub = _results_sub(ctx, [worker.results_endpoint])
    arrivals: list = []
    try:
        with running(worker):
            time.sleep(0.3)  # the subscription reaches the worker before the first result
            with running(acquire):
                _collect(sub, time.monotonic() + 2.0, arrivals)
            sent = acquire.metrics.value("frames_sent")
            _collect(sub, time.monotonic() + 3.0, arrivals)  # the last frames' results
    finally:
        sub.close()
        ctx.term()
    by_kind = defaultdict(list)
    for kind, image_id, header in arrivals:
        by_kind[kind].append((image_id, header))
    assert sent >= 10
    for kind in ("denoised", "detections"):
        assert [i for i, _ in by_kind[kind]] == list(range(sent)), kind  # every frame, in order
    assert {h.model for _, h in by_kind["denoised"]} == {"denoiser"}
    assert {h.model for _, h in by_kind["detections"]} == {"particle_detector"}
    # The simulated cell holds particles: the detector, reading the camera's counts, finds them.
    assert sum(len(h.detections) for _, h in by_kind["detections"]) >= sent


def test_a_detector_in_a_chain_reads_the_raw_frame_the_denoised_one_goes_out_beside_it():
    from scopeflow.devices.frames import frame_message
    from scopeflow.inference.processors import make_processor

    frame, _ = _camera(10.0).acquire_annotated()
    msg = frame_message(frame, series_id=1, series_unique_id="s", image_id=0, command_seq=0)
    chained = make_processor("denoiser,particle_detector", "onnxruntime").process(msg)
    alone = make_processor("particle_detector", "onnxruntime").process(msg)
    assert [type(header).__name__ for header, _ in chained] == [
        "DenoisedHeader",
        "DetectionsResult",
    ]
    assert chained[1][0].detections == alone[0][0].detections
    assert chained[1][0].detections  # the frame holds particles
    denoised = chained[0][1][0]
    assert denoised.shape == frame.pixels.shape
    assert not np.array_equal(denoised, frame.pixels)


def test_a_display_denoiser_bins_large_frames_and_its_header_says_so():
    """--max-side: a 256² frame through a 100-px display denoiser comes out 85² (binned 3×,
    the ceiling), its pixel size ×3; the mean level is kept; other models refuse it."""
    from scopeflow.devices.frames import frame_message
    from scopeflow.inference.processors import make_processor

    frame, _ = _camera(10.0).acquire_annotated()
    msg = frame_message(frame, series_id=1, series_unique_id="s", image_id=0, command_seq=0)
    [(header, (out,))] = make_processor("denoiser", "onnxruntime", max_side=100).process(msg)
    assert out.shape == header.shape == (85, 85)  # 256 // 3
    assert header.state.pixel_size_nm == pytest.approx(3 * frame.state.pixel_size_nm)
    assert header.state.magnification == pytest.approx(frame.state.magnification / 3)
    raw = frame.pixels[:255, :255].astype(np.float64)
    assert float(out.mean()) == pytest.approx(raw.mean(), rel=0.02)
    with pytest.raises(ValueError, match="denoiser alone"):
        make_processor("particle_detector", "onnxruntime", max_side=100)


def test_a_chain_that_cannot_feed_its_next_model_is_refused():
    with pytest.raises(ValueError, match="only the denoiser can feed"):
        InferNode(InferConfig(model="particle_detector,denoiser", backend="onnxruntime"))


def test_two_workers_share_the_frames_and_in_order_restores_them(ipc_dir):
    camera = _camera(30.0)
    acquire = _acquire(ipc_dir, camera, 30.0)
    workers = [
        InferNode(
            InferConfig(
                work_endpoint=acquire.work_endpoint,
                results_endpoint=f"ipc://{ipc_dir}/results-{k}",
                model="particle_detector",
                backend="onnxruntime",
                name=f"worker-{k}",
            )
        )
        for k in range(2)
    ]
    ctx = zmq.Context()
    sub = _results_sub(ctx, [w.results_endpoint for w in workers])
    arrivals: list = []
    try:
        with running(workers[0]), running(workers[1]):
            time.sleep(0.3)
            with running(acquire):
                _collect(sub, time.monotonic() + 2.0, arrivals)
            sent = acquire.metrics.value("frames_sent")
            _collect(sub, time.monotonic() + 2.0, arrivals)
    finally:
        sub.close()
        ctx.term()
    ids = [i for kind, i, _ in arrivals if kind == "detections"]
    assert sorted(ids) == list(range(sent))  # every frame once: shared, not duplicated
    shares = [w.metrics.value("results_published") for w in workers]
    assert min(shares) > 0 and sum(shares) == sent
    order = InOrder(gap_timeout_s=60.0)
    released = []
    for i in ids:
        order.add(i, i)
        released += order.ready()
    released += order.flush()
    assert [i for i, _ in released] == list(range(sent)) and not order.missing


def test_a_killed_worker_s_frames_are_reported_missing_never_skipped(ipc_dir):
    camera = _camera(20.0)
    acquire = _acquire(ipc_dir, camera, 20.0)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scopeflow",
                "node",
                "infer",
                "--work",
                acquire.work_endpoint,
                "--results",
                f"ipc://{ipc_dir}/results-{k}",
                "--model",
                "particle_detector",
                "--backend",
                "onnxruntime",
                "--name",
                f"worker-{k}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k in range(2)
    ]
    ctx = zmq.Context()
    sub = _results_sub(ctx, [f"ipc://{ipc_dir}/results-{k}" for k in range(2)])
    arrivals: list = []
    try:
        time.sleep(3.0)  # both workers up (imports, model load)
        with running(acquire):
            _collect(sub, time.monotonic() + 1.5, arrivals)
            os.kill(procs[0].pid, signal.SIGKILL)
            _collect(sub, time.monotonic() + 1.5, arrivals)
        sent = acquire.metrics.value("frames_sent")
        _collect(sub, time.monotonic() + 2.0, arrivals)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        sub.close()
        ctx.term()
    order = InOrder(gap_timeout_s=0.5, max_gap_timeout_s=0.5)
    released = []
    for _, i, _ in [a for a in arrivals if a[0] == "detections"]:
        order.add(i, i)
        released += order.ready()
    released += order.flush()
    got = [i for i, item in released if item is not None]
    # Every frame the camera sent is accounted for: its result, or reported missing.
    assert sorted(got + order.missing) == list(range(sent))
    assert [i for i, _ in released] == list(range(sent))
    assert len(got) > sent // 2  # the surviving worker took the rest of the stream


def test_in_order_holds_gaps_then_reports_them():
    order: InOrder[str] = InOrder(gap_timeout_s=1.0, max_gap_timeout_s=1.0)  # a fixed wait
    order.add(1, "b", now=0.0)
    order.add(2, "c", now=0.1)
    assert order.ready(now=0.5) == []  # 0 may still come
    order.add(0, "a", now=0.6)
    assert order.ready(now=0.6) == [(0, "a"), (1, "b"), (2, "c")]
    order.add(4, "e", now=1.0)
    assert order.ready(now=1.5) == []
    assert order.ready(now=2.0) == [(3, None), (4, "e")]  # 3 given up on, reported
    assert order.missing == [3]
    order.add(3, "d", now=2.1)
    order.add(4, "e", now=2.1)
    assert (order.late, order.duplicates) == (1, 1)


def test_in_order_learns_how_far_apart_slow_workers_finish():
    """Two slow workers with queues: every even frame comes 3 s after the odd one after it.
    A fixed 2 s wait gives up on every even frame; the learned wait only on those it gave up
    on before the first late one (frame 0, at 3 s) showed how far apart the workers are."""
    arrivals = []
    for k in range(0, 40, 2):
        arrivals += [(k + 1, 0.1 * k), (k, 0.1 * k + 3.0)]
    arrivals.sort(key=lambda a: a[1])

    def missing(order: InOrder) -> list[int]:
        for image_id, t in arrivals:
            order.add(image_id, image_id, now=t)
            order.ready(now=t)
        order.flush()
        return order.missing

    assert len(missing(InOrder(gap_timeout_s=2.0, max_gap_timeout_s=2.0))) == 20
    learned = InOrder(gap_timeout_s=2.0)
    assert missing(learned) == [0, 2, 4, 6, 8] and learned.late == 5
    assert learned.gap_timeout_s >= 3.0 * 3.0
    # A frame that never comes is still reported, once the learned wait has passed.
    learned = InOrder(gap_timeout_s=2.0)
    learned.add(1, "b", now=0.0)
    learned.add(0, "a", now=1.0)  # a gap of 1 s closed: wait 3 s from now on
    learned.add(3, "d", now=2.0)
    assert learned.ready(now=4.5) == [(0, "a"), (1, "b")]
    assert learned.ready(now=5.1) == [(2, None), (3, "d")]


def test_a_rate_capped_display_node_denoises_the_newest_frame_a_few_times_a_second(ipc_dir):
    """--max-rate: a latest-only node beside the workers takes at most HZ frames a second,
    each the newest (image ids advance by the frames it let go), and refuses --work."""
    acquire = AcquireNode(  # no every-frame stream: nothing here would take it
        _camera(20.0),
        AcquireConfig(
            frames_endpoint=f"ipc://{ipc_dir}/frames",
            commands_endpoint=f"ipc://{ipc_dir}/commands",
            mode="continuous",
            frame_rate_hz=20.0,
        ),
    )
    display = InferNode(
        InferConfig(
            frames_endpoint=acquire.frames_endpoint,
            results_endpoint=f"ipc://{ipc_dir}/display",
            model="denoiser",
            backend="onnxruntime",
            max_rate_hz=2.0,
        )
    )
    ctx = zmq.Context()
    sub = _results_sub(ctx, [display.results_endpoint])
    arrivals: list = []
    try:
        with running(display):
            time.sleep(0.3)
            with running(acquire):
                _collect(sub, time.monotonic() + 4.0, arrivals)
    finally:
        sub.close()
        ctx.term()
    ids = [i for kind, i, _ in arrivals if kind == "denoised"]
    assert 4 <= len(ids) <= 10  # ~2 a second over 4 s, not the camera's 20
    gaps = [b - a for a, b in itertools.pairwise(ids)]
    assert min(gaps) >= 5  # the newest each time: the frames in between were let go
    with pytest.raises(ValueError, match="latest-only"):
        InferNode(InferConfig(work_endpoint="ipc:///tmp/none", model="denoiser", max_rate_hz=2.0))
