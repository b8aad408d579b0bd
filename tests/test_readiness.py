"""Readiness that cannot be faked: a job starts when an inference node that serves what it needs
says it receives this microscope's frames (1.3 heartbeats), not when the frame socket has any
subscriber; a 1.2 microscope still works under the 1.2 rule."""

from __future__ import annotations

import time

import pytest
import zmq
from legacy_microscope import LegacyMicroscope

from scopeflow.acquisition.node import AcquireConfig, AcquireNode
from scopeflow.errors import PeerTimeout
from scopeflow.inference.node import InferConfig, InferNode
from scopeflow.jobs.autofocus import AutofocusJob
from scopeflow.schemas.state import depth_of_field_um
from scopeflow.scopes.remote import RemoteScope
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

from harness import pipeline, run_remote, running


def _sem(**kw) -> SimulatedSEM:
    return SimulatedSEM(SEMConfig(frame_shape=(128, 128), settle_s=0.0, **kw))


def test_a_viewer_on_the_frames_does_not_make_a_pipeline_without_inference_ready(ipc_dir):
    with pipeline(ipc_dir, _sem(), with_infer=False) as p:
        viewer = p.ctx.socket(zmq.SUB)  # a live view: subscribes to images, serves no results
        viewer.setsockopt(zmq.SUBSCRIBE, b"image")
        viewer.connect(p.frames)
        stray = p.ctx.socket(zmq.PUB)  # something else publishing heartbeat-less noise
        stray.bind(p.results)
        scope = RemoteScope(p.commands, p.results, ctx=p.ctx, timeout_s=1.0)
        try:
            time.sleep(0.3)
            assert scope.client.get_state().frame_subscribers >= 1  # the 1.2 rule would pass
            with pytest.raises(PeerTimeout, match="inference node"):
                scope.wait_ready(("focus",), 1.5)
        finally:
            scope.close()
            viewer.close()
            stray.close()


def test_an_inference_node_serving_another_kind_does_not_make_a_focus_job_ready(ipc_dir):
    with pipeline(ipc_dir, _sem(), evaluator="denoiser") as p:
        scope = RemoteScope(p.commands, p.results, ctx=p.ctx, timeout_s=1.0)
        try:
            with pytest.raises(PeerTimeout, match="serves focus from the frames of series"):
                scope.wait_ready(("focus",), 2.0)
            status = scope.wait_ready(("denoised",), 5.0)  # what it does serve is ready
            assert status.series_unique_id == p.acquire.series_unique_id
        finally:
            scope.close()


def test_foreign_raw_unsubscribes_do_not_make_a_working_pipeline_refuse(ipc_dir):
    with pipeline(ipc_dir, _sem(), evaluator="normalized_variance") as p:
        foreign = p.ctx.socket(zmq.XSUB)  # sends raw (un)subscription messages upstream
        foreign.connect(p.frames)
        try:
            time.sleep(0.3)
            for raw in (b"\x01image", b"\x00image", b"\x00image", b"\x00", b"\x00status"):
                foreign.send(raw)  # subscribe, then unsubscribe more than it subscribed
            time.sleep(0.3)
            scope = RemoteScope(p.commands, p.results, ctx=p.ctx, timeout_s=5.0)
            try:
                status = scope.wait_ready(("focus",), 10.0)
                assert status.series_unique_id == p.acquire.series_unique_id
            finally:
                scope.close()
        finally:
            foreign.close()


def test_an_inference_node_of_another_microscope_does_not_count(ipc_dir):
    ctx = zmq.Context()
    mine = AcquireNode(
        _sem(),
        AcquireConfig(
            frames_endpoint=f"ipc://{ipc_dir}/f1", commands_endpoint=f"ipc://{ipc_dir}/c1"
        ),
        ctx=ctx,
    )
    other = AcquireNode(
        _sem(),
        AcquireConfig(
            frames_endpoint=f"ipc://{ipc_dir}/f2", commands_endpoint=f"ipc://{ipc_dir}/c2"
        ),
        ctx=ctx,
    )
    infer = InferNode(
        InferConfig(frames_endpoint=f"ipc://{ipc_dir}/f2", results_endpoint=f"ipc://{ipc_dir}/r"),
        ctx=ctx,
    )
    try:
        with running(mine), running(other), running(infer):
            scope = RemoteScope(f"ipc://{ipc_dir}/c1", f"ipc://{ipc_dir}/r", ctx=ctx)
            try:
                with pytest.raises(PeerTimeout, match=mine.series_unique_id):
                    scope.wait_ready(("focus",), 2.5)
            finally:
                scope.close()
    finally:
        ctx.term()


def test_a_protocol_1_2_microscope_still_works_unchanged(ipc_dir):
    dof = depth_of_field_um(10.0, 3.0)
    sim = SimulatedSEM(SEMConfig(frame_shape=(256, 256), settle_s=0.0, start_wd_um=5000 + 8 * dof))
    ctx = zmq.Context()
    frames, commands, results = (f"ipc://{ipc_dir}/{n}" for n in ("f", "c", "r"))
    infer = InferNode(InferConfig(frames_endpoint=frames, results_endpoint=results), ctx=ctx)
    try:
        with LegacyMicroscope(ctx, sim, frames, commands), running(infer):
            outcome = run_remote(ctx, commands, results, AutofocusJob())
    finally:
        ctx.term()
    assert outcome.reason == "converged", outcome.message
    assert abs(sim.state().wd_um - sim.true_focus_wd_um()) <= 0.5 * dof
