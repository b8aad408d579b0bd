"""``scopeflow demo``: autofocus end to end on a simulated SEM, as three real processes.

The acquisition node (simulated SEM) and the inference node (AENet by default, or a classical
sharpness metric with ``--evaluator``) each run as their own ``scopeflow node …`` process, and
the autofocus job runs on them as ``scopeflow run autofocus --scope remote:…`` (AENet/ACNet
autofocus, or the golden-section baseline for a classical metric), wired over ipc sockets in a
private temporary folder. The run folder receives ``summary.json``, the job's ``outcome.json``,
``focus_trace.png`` and every process's log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from scopeflow.plots import focus_trace

NODE_STOP_TIMEOUT_S = 10.0
CONTROL_TIMEOUT_S = 180.0


def _start(name: str, args: list[str], logs: Path) -> subprocess.Popen:
    log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed when the process is reaped
    cmd = [sys.executable, "-m", "scopeflow", *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen, name: str) -> str | None:
    """Terminate a node; a problem string when it did not shut down cleanly."""
    problem = None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(NODE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problem = f"{name} did not stop within {NODE_STOP_TIMEOUT_S:g} s and was killed"
    # The job's own status says whether it reached its goal (the summary reports that); a
    # node must exit cleanly.
    if problem is None and name != "control" and proc.returncode != 0:
        problem = f"{name} exited with status {proc.returncode}"
    proc.log_file.close()  # type: ignore[attr-defined]
    return problem


def start_defocus_dof(seed: int) -> float:
    """The demo's starting defocus: 5 to 20 DoF either side of focus, fixed by the seed."""
    rng = np.random.default_rng(seed)
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 20.0))


def run_demo(
    out_dir: Path | None = None, seed: int = 1, evaluator: str = "aenet", progress=print
) -> int:
    """Run the demo; exit status 0 when autofocus converged."""
    out = Path(out_dir) if out_dir else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    defocus = start_defocus_dof(seed)
    progress(f"scopeflow demo → {out}/  (seed {seed}, start {defocus:+.1f} DoF, {evaluator})")
    with tempfile.TemporaryDirectory(prefix="sfd-", dir="/tmp") as sock_dir:
        frames, commands, results = (f"ipc://{sock_dir}/{n}" for n in ("f", "c", "r"))
        procs = {
            "acquire": _start(
                "acquire",
                [
                    "node",
                    "acquire",
                    "--frames",
                    frames,
                    "--commands",
                    commands,
                    "--seed",
                    str(seed),
                    "--start-defocus-dof",
                    f"{defocus}",
                ],
                logs,
            ),
            "infer": _start(
                "infer",
                [
                    "node",
                    "infer",
                    "--frames",
                    frames,
                    "--results",
                    results,
                    "--evaluator",
                    evaluator,
                ],
                logs,
            ),
        }
        outcome_path = out / "outcome.json"
        t0 = time.monotonic()
        job = ["run", "autofocus", "--scope", f"remote:{commands}", "--results", results]
        control = _start("control", [*job, "--out", str(out)], logs)
        procs["control"] = control
        problems = []
        try:
            control.wait(CONTROL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            problems.append(f"control did not finish within {CONTROL_TIMEOUT_S:g} s")
        wall = time.monotonic() - t0
        for name in ("control", "infer", "acquire"):
            problem = _stop(procs[name], name)
            if problem:
                problems.append(problem)
    if not outcome_path.exists():
        progress(f"demo failed: no autofocus outcome; see {logs}/")
        for p in problems:
            progress(f"  - {p}")
        return 2
    job_outcome = json.loads(outcome_path.read_text())
    outcome = {**job_outcome["details"], "seconds": job_outcome["runner"]["seconds"]}
    summary = {
        "job": "autofocus",
        "evaluator": outcome["evaluator"],
        "stop_reason": outcome["stop_reason"],
        "frames": outcome["frames"],
        "initial_error_um": outcome["initial_error_um"],
        "final_error_um": outcome["final_error_um"],
        "dof_um": outcome["dof_um"],
        "final_error_dof": (
            outcome["final_error_um"] / outcome["dof_um"]
            if outcome["final_error_um"] is not None and outcome["dof_um"]
            else None
        ),
        "start_defocus_dof": defocus,
        "seed": seed,
        "message": outcome["message"],
        "autofocus_seconds": outcome["seconds"],
        "wall_seconds_incl_startup": wall,
        "node_problems": problems,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    focus_trace(outcome, out / "focus_trace.png", title=f"demo seed {seed}")
    _print_summary(summary, out, progress)
    if problems:
        return 2
    return 0 if summary["stop_reason"] == "converged" else 1


def _print_summary(s: dict, out: Path, progress) -> None:
    err = s["final_error_um"]
    progress(f"  stop reason      {s['stop_reason']}  ({s['message']})")
    progress(f"  evaluator        {s['evaluator']}")
    progress(f"  frames           {s['frames']}")
    if err is not None:
        progress(f"  initial error    {s['initial_error_um']:.2f} µm")
        progress(
            f"  final error      {err:.2f} µm = {s['final_error_dof']:.2f} DoF "
            f"(DoF {s['dof_um']:.2f} µm; success ≤ 0.5 DoF)"
        )
    progress(f"  autofocus time   {s['autofocus_seconds']:.2f} s")
    progress(f"  wrote            {out / 'summary.json'}, {out / 'focus_trace.png'}")
