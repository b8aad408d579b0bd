"""``scopeflow run JOB --scope SCOPE [job options] --out DIR`` and ``scopeflow jobs``.

The output folder is created before anything moves, so a run that cannot write its outcome
fails before touching the microscope. ``DIR/outcome.json`` holds the job, its reason, the
figures, the job's record, the runner's measurements and the versions of what ran; the exit
status is 0 only when the job reached its goal (see :func:`scopeflow.errors.exit_code_for`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from scopeflow.errors import UsageError, exit_code_for
from scopeflow.jobs.base import JobOutcome
from scopeflow.jobs.registry import jobs, summary
from scopeflow.jobs.runner import RunnerConfig, RunStats, print_progress, run_job

DEFAULT_RESULTS = "tcp://127.0.0.1:5552"
VERSIONED = ("scopeflow", "numpy", "pyzmq", "pydantic", "onnxruntime", "useq-schema")


def add_parsers(sub: Any) -> None:
    """Add ``run`` (one sub-command per registered job) and ``jobs`` to the CLI."""
    run = sub.add_parser("run", help="run a job (autofocus, scan…) on a scope")
    per_job = run.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, job in jobs().items():
        p = per_job.add_parser(name, help=summary(job), description=summary(job))
        _add_common(p)
        job.add_arguments(p)
        p.set_defaults(func=cmd_run, job_class=job)
    ls = sub.add_parser("jobs", help="list the registered jobs")
    ls.set_defaults(func=cmd_jobs)


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scope and output")
    g.add_argument(
        "--scope",
        required=True,
        help="NAME:ARGUMENT of a registered adapter: sim:sem, sim:optical, sim:insitu "
        "(,key=value options), mmcore:sim, mmcore:PATH/MMConfig.cfg, remote:tcp://HOST:5551",
    )
    g.add_argument("--out", type=Path, default=None, help="output folder (default runs/JOB-TIME)")
    g.add_argument(
        "--results", default=DEFAULT_RESULTS, help="results endpoint of a remote scope (connect)"
    )
    g.add_argument(
        "--frames-endpoint",
        default=None,
        help="frames endpoint of a remote scope, for jobs that keep pixels (flake thumbnails)",
    )
    g.add_argument(
        "--focus-model",
        default=None,
        help="local scope: focus model or metric (default: the job's own, aenet for autofocus "
        "on the SEM, tenengrad for the flake jobs on optical tiles)",
    )
    g.add_argument("--detector", default="flake_detector", help="local scope: detector model")
    g.add_argument("--backend", default="auto", help="local scope: inference backend")
    g.add_argument(
        "--materials",
        default=None,
        metavar="M1,M2",
        help="local scope: the flake materials on the chip (graphene, hBN, MoS2, WSe2); the "
        "detector reports no other (default: any)",
    )
    g.add_argument(
        "--calibration",
        default=None,
        metavar="CAL",
        help="local scope: the flake detector's setup calibration "
        "(from `scopeflow calibrate flake-detector`)",
    )
    g.add_argument(
        "--oxide-nm",
        default=None,
        metavar="NM|LO-HI|auto",
        help="local scope: the chip's SiO₂ thickness (nm), a range to estimate it within, "
        "auto (the default without --calibration) or none; the flake detector's physics prior "
        "calibrates its colours from the chip's own flakes (oxides, lamps and cameras it was "
        "not trained on)",
    )
    g.add_argument("--timeout-s", type=float, default=5.0, help="give up on a silent peer")
    g.add_argument("--ready-timeout-s", type=float, default=20.0)
    g.add_argument(
        "--max-step-um",
        type=float,
        default=None,
        help="split focus moves larger than this (default: the device's maximum)",
    )
    g.add_argument("--curve-secret", default=None, help="remote: client secret key file")
    g.add_argument("--curve-server-public", default=None, help="remote: server public key")


def cmd_jobs(args: argparse.Namespace) -> int:
    for name, job in jobs().items():
        print(f"{name:<14} {summary(job)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from scopeflow.scopes import open_scope

    name = args.job
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out if args.out is not None else Path("runs") / f"{name}-{stamp}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out}: {exc.strerror}") from None
    args.out = out  # jobs that write result files write them here
    try:
        job = args.job_class.from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if hasattr(job, "run_pipeline"):  # a streaming job runs its own nodes (the insitu job)
        return job.run_pipeline(args.scope)
    known_oxide = getattr(job, "oxide_nm", None)
    if args.oxide_nm is None and args.calibration is None and known_oxide is not None:
        # A revisit sees a few flakes, too few to estimate the oxide well: use the search's.
        args.oxide_nm = f"{known_oxide:g}"
        print(f"{name}: --oxide-nm {args.oxide_nm} (the catalog's estimate)")
    materials = None
    if args.materials:
        from scopeflow.inference.models.flake_detector import check_materials

        try:
            materials = check_materials(args.materials.split(","))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.oxide_nm is not None:
        from scopeflow.inference.models.flake_physics import parse_oxide

        if args.calibration is not None:
            raise UsageError("give --calibration or --oxide-nm, not both")
        try:
            if args.oxide_nm != "none":
                parse_oxide(args.oxide_nm)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.calibration is not None:  # refuse a bad calibration before anything moves
        from scopeflow.inference.models.flake_calibration import FlakeCalibration

        try:
            FlakeCalibration.load(args.calibration)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    scope = open_scope(
        args.scope,
        results_endpoint=args.results,
        models={
            "focus": args.focus_model or getattr(args.job_class, "default_focus_model", "aenet"),
            "detections": args.detector,
        },
        backend=args.backend,
        timeout_s=args.timeout_s,
        curve=_curve_client(args),
        frames_endpoint=args.frames_endpoint,
        calibration=args.calibration,
        materials=materials,
        oxide=args.oxide_nm,
    )
    config = RunnerConfig(
        ready_timeout_s=args.ready_timeout_s,
        result_timeout_s=args.timeout_s,
        max_step_um=args.max_step_um,
    )
    started = time.time()
    try:
        outcome, stats = run_job(job, scope, config, progress=print_progress)
    finally:
        scope.close()
    path = write_outcome(out, outcome, stats, scope_spec=args.scope, started=started)
    _plots(out, outcome)
    figures = ", ".join(f"{k} {_fmt(v)}" for k, v in outcome.figures.items() if v is not None)
    print(f"{name}: {outcome.reason} ({outcome.message})" + (f"; {figures}" if figures else ""))
    print(f"wrote {path}")
    return exit_code_for(outcome.reached_goal, outcome.reason)


def write_outcome(
    out: Path, outcome: JobOutcome, stats: RunStats, *, scope_spec: str, started: float
) -> Path:
    """``out/outcome.json``: job, reason, figures, record, runner measurements, versions."""
    doc = {
        "job": outcome.job,
        "reason": outcome.reason,
        "reached_goal": outcome.reached_goal,
        "message": outcome.message,
        "figures": outcome.figures,
        "scope": scope_spec,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "runner": asdict(stats),
        "versions": versions(),
        "details": outcome.details,
    }
    path = out / "outcome.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def versions() -> dict[str, str]:
    """Versions of scopeflow, its protocol, Python and the libraries that shape results."""
    from scopeflow.schemas.base import PROTOCOL_VERSION

    found = {"protocol": PROTOCOL_VERSION, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def _plots(out: Path, outcome: JobOutcome) -> None:
    """Pictures people would rather look at: the focus trace of an autofocus."""
    details = outcome.details.get("autofocus", outcome.details)
    if details.get("records"):
        from scopeflow.plots import focus_trace

        focus_trace(details, out / "focus_trace.png", title=outcome.job)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _curve_client(args: argparse.Namespace) -> Any:
    from scopeflow.transport.endpoints import CurveClientKeys

    if bool(args.curve_secret) != bool(args.curve_server_public):
        raise UsageError("--curve-secret and --curve-server-public go together")
    if not args.curve_secret:
        return None
    return CurveClientKeys(Path(args.curve_secret), Path(args.curve_server_public))
