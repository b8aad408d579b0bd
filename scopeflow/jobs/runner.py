"""Runs any job on any scope: carries out its actions, times the loop, shows progress.

The runner is the only code that touches the scope for a job. It waits until the scope is
ready for the result kinds the job needs, then feeds the job's generator: a focus move larger
than the maximum step (the device's ``max_wd_step_um``, or ``max_step_um`` when smaller) is
split into allowed steps; a snap takes a frame and waits for each result kind; a failure
(timeout, refused command, device fault) is thrown into the job so it can end with what it has.
It measures the loop latency from each frame's acquisition to the move it caused.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scopeflow.devices.protocols import Objective
from scopeflow.errors import ScopeflowError, UsageError
from scopeflow.jobs.base import (
    Action,
    Collect,
    Job,
    JobOutcome,
    MoveFocus,
    MoveStage,
    Observation,
    Progress,
    SetObjective,
    Snap,
    failure_reason,
)
from scopeflow.scopes.base import Scope, ScopeStatus


@dataclass(frozen=True)
class RunnerConfig:
    """Timeouts and the move limit of the runner."""

    ready_timeout_s: float = 20.0
    result_timeout_s: float = 5.0
    max_step_um: float | None = None  # split focus moves larger than this (and the device's)


@dataclass
class RunStats:
    """What the runner measured while a job ran."""

    frames: int = 0
    moves: int = 0
    seconds: float = 0.0
    job_seconds: float = 0.0  # inside the job's own code (its decisions), not the scope's
    loop_latency_ms: list[float] | None = None


def run_job(
    job: Job,
    scope: Scope,
    config: RunnerConfig | None = None,
    progress: Callable[[str, bool], None] | None = None,
) -> tuple[JobOutcome, RunStats]:
    """Run ``job`` on ``scope`` to its end; never raises for peer or device failures (they
    become the outcome's reason)."""
    cfg = config or RunnerConfig()
    stats = RunStats(loop_latency_ms=[])
    t0 = time.monotonic()
    try:
        status = scope.wait_ready(job.needs, cfg.ready_timeout_s)
    except ScopeflowError as exc:
        stats.seconds = time.monotonic() - t0
        return JobOutcome(job.name, failure_reason(exc), False, exc.reason), stats
    plan = job.plan(status)
    carry = _Carrier(scope, status, cfg, stats, progress or (lambda _text, _transient: None))
    # What the job gets next: an observation (send; None starts it) or a failure (throw).
    answer: Observation | ScopeflowError | None = None
    try:
        while True:
            t_job = time.perf_counter()
            try:
                if isinstance(answer, ScopeflowError):
                    action = plan.throw(answer)
                else:
                    action = plan.send(answer)
            finally:
                stats.job_seconds += time.perf_counter() - t_job
            try:
                answer = carry.out(action)
            except ScopeflowError as exc:
                answer = exc
    except StopIteration as stop:
        outcome = stop.value
    except KeyboardInterrupt:  # Ctrl-C: the job's files so far stay; say how it ended
        plan.close()
        outcome = JobOutcome(job.name, "interrupted", False, "interrupted by the user")
    except ScopeflowError as exc:  # the job let a failure through: it ends there
        outcome = JobOutcome(job.name, failure_reason(exc), False, exc.reason)
    stats.seconds = time.monotonic() - t0
    return outcome, stats


class _Carrier:
    """Carries actions out on a scope and keeps the runner's counters."""

    def __init__(
        self,
        scope: Scope,
        status: ScopeStatus,
        cfg: RunnerConfig,
        stats: RunStats,
        progress: Callable[[str, bool], None],
    ) -> None:
        self.scope = scope
        self.status = status
        self.cfg = cfg
        self.stats = stats
        self.progress = progress
        self.last_frame_ns: int | None = None  # acquisition time of the last frame read

    def out(self, action: Action) -> Observation:
        if isinstance(action, MoveFocus):
            self._latency()
            device_max = self.status.limits.max_wd_step_um
            steps = split_move(
                self.status.state.wd_target_um,
                action.wd_um,
                _smaller(device_max, self.cfg.max_step_um),
            )
            for wd in steps:
                self.status = self.scope.set_focus(wd)
            self.stats.moves += 1
            return Observation(self.status)
        if isinstance(action, MoveStage):
            self._latency()
            self.status = self.scope.move_stage(action.x_um, action.y_um)
            self.stats.moves += 1
            return Observation(self.status)
        if isinstance(action, Snap):
            shot = self.scope.snap()
            results: dict[str, Any] = {}
            for kind in action.kinds:
                results[kind] = self.scope.result(shot, kind, self.cfg.result_timeout_s)
                frame_ns = getattr(results[kind], "monotonic_ns", None)
                if frame_ns is not None:
                    self.last_frame_ns = frame_ns
            if action.later:
                self.scope.compute_later(shot, action.later)
            pixels = self.scope.pixels(shot, self.cfg.result_timeout_s) if action.pixels else None
            self.stats.frames += 1
            self.progress(f"frames {self.stats.frames}, moves {self.stats.moves}", True)
            return Observation(self.status, shot, results, pixels)
        if isinstance(action, Collect):
            collected = {
                kind: self.scope.result(action.shot, kind, self.cfg.result_timeout_s)
                for kind in action.kinds
            }
            return Observation(self.status, action.shot, collected)
        if isinstance(action, SetObjective):
            turret = self.scope.device(Objective)
            if turret is None:
                raise UsageError(
                    f"{self.scope.name} has no objective changer: cannot use {action.name!r}"
                )
            turret.set_objective(action.name)
            self.status = self.scope.status()
            return Observation(self.status)
        if isinstance(action, Progress):
            total = f"/{action.total:g}" if action.total is not None else ""
            self.progress(f"{action.done:g}{total} {action.text}".strip(), False)
            return Observation(self.status)
        raise TypeError(f"a job yielded {action!r}, which is not an action")

    def _latency(self) -> None:
        """Frame acquisition → the move it caused, on this host's monotonic clock."""
        if self.last_frame_ns is not None and self.stats.loop_latency_ms is not None:
            self.stats.loop_latency_ms.append((time.monotonic_ns() - self.last_frame_ns) / 1e6)
            self.last_frame_ns = None


def _smaller(a: float | None, b: float | None) -> float | None:
    given = [m for m in (a, b) if m is not None]
    return min(given) if given else None


def split_move(from_um: float, to_um: float, max_step_um: float | None) -> list[float]:
    """Intermediate and final targets so no single move exceeds ``max_step_um``."""
    if max_step_um is None or abs(to_um - from_um) <= max_step_um:
        return [to_um]
    n = math.ceil(abs(to_um - from_um) / max_step_um - 1e-9)
    return [from_um + (to_um - from_um) * k / n for k in range(1, n)] + [to_um]


def print_progress(text: str, transient: bool) -> None:
    """Progress on stderr: one updating line on a terminal; elsewhere (a log file) a line per
    job report, and none for transient counters (a line per frame would bury the log)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{text}")
    elif not transient:
        sys.stderr.write(text + "\n")
    else:
        return
    sys.stderr.flush()
