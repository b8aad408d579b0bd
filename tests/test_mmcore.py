"""The pymmcore-plus adapter for real, through UniMMCore with pure-Python devices that wrap the
simulated optical microscope: autofocus and a tile scan run through Micro-Manager's own calls
(snapImage, setPosition, setXYPosition, pixel-size presets), and useq-schema plans describe
the scan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import useq

from scopeflow.devices.mmcore import MMCoreMicroscope, MMOptions
from scopeflow.errors import DeviceError, UsageError
from scopeflow.jobs.autofocus import AutofocusJob, AutofocusJobConfig
from scopeflow.jobs.runner import run_job
from scopeflow.jobs.scan import ScanJob
from scopeflow.scopes.local import LocalScope
from scopeflow_lab.sim.mm_sim import simulated_core
from scopeflow_lab.sim.optical import OpticalConfig, SimulatedOpticalMicroscope

SF = [sys.executable, "-m", "scopeflow"]


def _mm_scope(sim: SimulatedOpticalMicroscope, model: str = "tenengrad") -> LocalScope:
    core, options = simulated_core(sim)
    return LocalScope(MMCoreMicroscope(core, MMOptions(**options)), models={"focus": model})


def _sim(**changes) -> SimulatedOpticalMicroscope:
    return SimulatedOpticalMicroscope(
        OpticalConfig(seed=5, z_settle_s=0.0, stage_settle_s=0.0, **changes)
    )


def test_the_adapter_reports_what_micro_manager_knows():
    sim = _sim()
    scope = _mm_scope(sim)
    state = scope.status().state
    truth = sim.state()
    assert state.pixel_size_nm == pytest.approx(truth.pixel_size_nm)  # from the preset
    assert state.wd_um == truth.wd_um and state.numerical_aperture == truth.numerical_aperture
    shot = scope.snap()
    pixels = scope.frame(shot).array()
    assert pixels.shape == sim.acquire().pixels.shape and pixels.ndim == 3  # RGB, rows × cols
    scope.move_stage(250.0, -125.0)
    assert (sim.state().stage_x_um, sim.state().stage_y_um) == (250.0, -125.0)


def test_autofocus_through_micro_manager_converges():
    dof = _sim().state().depth_of_field_um()
    start = _sim().config.focus_z_at(0.0, 0.0) + 9 * dof
    sim = _sim(start_z_um=start)
    outcome, stats = run_job(AutofocusJob(AutofocusJobConfig()), _mm_scope(sim))
    assert outcome.reason == "converged", outcome.message
    assert abs(sim.state().wd_um - sim.true_focus_z_um()) <= 0.5 * dof
    assert stats.frames == outcome.figures["frames"] >= 3


def test_a_tile_scan_from_a_useq_mdasequence_runs_through_micro_manager():
    sim = _sim()
    plan = useq.MDASequence(
        stage_positions=[(-2000.0, 1500.0), (2500.0, -1000.0)],
        grid_plan=useq.GridRowsColumns(rows=1, columns=2, fov_width=500.0, fov_height=500.0),
    )
    expected = [(-2250.0, 1500.0), (-1750.0, 1500.0), (2250.0, -1000.0), (2750.0, -1000.0)]
    job = ScanJob(plan, autofocus=AutofocusJobConfig())
    outcome, _ = run_job(job, _mm_scope(sim))
    tiles = outcome.details["tiles"]
    assert outcome.reached_goal, outcome.message
    assert [(t["x_um"], t["y_um"]) for t in tiles] == expected
    assert all(t["autofocus"] == "converged" for t in tiles), tiles
    # Every tile ended in focus at its own position of the tilted, bowed chip.
    for t in tiles:
        assert abs(t["wd_um"] - sim.config.focus_z_at(t["x_um"], t["y_um"])) <= 0.5 * (
            sim.state().depth_of_field_um()
        )


def test_run_autofocus_with_the_mmcore_sim_scope_on_the_command_line(tmp_path):
    res = subprocess.run(
        [*SF, "run", "autofocus", "--scope", "mmcore:sim", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "outcome.json").read_text())
    assert doc["reason"] == "converged" and doc["scope"] == "mmcore:sim"
    assert "DEBUG" not in res.stderr  # importing pymmcore-plus must not turn on debug logging


def test_flake_search_runs_through_micro_manager_and_writes_its_catalog(tmp_path):
    """The issue's command on mmcore:sim: the same job through pymmcore-plus."""
    res = subprocess.run(
        [*SF, "run", "flake-search", "--scope", "mmcore:sim", "--region=-300,-200,300,200",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    for name in ("catalog.json", "catalog.csv", "catalog.coco.json", "chip_map.png",
                 "chip_map.html", "outcome.json"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    flakes = json.loads((tmp_path / "catalog.json").read_text())["flakes"]
    assert flakes
    # Centroids in stage µm, inside the region scanned (a tile reaches past it by half a field).
    assert all(-800 < f["x_um"] < 800 and -600 < f["y_um"] < 600 for f in flakes)
    assert all(f["magnification"] > 0 and f["area_um2"] > 0 for f in flakes)


def test_a_real_configuration_needs_its_z_limits_and_a_loadable_file(tmp_path):
    from scopeflow.devices.mmcore import open_mmcore

    cfg = tmp_path / "MMConfig.cfg"
    cfg.write_text("Device,Cam,DemoCamera,DCam\nLabel,Core,Camera,Cam\n")
    with pytest.raises(UsageError, match="no Micro-Manager configuration"):
        open_mmcore(str(tmp_path / "missing.cfg"))
    with pytest.raises(UsageError, match="not KEY=VALUE"):
        open_mmcore(f"{cfg},zmax=3")
    # No Micro-Manager device adapters here: the file names one that cannot be loaded.
    with pytest.raises(DeviceError, match="could not load"):
        open_mmcore(f"{cfg},z_min_um=0,z_max_um=100")
    core, _ = simulated_core(_sim())
    with pytest.raises(UsageError, match="z_min_um and z_max_um"):
        MMCoreMicroscope(core, MMOptions(numerical_aperture=0.4))


def test_an_objective_turret_is_an_objective_device_with_its_pixel_size():
    from scopeflow.devices.limits import guard
    from scopeflow.devices.mmcore import open_mmcore, parse_objective_label
    from scopeflow.devices.protocols import Objective
    from scopeflow.errors import LimitError

    device = guard(open_mmcore("sim"))
    turret = device.device(Objective)
    assert turret is not None
    assert device.state().pixel_size_nm == pytest.approx(5860.0 / 20)  # IMX174 pixel / 20x
    turret.set_objective("50x")  # by magnification: the turret's labels carry the NA too
    assert turret.objective().startswith("50x")
    state = device.state()
    assert state.pixel_size_nm == pytest.approx(5860.0 / 50)
    assert state.magnification == 50.0 and state.numerical_aperture == pytest.approx(0.80)
    with pytest.raises(LimitError, match="no objective"):
        turret.set_objective("63x")
    assert parse_objective_label("Nikon 20X Plan Fluor N.A. 0.45") == (20.0, 0.45)
    assert parse_objective_label("50x/0.80") == (50.0, 0.80)
