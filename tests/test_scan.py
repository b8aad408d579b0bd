"""The scan job: a 3×3 serpentine tile scan with an autofocus at each tile, over the simulated
optical microscope, on a local scope and on a remote one (the same job code on both)."""

from __future__ import annotations

import useq

from scopeflow.jobs.autofocus import AutofocusJobConfig
from scopeflow.jobs.runner import RunnerConfig, run_job
from scopeflow.jobs.scan import ScanJob
from scopeflow.scopes.local import LocalScope
from scopeflow_lab.sim.optical import OpticalConfig, SimulatedOpticalMicroscope

from harness import pipeline, run_remote

GRID_STEP_UM = 3000.0


def _optical() -> SimulatedOpticalMicroscope:
    return SimulatedOpticalMicroscope(OpticalConfig(seed=3, z_settle_s=0.0, stage_settle_s=0.0))


def _scan_job() -> ScanJob:
    grid = useq.GridRowsColumns(rows=3, columns=3, fov_width=GRID_STEP_UM, fov_height=GRID_STEP_UM)
    return ScanJob(grid, autofocus=AutofocusJobConfig())


def _check(outcome, scope: SimulatedOpticalMicroscope) -> None:
    tiles = outcome.details["tiles"]
    assert outcome.job == "scan" and outcome.reached_goal, outcome.message
    assert [(t["x_um"], t["y_um"]) for t in tiles] == [  # serpentine, y up, around (0, 0)
        (-3000.0, 3000.0), (0.0, 3000.0), (3000.0, 3000.0),
        (3000.0, 0.0), (0.0, 0.0), (-3000.0, 0.0),
        (-3000.0, -3000.0), (0.0, -3000.0), (3000.0, -3000.0),
    ]  # fmt: skip
    converged = [t for t in tiles if t["autofocus"] == "converged"]
    assert len(converged) >= 8, [(t["x_um"], t["y_um"], t["autofocus"]) for t in tiles]
    assert outcome.figures["tiles_focused"] == len(converged)
    for t in converged:  # ground truth of the simulator: each tile ended in focus
        assert t["final_error_dof"] <= 0.5, t
    # The focus surface is tilted and bowed: the tiles' focus positions really differ.
    dof = scope.state().depth_of_field_um()
    cfg = scope.config
    focus = [cfg.focus_z_at(t["x_um"], t["y_um"]) for t in tiles]
    assert max(focus) - min(focus) > 2 * dof
    assert all(t["autofocus"] in ("converged", "no_signal") for t in tiles)


def test_scan_on_a_local_scope_focuses_every_tile():
    sim = _optical()
    scope = LocalScope(sim, models={"focus": "tenengrad"})
    outcome, stats = run_job(_scan_job(), scope, RunnerConfig())
    _check(outcome, sim)
    assert stats.frames == outcome.figures["frames"] and stats.moves >= 9


def test_the_same_scan_on_a_remote_scope_over_sockets(ipc_dir):
    sim = _optical()
    with pipeline(ipc_dir, sim, evaluator="tenengrad") as p:
        outcome = run_remote(p.ctx, p.commands, p.results, _scan_job())
    _check(outcome, sim)
