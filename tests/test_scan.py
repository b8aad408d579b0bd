"""A tile scan driven over the protocol against the simulated optical microscope."""

from __future__ import annotations

import pytest

from scopeflow.acquisition.optical import OpticalConfig, SimulatedOpticalMicroscope
from scopeflow.control.client import MicroscopeClient
from scopeflow.control.results import ResultSubscriber
from scopeflow.control.runner import RunnerConfig, run_autofocus
from scopeflow.metrics import NodeMetrics

from harness import pipeline

GRID_STEP_UM = 3000.0


def test_three_by_three_scan_with_a_z_search_at_each_tile(ipc_dir):
    scope = SimulatedOpticalMicroscope(OpticalConfig(seed=3, z_settle_s=0.0, stage_settle_s=0.0))
    tiles = []
    with pipeline(ipc_dir, scope, evaluator="tenengrad") as p:
        client = MicroscopeClient(p.ctx, p.commands, timeout_s=10)
        results = ResultSubscriber(p.ctx, p.results, NodeMetrics("scan"))
        try:
            for row in (-1, 0, 1):
                cols = (-1, 0, 1) if row % 2 == 0 else (1, 0, -1)  # serpentine
                for col in cols:
                    x, y = col * GRID_STEP_UM, row * GRID_STEP_UM
                    reply = client.move_stage(x, y)
                    assert (reply.state.stage_x_um, reply.state.stage_y_um) == (x, y)
                    out = run_autofocus(client, results, RunnerConfig(ready_timeout_s=10))
                    tiles.append((x, y, out, scope.true_focus_z_um(), scope.state().wd_um))
        finally:
            client.close()
            results.close()
    assert len(tiles) == 9
    converged = [t for t in tiles if t[2].stop_reason == "converged"]
    assert len(converged) >= 8, [(t[0], t[1], t[2].stop_reason, t[2].message) for t in tiles]
    for x, y, out, true_z, z in converged:
        assert abs(z - true_z) <= 0.5 * out.dof_um, (x, y, z, true_z, out.dof_um)
    # The focus surface is tilted and bowed: the tiles' focus positions really differ.
    focus = [t[3] for t in tiles]
    assert max(focus) - min(focus) > 2 * converged[0][2].dof_um
    assert all(out.stop_reason in ("converged", "no_signal") for _, _, out, _, _ in tiles)
    assert converged[0][2].dof_um == pytest.approx(scope.state().depth_of_field_um())
