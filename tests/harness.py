"""Run real nodes in threads of the test process, wired over real ipc sockets."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from scopeflow.acquisition.node import AcquireConfig, AcquireNode
from scopeflow.devices.protocols import Microscope
from scopeflow.inference.node import InferConfig, InferNode
from scopeflow.jobs.autofocus import AutofocusJob, AutofocusRecord
from scopeflow.jobs.base import JobOutcome
from scopeflow.jobs.runner import RunnerConfig, run_job
from scopeflow.schemas.state import depth_of_field_um
from scopeflow.scopes.remote import RemoteScope
from scopeflow_lab.sim.sem import SEMConfig


@dataclass
class Pipeline:
    ctx: zmq.Context
    acquire: AcquireNode
    infer: InferNode | None
    frames: str
    commands: str
    results: str


@contextmanager
def running(node) -> Iterator[threading.Thread]:
    """Run ``node`` in a thread; stop it and require a clean exit within 5 s."""
    thread = threading.Thread(target=node.run, name=type(node).__name__)
    thread.start()
    try:
        yield thread
    finally:
        node.stop()
        thread.join(5.0)
        assert not thread.is_alive(), f"{type(node).__name__} did not shut down"


@contextmanager
def pipeline(
    ipc_dir: Path,
    microscope: Microscope,
    *,
    evaluator: str = "normalized_variance",
    with_infer: bool = True,
    metrics_port: int | None = None,
    **acquire_options,
) -> Iterator[Pipeline]:
    """An acquisition node (and an inference node) on ipc endpoints in ``ipc_dir``."""
    ctx = zmq.Context()
    frames, commands, results = (f"ipc://{ipc_dir}/{n}" for n in ("f", "c", "r"))
    acq = AcquireNode(
        microscope,
        AcquireConfig(frames_endpoint=frames, commands_endpoint=commands, **acquire_options),
        ctx=ctx,
        metrics_port=metrics_port,
    )
    inf = (
        InferNode(
            InferConfig(frames_endpoint=frames, results_endpoint=results, model=evaluator), ctx=ctx
        )
        if with_infer
        else None
    )
    try:
        with running(acq):
            if inf is None:
                yield Pipeline(ctx, acq, None, frames, commands, results)
            else:
                with running(inf):
                    yield Pipeline(ctx, acq, inf, frames, commands, results)
    finally:
        ctx.term()


def seeded_trial(seed: int, rng_seed: int, families: tuple[str, ...]) -> tuple[SEMConfig, float]:
    """A seeded closed-loop trial: family ``families[seed % n]``, pixel 5/10/20 nm, α 2/3/5
    mrad, dose 20–200 e⁻/px and a start within ±20 DoF of focus, drawn from ``rng_seed``."""
    rng = np.random.default_rng(rng_seed)
    pixel_nm = float(rng.choice([5.0, 10.0, 20.0]))
    alpha = float(rng.choice([2.0, 3.0, 5.0]))
    start_dof = float(rng.uniform(-20.0, 20.0))
    cfg = SEMConfig(
        seed=seed,
        family=families[seed % len(families)],
        pixel_size_nm=pixel_nm,
        beam_semiangle_mrad=alpha,
        dose_e_per_px=float(rng.uniform(20.0, 200.0)),
        start_wd_um=5000.0 + start_dof * depth_of_field_um(pixel_nm, alpha),
        settle_s=0.0,
    )
    return cfg, start_dof


def run_remote(
    ctx: zmq.Context,
    commands: str,
    results: str,
    job: Any,
    *,
    timeout_s: float = 10.0,
    ready_timeout_s: float = 20.0,
) -> JobOutcome:
    """Run ``job`` through a remote scope on a pipeline's endpoints, as ``scopeflow run`` does."""
    scope = RemoteScope(commands, results, ctx=ctx, timeout_s=timeout_s)
    try:
        outcome, _ = run_job(
            job, scope, RunnerConfig(ready_timeout_s=ready_timeout_s, result_timeout_s=timeout_s)
        )
    finally:
        scope.close()
    return outcome


def remote_autofocus(p: Pipeline, **options: float) -> AutofocusRecord:
    """One autofocus job over a pipeline's sockets; its record (every frame, the reason)."""
    return autofocus_record(p.ctx, p.commands, p.results, **options)


def autofocus_record(ctx: zmq.Context, commands: str, results: str, **options: float):
    job = AutofocusJob()
    outcome = run_remote(ctx, commands, results, job, **options)
    if not outcome.details:  # the runner ended it before the job began (scope not ready)
        job.record.stop_reason, job.record.message = outcome.reason, outcome.message
    return job.record


def scopeflow_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m scopeflow ARGS`` in a child process, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "scopeflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
