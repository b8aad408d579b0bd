"""Jobs as a user runs them: ``scopeflow jobs``, ``scopeflow run JOB --scope SCOPE --out DIR``
with its outcome file and exit status, the same job on a local and a remote scope, and a lab's
own adapter plugged in through the entry-point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from scopeflow.errors import PeerTimeout, UsageError
from scopeflow.jobs.autofocus import AutofocusJob
from scopeflow.jobs.runner import run_job
from scopeflow.schemas.state import depth_of_field_um
from scopeflow.scopes.local import LocalScope
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

from harness import pipeline, run_remote

SF = [sys.executable, "-m", "scopeflow"]


def _run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SF, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_jobs_lists_the_registered_jobs():
    res = _run("jobs")
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines()]
    assert {"autofocus", "track-focus", "scan"} <= set(names)


def test_run_autofocus_on_a_simulated_sem_converges_and_writes_its_outcome(tmp_path):
    out = tmp_path / "not" / "yet" / "there"  # --out creates its folder
    res = _run(
        "run", "autofocus", "--scope", "sim:sem,seed=1,start_defocus_dof=12", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "outcome.json").read_text())
    assert (doc["job"], doc["reason"], doc["reached_goal"]) == ("autofocus", "converged", True)
    assert doc["scope"] == "sim:sem,seed=1,start_defocus_dof=12"
    assert doc["versions"]["protocol"].startswith("1.") and doc["versions"]["scopeflow"]
    details = doc["details"]
    assert doc["figures"]["frames"] == len(details["records"]) == doc["runner"]["frames"]
    # Scored against the simulator's ground truth, carried by the frames: within 0.5 DoF.
    assert details["final_error_um"] <= 0.5 * details["dof_um"]
    assert details["initial_error_um"] == pytest.approx(12 * depth_of_field_um(10.0, 3.0), rel=0.05)
    assert (out / "focus_trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_job_that_cannot_reach_its_goal_exits_non_zero_with_the_reason(tmp_path):
    # A blanked beam: no signal, so the autofocus stops without moving; exit 1, not 0.
    res = _run("run", "autofocus", "--scope", "sim:sem,dose=0", "--out", str(tmp_path))
    assert res.returncode == 1, res.stderr
    doc = json.loads((tmp_path / "outcome.json").read_text())
    assert doc["reason"] == "no_signal" and doc["reached_goal"] is False
    assert "no_signal" in res.stdout


def test_a_lost_microscope_exits_with_the_timeout_status_and_keeps_the_outcome(tmp_path, ipc_dir):
    res = _run(
        "run", "autofocus", "--scope", f"remote:ipc://{ipc_dir}/nobody", "--results",
        f"ipc://{ipc_dir}/none", "--timeout-s", "0.3", "--ready-timeout-s", "0.5",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert res.returncode == PeerTimeout.exit_code == 3, res.stderr
    doc = json.loads((tmp_path / "o" / "outcome.json").read_text())
    assert doc["reason"] == "timeout" and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--scope", "sim"], "NAME:ARGUMENT"),
        (["--scope", "nosuch:thing"], "no device adapter named 'nosuch'"),
        (["--scope", "sim:sem,colour=blue"], "KEY=VALUE"),
        (["--scope", "sim:sem,seed=x"], "not a valid int"),
    ],
)
def test_bad_scopes_are_refused_in_one_line_with_the_usage_status(tmp_path, args, says):
    res = _run("run", "autofocus", *args, "--out", str(tmp_path))
    assert res.returncode == UsageError.exit_code == 2
    assert says in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_the_same_autofocus_job_runs_on_a_local_and_a_remote_scope(ipc_dir):
    dof = depth_of_field_um(10.0, 3.0)
    config = SEMConfig(frame_shape=(256, 256), start_wd_um=5000 + 9 * dof, settle_s=0.0, seed=4)
    local_sim = SimulatedSEM(config)
    local, _ = run_job(AutofocusJob(), LocalScope(local_sim, models={"focus": "aenet"}))
    remote_sim = SimulatedSEM(config)
    with pipeline(ipc_dir, remote_sim, evaluator="aenet") as p:
        remote = run_remote(p.ctx, p.commands, p.results, AutofocusJob())
    for outcome, sim in ((local, local_sim), (remote, remote_sim)):
        assert outcome.reason == "converged", outcome.message
        assert abs(sim.state().wd_um - sim.true_focus_wd_um()) <= 0.5 * dof
    # Same frames, same readings, same decisions: the scope does not change the job.
    assert local.details["records"] == remote.details["records"]
    assert local.details["decisions"] == remote.details["decisions"]


PLUGIN = '''
"""A lab's own adapter: a focus drive that trusts its caller (it validates nothing)."""
from scopeflow.schemas.state import Limits, MicroscopeState


class TrustingFocus:
    name = "trusting"

    def __init__(self) -> None:
        self.wd = 100.0

    def state(self):
        return MicroscopeState(wd_um=self.wd, wd_target_um=self.wd, settled=True, stage_x_um=0,
                               stage_y_um=0, magnification=100, pixel_size_nm=1000)

    def limits(self):
        return Limits(wd_min_um=0, wd_max_um=200, stage_x_min_um=0, stage_x_max_um=0,
                      stage_y_min_um=0, stage_y_max_um=0, max_wd_step_um=50)

    def set_wd(self, wd_um, *, wait=True):
        self.wd = wd_um
        return self.state()


def open_device(arg):
    return TrustingFocus()
'''

CHECK = """
from scopeflow.devices.registry import adapters, open_device
from scopeflow.errors import LimitError
assert "labfocus" in adapters()
dev = open_device("labfocus:anything")
print(dev.set_wd(140.0).wd_um)
for bad in (250.0, 140.0 + 60.0, float("nan")):
    try:
        dev.set_wd(bad)
    except LimitError as exc:
        print("refused:", exc.reason)
print(dev.state().wd_um)
"""


def test_a_labs_adapter_plugs_in_by_entry_point_and_cannot_bypass_the_limits(tmp_path):
    site = tmp_path / "site"
    (site / "labfocus_adapter").mkdir(parents=True)
    (site / "labfocus_adapter" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "labfocus_adapter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: labfocus-adapter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[scopeflow.devices]\nlabfocus = labfocus_adapter:open_device\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "140.0"
    assert len([line for line in lines if line.startswith("refused:")]) == 3
    assert "outside the limits" in lines[1] and "maximum step" in lines[2]
    assert lines[-1] == "140.0"  # nothing it refused reached the adapter


def test_the_job_side_runs_no_model_code():
    code = (
        "import sys, scopeflow.jobs.autofocus, scopeflow.jobs.track_focus, scopeflow.jobs.scan, "
        "scopeflow.scopes.remote, scopeflow.control.learned_autofocus\n"
        "print(sorted(m for m in sys.modules if m.startswith(('scopeflow.inference.models', "
        "'onnxruntime', 'torch'))))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_run_scan_follows_a_useq_plan_file(tmp_path):
    import useq

    plan = useq.MDASequence(
        stage_positions=[(1000.0, -500.0), (-1500.0, 2000.0)],
        grid_plan=useq.GridRowsColumns(rows=1, columns=1),
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json())
    res = _run(
        "run", "scan", "--scope", "sim:optical,settle_s=0", "--plan", str(plan_file),
        "--focus-model", "tenengrad", "--out", str(tmp_path / "scan"), timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "scan" / "outcome.json").read_text())
    tiles = doc["details"]["tiles"]
    assert [(t["x_um"], t["y_um"]) for t in tiles] == [(1000.0, -500.0), (-1500.0, 2000.0)]
    assert doc["figures"]["tiles_focused"] == 2
    bad = _run("run", "scan", "--scope", "sim:optical", "--plan", str(tmp_path / "none.json"),
               "--out", str(tmp_path / "bad"))  # fmt: skip
    assert bad.returncode == 2 and "cannot read the plan" in bad.stderr


def test_closing_a_local_scope_waits_for_its_background_computations():
    """A background model still running when the interpreter exits aborts the process (the
    C++ runtime's "exception not rethrown" on a Ctrl-C'd flake search): close() waits."""
    import threading
    import time

    finished = threading.Event()

    class SlowProcessor:
        def process(self, msg):
            time.sleep(0.5)
            finished.set()
            raise ValueError("nothing to report")

    sim = SimulatedSEM(SEMConfig(seed=3))
    scope = LocalScope(sim, processors={"detections": SlowProcessor()})
    shot = scope.snap()
    scope.compute_later(shot, ("detections",))
    assert not finished.is_set()  # it runs in the background
    scope.close()
    assert finished.is_set()
