"""The insitu job end to end (real processes), and tracking on scripted scenes."""

from __future__ import annotations

import csv
import json
import math
import mmap
import os

import numpy as np
import pytest
import zarr

from scopeflow.inference import backends
from scopeflow.inference.models.particle_detector import ParticleDetector
from scopeflow.jobs.insitu.drift import DriftCorrector, DriftEstimator
from scopeflow.jobs.insitu.tracking import LiveTracker, TrackingConfig
from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera
from scopeflow_lab.sim.insitu.particles import ParticleSpec, Shape
from scopeflow_lab.sim.sim_adapter import open_simulator
from tests.harness import scopeflow_cli

SPEC = "insitu,seed=4,pool=8,frame_size=128,fps=40"


def test_insitu_records_analyses_and_tracks_every_frame(tmp_path):
    out = tmp_path / "run"
    rec = out / "rec.ome.zarr"
    run = scopeflow_cli(
        "run", "insitu", "--scope", f"sim:{SPEC}", "--fps", "40", "--frame-size", "128",
        "--duration", "3", "--model", "particle_detector", "--record", str(rec), "--out", str(out),
        timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads((out / "outcome.json").read_text())["figures"]
    produced = figures["frames_produced"]
    assert produced >= 60  # 3 s at 40 fps, less start-up
    assert figures["frames_recorded"] == produced == figures["frames_analysed"]
    assert figures["frames_missing"] == 0
    assert figures["camera_fps"] > 30
    # The recording, read back by zarr-python, frame for frame against the camera.
    camera = open_simulator(SPEC)  # the same seed renders the same frames
    frames = zarr.open_group(str(rec), mode="r")["0"]
    assert frames.shape[0] == produced
    data = frames[:]
    for k in range(produced):
        np.testing.assert_array_equal(data[k], camera.expected(k), err_msg=f"frame {k}")
    with open(out / "frames.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["image_id"]) for r in rows] == list(range(produced))
    for name in ("tracks.csv", "events.csv", "track_summary.csv", "sizes.png", "msd.png",
                 "counts.png", "overlay.gif"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert "camera" in run.stderr and "analysed" in run.stderr  # the live rates
    # Every process's resident memory was sampled through the run.
    memory = json.loads((out / "outcome.json").read_text())["memory"]
    assert {"acquire", "record", "worker-0", "job"} <= set(memory)
    assert all(m["samples"] >= 2 and m["rss_last_mb"] > 10 for m in memory.values())


def test_the_memory_trace_measures_a_growing_process_and_a_flat_one():
    from scopeflow.jobs.insitu.memory import MemoryTrace

    grown = MemoryTrace()
    hoard = []
    for step in range(12):
        # 4 MiB a step of fresh anonymous pages, every one written (malloc could reuse pages
        # already resident from earlier tests).
        block = mmap.mmap(-1, 4 << 20)
        block.write(b"\x01" * (4 << 20))
        hoard.append(block)
        grown.sample({"me": os.getpid()}, step * 1000)
    slope = grown.report()["me"]["slope_kb_per_1k_frames"]
    assert slope == pytest.approx(4096, rel=0.25)
    for block in hoard:
        block.close()
    still = MemoryTrace()
    for step in range(12):
        still.sample({"me": os.getpid()}, step * 1000)
    assert abs(still.report()["me"]["slope_kb_per_1k_frames"]) < 100
    assert still.report()["me"]["frames_after_warm_up"] >= 1000


def test_a_remote_scope_without_its_endpoints_is_refused(tmp_path):
    run = scopeflow_cli(
        "run", "insitu", "--scope", "remote:tcp://127.0.0.1:5551", "--out", str(tmp_path),
        "--duration", "1",
    )  # fmt: skip
    assert run.returncode == 2 and "--work" in run.stderr and "Traceback" not in run.stderr


def _scripted_scene(fps: float) -> SimulatedInSituCamera:
    """Four spheres in a 128 nm field: two growing into each other (they coalesce), one
    shrinking (it dissolves), one diffusing fast (D = 30 nm²/s)."""
    particles = (
        (ParticleSpec(Shape("sphere", 9.0), growth_nm_per_s=3.0, diffusion_nm2_per_s=2.0),
         (-12.0, 0.0)),
        (ParticleSpec(Shape("sphere", 8.0), growth_nm_per_s=3.0, diffusion_nm2_per_s=2.0),
         (12.0, 0.0)),
        (ParticleSpec(Shape("sphere", 7.0), growth_nm_per_s=-4.0, diffusion_nm2_per_s=2.0),
         (0.0, 40.0)),
        (ParticleSpec(Shape("sphere", 8.0), diffusion_nm2_per_s=30.0), (-40.0, -40.0)),
    )  # fmt: skip
    config = InSituConfig(
        frame_shape=(256, 256), fps=fps, seed=1, particle_density_per_um2=0.0,
        decoy_density_per_um2=0.0, particles=particles,
    )  # fmt: skip
    return SimulatedInSituCamera(config)


def test_tracking_finds_the_scripted_coalescence_dissolution_and_diffusion():
    fps, px = 20.0, 0.5
    camera = _scripted_scene(fps)
    detector = ParticleDetector(backends.load("particle_detector", "onnxruntime"))
    tracker = LiveTracker(TrackingConfig(pixel_size_nm=px, frame_interval_s=1 / fps), (256, 256))
    truth = {}
    for k in range(60):
        frame, annotated = camera.acquire_annotated()
        for event in annotated.attributes["events"]:
            truth[event["type"]] = k
        tracker.add(k, k, k / fps, detector.detect(frame.pixels))
    assert set(truth) == {"coalescence", "dissolved"}  # the scene did what it was built to
    analysis = tracker.analyse()
    events = analysis.events
    centre = 128 * px  # the field centre, nm (particles were placed relative to it)
    merge = events[events["event"] == "coalescence"]
    assert len(merge) == 1
    # Touching particles read as one blob a little before the simulator merges them.
    assert truth["coalescence"] - 8 <= int(merge["frame"].iloc[0]) <= truth["coalescence"] + 1
    assert math.hypot(merge["x_nm"].iloc[0] - centre, merge["y_nm"].iloc[0] - centre) < 20
    gone = events[events["event"] == "dissolution"]
    assert len(gone) == 1
    assert truth["dissolved"] - 10 <= int(gone["frame"].iloc[0]) <= truth["dissolved"]
    # The image y axis points down: the particle placed at +40 nm in y sits below the centre.
    assert abs(gone["x_nm"].iloc[0] - centre) < 10
    assert abs(abs(gone["y_nm"].iloc[0] - centre) - 40) < 10
    assert not (events["event"] == "nucleation").any()  # nothing appeared from nowhere
    # Four tracks, one per particle; the fast one's D within a factor of two of 30 nm²/s.
    summary = analysis.summary
    assert len(summary) == 4
    fast = summary.loc[summary["diffusion_nm2_per_s"].idxmax()]
    assert 15 <= fast["diffusion_nm2_per_s"] <= 60 and fast["frames"] == 60


def test_drift_is_estimated_from_the_frames_and_the_stage_cancels_it():
    """Phase cross-correlation on simulated frames of particles pinned to the window, drifting
    at (20, −10) nm/s; the corrector moves the stage through the simulator's own API."""
    for correct in (False, True):
        config = InSituConfig(
            frame_shape=(256, 256), fps=20, seed=3, particle_density_per_um2=1500,
            motion_weights=(("confined", 1.0),), confinement_nm=2.0,
            drift_x_nm_per_s=20.0, drift_y_nm_per_s=-10.0,
        )  # fmt: skip
        camera = SimulatedInSituCamera(config)

        def move(dx_nm, dy_nm, camera=camera):
            s = camera.state()
            camera.move_stage(s.stage_x_um + dx_nm / 1e3, s.stage_y_um + dy_nm / 1e3)

        estimator = DriftEstimator(pixel_size_nm=0.5)
        corrector = DriftCorrector(move)
        start = None
        for k in range(80):
            frame, annotated = camera.acquire_annotated()
            s = frame.state
            stage_nm = (s.stage_x_um * 1e3, s.stage_y_um * 1e3)
            drift = estimator.update(k, k / 20, frame.pixels, stage_nm)
            centre = np.array(annotated.attributes["field_centre_nm"])
            true_drift = np.array(annotated.attributes["drift_nm"])
            start = (centre, true_drift) if start is None else start
            if correct and drift is not None:
                corrector.update(drift)
        since_start = true_drift - start[1]
        # Within 15 %: unnormalised cross-correlation reads large shifts about 10 % short.
        assert np.hypot(*(np.array(drift) - since_start)) < 0.15 * np.hypot(*since_start)
        field_moved = np.hypot(*(centre - start[0]))
        if correct:
            assert corrector.moves > 5 and field_moved < 10  # held within 10 nm (of 88)
        else:
            assert field_moved > 80


def _drift_run(out, drift_nm_s, seconds, *args, spec_extra=""):
    """``run insitu`` on confined particles drifting at ``drift_nm_s``; the outcome, the drift
    it read and the simulator's drift meanwhile (checked to agree within 25 %)."""
    spec = ("sim:insitu,particle_density=1500,motion=confined,confinement_nm=2,"
            f"drift_x={drift_nm_s[0]:g},drift_y={drift_nm_s[1]:g}{spec_extra}")  # fmt: skip
    run = scopeflow_cli(
        "run", "insitu", "--scope", spec, "--fps", "20", "--frame-size", "256",
        "--duration", str(seconds), "--model", "particle_detector", *args, "--out", str(out),
        timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads((out / "outcome.json").read_text())
    f = doc["figures"]
    expected = np.array(drift_nm_s) * f["drift_time_s"]  # the simulator's drift meanwhile
    drift = np.array([f["drift_x_nm"], f["drift_y_nm"]])
    assert np.hypot(*(drift - expected)) < 0.25 * np.hypot(*expected)
    return doc, drift, expected


def test_the_job_corrects_drift_through_the_acquisition_node(tmp_path):
    out = tmp_path / "drift"
    doc, drift, _ = _drift_run(
        out, (20.0, -10.0), 4, "--drift", "correct", "--drift-actuator", "stage"
    )
    f = doc["figures"]
    moved = np.array([f["field_moved_x_nm"], f["field_moved_y_nm"]])
    assert f["drift_corrections"] >= 3 and f["drift_corrections_refused"] == 0
    assert f["drift_actuator"] == "stage" and f["beam_shift_x_um"] == 0.0
    # The stage went the other way, nearly as far (the loop runs a sample behind).
    assert np.hypot(*(moved + drift)) < 0.35 * np.hypot(*drift)
    assert (out / "drift.csv").exists() and (out / "drift.png").exists()


def test_drift_is_corrected_with_the_beam_shift_handing_off_to_the_stage(tmp_path):
    """auto on a microscope with a beam shift: the beam moves the field; past 80 % of its
    range (a 0.2 µm range here, so the run must hand off) the stage takes the shift over."""
    doc, drift, expected = _drift_run(
        tmp_path / "beam", (60.0, -30.0), 6, "--drift", "correct",
        spec_extra=",beam_shift_range=0.2",
    )  # fmt: skip
    f = doc["figures"]
    assert f["drift_actuator"] == "beam" and f["drift_corrections_refused"] == 0
    assert np.hypot(*expected) > 200
    moved = np.array([f["field_moved_x_nm"], f["field_moved_y_nm"]])
    assert np.hypot(*(moved + drift)) < 0.35 * np.hypot(*drift)
    assert f["beam_handoffs"] >= 1  # 0.16 µm of beam, then the stage
    assert max(abs(f["beam_shift_x_um"]), abs(f["beam_shift_y_um"])) <= 0.2


def test_a_display_denoiser_feeds_the_video_and_the_drift_while_workers_only_detect(tmp_path):
    """--display-model denoiser: one latest-only node denoises a few frames a second; the
    drift is registered on its denoised frames, the workers detect every frame."""
    out = tmp_path / "display"
    doc, _, expected = _drift_run(
        out, (20.0, -10.0), 5, "--display-model", "denoiser", "--display-fps", "5"
    )
    f = doc["figures"]
    assert f["frames_analysed"] == f["frames_produced"] and f["frames_missing"] == 0
    assert f["drift_source"] == "denoised"
    assert np.hypot(*expected) > 40  # drift read within 25 % (in _drift_run) over > 40 nm
    assert "display" in doc["memory"]  # the display node is one of the job's processes
    assert (out / "overlay.gif").read_bytes()[:6] in (b"GIF87a", b"GIF89a")
