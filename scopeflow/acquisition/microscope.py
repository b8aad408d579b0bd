"""The ``Microscope`` protocol every acquisition adapter implements, and a base class that
enforces limits in one place.

Adapters know nothing of ZeroMQ: the acquisition node wraps any ``Microscope`` in a command server
and a frame publisher. Following python-microscope's habit, the public methods validate and the
``_do_*`` hooks act, so no adapter can forget a limit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from scopeflow.errors import LimitError
from scopeflow.schemas.state import Limits, MicroscopeState, SimTruth


@dataclass(frozen=True)
class Frame:
    """One acquired image with the state it was taken in.

    Times are nanoseconds: ``start_time_ns``/``stop_time_ns`` on the wall clock (UTC epoch),
    ``monotonic_ns`` on the host's monotonic clock at the end of the acquisition (for latency
    measurements on one host). ``truth`` is set by simulators only.
    """

    pixels: np.ndarray
    state: MicroscopeState
    start_time_ns: int
    stop_time_ns: int
    monotonic_ns: int
    truth: SimTruth | None = None


@runtime_checkable
class Microscope(Protocol):
    """What the pipeline needs from a microscope, real or simulated."""

    name: str

    def acquire(self) -> Frame:
        """Acquire one frame at the current state."""

    def state(self) -> MicroscopeState:
        """The current state (positions, optics, beam)."""

    def limits(self) -> Limits:
        """The device limits."""

    def set_wd(self, wd_um: float, *, wait: bool = True) -> MicroscopeState:
        """Move the focus actuator; with ``wait`` return once it has settled."""

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> MicroscopeState:
        """Move the stage to absolute coordinates."""

    def close(self) -> None:
        """Release the device."""


class MicroscopeBase(ABC):
    """Validating front for adapters: subclasses implement the ``_do_*`` hooks only."""

    name: str = "microscope"

    # -- public, validating API ---------------------------------------------------------------
    def acquire(self) -> Frame:
        return self._do_acquire()

    def set_wd(self, wd_um: float, *, wait: bool = True) -> MicroscopeState:
        check_wd_move(self.limits(), self.state().wd_target_um, wd_um)
        self._do_set_wd(float(wd_um))
        if wait:
            self._do_wait_settled()
        return self.state()

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> MicroscopeState:
        check_stage_move(self.limits(), x_um, y_um)
        self._do_move_stage(float(x_um), float(y_um))
        if wait:
            self._do_wait_settled()
        return self.state()

    def close(self) -> None:
        """Release the device; the default has nothing to release."""

    # -- hooks for adapters ---------------------------------------------------------------------
    @abstractmethod
    def state(self) -> MicroscopeState: ...

    @abstractmethod
    def limits(self) -> Limits: ...

    @abstractmethod
    def _do_acquire(self) -> Frame: ...

    @abstractmethod
    def _do_set_wd(self, wd_um: float) -> None: ...

    @abstractmethod
    def _do_move_stage(self, x_um: float, y_um: float) -> None: ...

    def _do_wait_settled(self) -> None:
        """Block until actuators have settled; adapters without settle time need not override."""


def check_wd_move(limits: Limits, current_target_um: float, wd_um: float) -> None:
    """Raise LimitError unless moving the focus from ``current_target_um`` to ``wd_um`` is
    allowed: a finite value, inside the WD limits, no larger than the maximum step."""
    _require_finite("wd_um", wd_um)
    if not limits.wd_min_um <= wd_um <= limits.wd_max_um:
        raise LimitError(
            f"WD {wd_um:.3f} µm is outside the limits "
            f"[{limits.wd_min_um:.3f}, {limits.wd_max_um:.3f}] µm"
        )
    step = abs(wd_um - current_target_um)
    if limits.max_wd_step_um is not None and step > limits.max_wd_step_um:
        raise LimitError(
            f"WD step of {step:.3f} µm exceeds the maximum step of "
            f"{limits.max_wd_step_um:.3f} µm; split the move"
        )


def check_stage_move(limits: Limits, x_um: float, y_um: float) -> None:
    """Raise LimitError unless (x_um, y_um) is finite and inside the stage limits."""
    _require_finite("x_um", x_um)
    _require_finite("y_um", y_um)
    if not (
        limits.stage_x_min_um <= x_um <= limits.stage_x_max_um
        and limits.stage_y_min_um <= y_um <= limits.stage_y_max_um
    ):
        raise LimitError(
            f"stage position ({x_um:.3f}, {y_um:.3f}) µm is outside the limits "
            f"x [{limits.stage_x_min_um}, {limits.stage_x_max_um}], "
            f"y [{limits.stage_y_min_um}, {limits.stage_y_max_um}] µm"
        )


def _require_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LimitError(f"{name} must be a finite number, got {value!r}")
