"""The recorder: every frame of the lossless stream into OME-Zarr v0.5, read back with
zarr-python (an independent reader); a killed recorder, a late one, and a camera that outruns
its buffer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
import zmq

from scopeflow.acquisition.node import AcquireConfig, AcquireNode
from scopeflow.recording.recorder import RecordConfig, RecorderNode
from scopeflow_lab.sim.pooled_camera import PooledCamera, serial_of
from scopeflow_lab.sim.sim_adapter import open_simulator
from tests.harness import running, scopeflow_cli

SIM = "insitu,frame_size=128,fps=200,pool=8,seed=4"  # 128² uint16 frames, 32 KiB each
PIXEL_NM = 0.5  # the in-situ camera's default pixel size


def _camera() -> PooledCamera:
    return open_simulator(SIM)


def _acquire(ipc_dir: Path, camera, rate_hz: float, **options) -> AcquireNode:
    return AcquireNode(
        camera,
        AcquireConfig(
            frames_endpoint=f"ipc://{ipc_dir}/frames",
            commands_endpoint=f"ipc://{ipc_dir}/commands",
            lossless_endpoint=f"ipc://{ipc_dir}/lossless",
            mode="continuous",
            frame_rate_hz=rate_hz,
            **options,
        ),
    )


def _scopeflow_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["scopeflow"]


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _complete(path: Path) -> bool:
    return path.exists() and _scopeflow_attrs(path)["status"] != "recording"


def test_every_frame_is_recorded_and_reads_back_frame_for_frame(ipc_dir, tmp_path):
    camera = _camera()
    out = tmp_path / "rec.ome.zarr"
    acquire = _acquire(ipc_dir, camera, 200.0)
    recorder = RecorderNode(RecordConfig(acquire.lossless_endpoint, out, frames_per_chunk=16))
    with running(recorder):
        with running(acquire):
            time.sleep(1.0)
        _wait_for(lambda: _complete(out))  # the series_end closes the dataset
    produced = camera.produced
    assert produced > 50
    attrs = _scopeflow_attrs(out)
    assert attrs["status"] == "complete" and attrs["images_sent"] == produced
    assert attrs["frames_lost"] == 0 and attrs["series_start_seen"] is True
    assert attrs["source"] == "pooled-sim-insitu"  # the device names itself

    group = zarr.open_group(str(out), mode="r")
    frames = group["0"]
    assert frames.shape == (produced, 128, 128) and frames.dtype == np.uint16
    assert frames.chunks == (16, 128, 128)
    data = frames[:]
    for k in range(produced):
        np.testing.assert_array_equal(data[k], camera.expected(k), err_msg=f"frame {k}")
    ids = group["frames/ids"][:]
    assert list(ids[:, 0]) == list(range(produced))  # image_id
    assert np.all(np.diff(ids[:, 1]) > 0)  # start_time_ns rises
    values = group["frames/values"][:]
    fields = attrs["frame_fields"]["frames/values"]
    assert np.all(values[:, fields.index("pixel_size_nm")] == PIXEL_NM)
    assert np.all(values[:, fields.index("dose_e_per_px")] > 0)

    ome = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["t", "y", "x"]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[1:] == [PIXEL_NM, PIXEL_NM]
    assert scale[0] == pytest.approx(1 / 200.0, rel=0.3)  # the frame interval, measured


def test_a_killed_recorder_leaves_a_readable_dataset_up_to_its_last_chunk(ipc_dir, tmp_path):
    lossless = f"ipc://{ipc_dir}/lossless"
    acquire = subprocess.Popen(
        [sys.executable, "-m", "scopeflow", "node", "acquire", "--device", f"sim:{SIM}",
         "--mode", "continuous", "--rate", "200", "--frames", f"ipc://{ipc_dir}/frames",
         "--commands", f"ipc://{ipc_dir}/commands", "--lossless", lossless],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = tmp_path / "rec.ome.zarr"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "scopeflow", "node", "record", "--lossless", lossless,
         "--out", str(out), "--frames-per-chunk", "10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        shape_file = out / "0" / "zarr.json"

        def recorded() -> int:
            return json.loads(shape_file.read_text())["shape"][0] if shape_file.exists() else 0

        _wait_for(lambda: recorded() >= 60)
        os.kill(recorder.pid, signal.SIGKILL)
        recorder.wait(10)
    finally:
        acquire.send_signal(signal.SIGINT)
        acquire.wait(20)
        recorder.kill()
    frames = zarr.open_group(str(out), mode="r")["0"]
    n = frames.shape[0]
    assert n >= 60 and n % 10 == 0  # whole chunks only
    data = frames[:]
    camera = _camera()  # the same seed renders the same pool
    for k in range(n):
        assert serial_of(data[k]) == k
        np.testing.assert_array_equal(data[k], camera.expected(k), err_msg=f"frame {k}")
    ids = zarr.open_group(str(out), mode="r")["frames/ids"]
    assert ids.shape[0] >= n and list(ids[:n, 0]) == list(range(n))
    assert _scopeflow_attrs(out)["status"] == "recording"  # it never closed: a reader can tell


def test_a_late_recorder_gets_the_series_from_its_start_and_never_slows_the_camera(
    ipc_dir, tmp_path
):
    camera = _camera()
    out = tmp_path / "late.ome.zarr"
    acquire = _acquire(ipc_dir, camera, 100.0)
    with running(acquire):
        time.sleep(1.0)  # nobody takes the lossless stream yet
        # The camera kept its rate (the old sender waited 1 s per frame here).
        assert acquire.metrics.value("frames_sent") >= 70
        recorder = RecorderNode(RecordConfig(acquire.lossless_endpoint, out))
        with running(recorder):
            time.sleep(0.3)
            acquire.stop()
            _wait_for(lambda: _complete(out))
    attrs = _scopeflow_attrs(out)
    assert attrs["series_start_seen"] is True and attrs["status"] == "complete"
    frames = zarr.open_group(str(out), mode="r")["0"]
    assert frames.shape[0] == camera.produced == attrs["images_sent"]
    assert [serial_of(f) for f in frames[:]] == list(range(camera.produced))
    assert acquire.metrics.value("overruns") == 0


def test_frames_past_the_buffer_are_counted_and_the_gap_recorded(ipc_dir, tmp_path):
    camera = _camera()
    out = tmp_path / "overrun.ome.zarr"
    # A buffer of three frames and no recorder for half a second at 100 fps.
    acquire = _acquire(ipc_dir, camera, 100.0, lossless_buffer_mb=0.1)
    with running(acquire):
        time.sleep(0.5)
        overruns = acquire.metrics.value("overruns")
        assert overruns >= 20
        recorder = RecorderNode(RecordConfig(acquire.lossless_endpoint, out))
        with running(recorder):
            time.sleep(0.3)
            acquire.stop()
            _wait_for(lambda: _complete(out))
    attrs = _scopeflow_attrs(out)
    produced = camera.produced
    frames = zarr.open_group(str(out), mode="r")["0"]
    recorded = [serial_of(f) for f in frames[:]]
    lost = attrs["frames_lost"]
    assert lost == acquire.metrics.value("overruns") >= overruns
    assert len(recorded) + lost == produced == attrs["images_sent"]
    assert attrs["status"] == "incomplete"  # the series sent more than the dataset holds
    missing = sorted(set(range(produced)) - set(recorded))
    ranges = [list(range(a, b + 1)) for a, b in attrs["lost_image_ids"]]
    assert missing == [i for r in ranges for i in r]
    assert recorded[:3] == [0, 1, 2]  # the buffered start of the series was kept


def test_recording_over_an_existing_dataset_is_refused(tmp_path):
    out = tmp_path / "rec.ome.zarr"
    out.mkdir()
    run = scopeflow_cli("node", "record", "--lossless", "tcp://127.0.0.1:5999", "--out", str(out))
    assert run.returncode == 2
    assert "exists" in run.stderr and "Traceback" not in run.stderr


def test_the_insitu_camera_streams_without_being_told_the_mode(ipc_dir):
    """`node acquire --sim insitu` picks continuous mode (a camera streams on its own clock);
    it used to default to triggered and send nothing."""
    frames = f"ipc://{ipc_dir}/frames"
    node = subprocess.Popen(
        [sys.executable, "-m", "scopeflow", "node", "acquire", "--sim", "insitu",
         "--frame-size", "64", "--fps", "20", "--frames", frames,
         "--commands", f"ipc://{ipc_dir}/commands"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"image")
    sub.connect(frames)
    images = 0
    try:
        deadline = time.monotonic() + 20
        while images < 5 and time.monotonic() < deadline:
            if sub.poll(100):
                sub.recv_multipart()
                images += 1
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(20)
        sub.close()
        ctx.term()
    assert images == 5
