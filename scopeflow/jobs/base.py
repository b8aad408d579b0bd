"""The job protocol: a workflow that plans, reacts to results and ends with an outcome.

A job is a generator (ask/tell, like pymmcore-plus's MDA engine apart from its runner): its
:meth:`Job.plan` yields *actions* — move the focus, move the stage, take a frame and read these
result kinds, report progress — and receives an :class:`Observation` for each; it returns a
:class:`JobOutcome` with a reason. The runner (:mod:`scopeflow.jobs.runner`) owns the I/O:
it carries the actions out on a scope, splits large focus moves, times the loop, shows
progress, and throws a failure (timeout, refused command) into the generator so the job can
end with what it has. Jobs never touch sockets or devices, so one job runs on any scope.
"""

from __future__ import annotations

import argparse
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from scopeflow.errors import (
    LimitError,
    ModelUnavailable,
    PeerTimeout,
    ScopeflowError,
    UsageError,
)
from scopeflow.scopes.base import ScopeStatus, Shot


@dataclass(frozen=True)
class MoveFocus:
    """Move the focus drive to ``wd_um`` (split into allowed steps by the runner)."""

    wd_um: float


@dataclass(frozen=True)
class MoveStage:
    """Move the XY stage to (``x_um``, ``y_um``)."""

    x_um: float
    y_um: float


@dataclass(frozen=True)
class Snap:
    """Take a frame and read its results of ``kinds``; with ``pixels``, hand the frame's pixels
    back too (None where the scope cannot: a remote scope without a frames endpoint)."""

    kinds: tuple[str, ...] = ("focus",)
    pixels: bool = False
    later: tuple[str, ...] = ()  # kinds to compute meanwhile and read with Collect


@dataclass(frozen=True)
class Collect:
    """Read the ``kinds`` results of an earlier snap (its ``later`` kinds): the job moved on
    while they were computed."""

    shot: Shot
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class SetObjective:
    """Swing objective ``name`` in (scopes whose microscope has an objective changer)."""

    name: str


@dataclass(frozen=True)
class Progress:
    """Tell the user how far the job is: ``done`` of ``total`` units, and a short text."""

    done: float
    total: float | None = None
    text: str = ""


Action = MoveFocus | MoveStage | Snap | Collect | SetObjective | Progress


@dataclass(frozen=True)
class Observation:
    """What the runner hands back for an action: the status after it and, for a snap, the
    frame and its results by kind."""

    status: ScopeStatus
    shot: Shot | None = None
    results: Mapping[str, Any] = field(default_factory=dict)
    pixels: Any = None  # the frame (numpy array) when the snap asked for it


@dataclass
class JobOutcome:
    """How a job ended. ``reached_goal`` decides the exit status; ``reason`` says why in one
    word (converged, done, timeout, limit, device_error, no_signal…), ``message`` in a line.
    ``figures`` are the numbers a user reads first; ``details`` the job's full record."""

    job: str
    reason: str
    reached_goal: bool
    message: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


JobPlan = Generator[Action, Observation, JobOutcome]


class Job(Protocol):
    """A workflow; registered under ``name`` in the ``scopeflow.jobs`` entry-point group."""

    name: ClassVar[str]
    needs: tuple[str, ...]  # result kinds it reads: focus, detections, denoised

    def plan(self, status: ScopeStatus) -> JobPlan:
        """Yield actions, receive observations, return the outcome."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The job's options on ``scopeflow run NAME``."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Job:
        """The job configured from parsed options."""


class JobStopped(Exception):
    """A job ends early with ``reason`` and ``message`` (raised and caught inside its plan)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def move_one_way(x: float, y: float, status: ScopeStatus, approach_um: float) -> JobPlan:
    """Move the stage to (x, y), arriving from ``approach_um`` below in x and y (one-way
    approach): a stage's backlash then shifts every position alike instead of by direction of
    travel. Returns the observation after the last move."""
    if approach_um > 0:
        lim = status.limits
        yield MoveStage(
            max(x - approach_um, lim.stage_x_min_um), max(y - approach_um, lim.stage_y_min_um)
        )
    return (yield MoveStage(x, y))


def failure_reason(exc: ScopeflowError) -> str:
    """The outcome reason for a failure thrown into a job: timeout, limit, model_unavailable,
    usage or device_error."""
    if isinstance(exc, PeerTimeout):
        return "timeout"
    if isinstance(exc, LimitError) or exc.code in ("limit", "rate_limited"):
        return "limit"
    if isinstance(exc, ModelUnavailable):
        return "model_unavailable"
    if isinstance(exc, UsageError):  # options that cannot work here (a region off the stage)
        return "usage"
    return "device_error"
