"""The control node: connects to a command server and a results stream, runs a job, reports.

The job is one autofocus, optionally followed by focus tracking for a number of live frames
(``track_frames``), whose summary lands in the outcome's ``tracking``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import zmq

from scopeflow.control.autofocus import AutofocusConfig
from scopeflow.control.client import MicroscopeClient
from scopeflow.control.learned_autofocus import LearnedAutofocusConfig
from scopeflow.control.results import ResultSubscriber
from scopeflow.control.runner import AutofocusOutcome, RunnerConfig, run_autofocus
from scopeflow.control.tracking_runner import run_tracking
from scopeflow.metrics import NodeMetrics
from scopeflow.transport.endpoints import CurveClientKeys


@dataclass(frozen=True)
class ControlConfig:
    """Endpoints and autofocus parameters of a control node."""

    commands_endpoint: str
    results_endpoint: str
    search_range_dof: float = 30.0
    tolerance_dof: float = 0.5
    max_frames: int = 40
    timeout_s: float = 5.0
    ready_timeout_s: float = 20.0
    curve: CurveClientKeys | None = None
    max_step_um: float | None = None
    acnet_backend: str | None = "auto"
    track_frames: int = 0  # after a converged autofocus, track focus for this many live frames


def run_control(config: ControlConfig, ctx: zmq.Context | None = None) -> AutofocusOutcome:
    """Run one autofocus job and return its outcome; sockets are closed on return."""
    own = ctx is None
    ctx = ctx or zmq.Context()
    metrics = NodeMetrics("control")
    client = MicroscopeClient(
        ctx, config.commands_endpoint, timeout_s=config.timeout_s, curve=config.curve
    )
    results = ResultSubscriber(ctx, config.results_endpoint, metrics)
    try:
        outcome = run_autofocus(
            client,
            results,
            RunnerConfig(
                ready_timeout_s=config.ready_timeout_s,
                result_timeout_s=config.timeout_s,
                search=AutofocusConfig(
                    search_range_dof=config.search_range_dof,
                    tolerance_dof=config.tolerance_dof,
                    max_frames=config.max_frames,
                ),
                learned=replace(
                    LearnedAutofocusConfig(),
                    tolerance_dof=config.tolerance_dof,
                    max_frames=config.max_frames,
                ),
                acnet_backend=config.acnet_backend,
                max_step_um=config.max_step_um,
            ),
        )
        if config.track_frames > 0 and outcome.stop_reason == "converged" and outcome.dof_um:
            outcome.tracking = run_tracking(
                client,
                results,
                config.track_frames,
                outcome.dof_um,
                result_timeout_s=config.timeout_s,
            ).to_dict()
        return outcome
    finally:
        client.close()
        results.close()
        if own:
            ctx.term()
