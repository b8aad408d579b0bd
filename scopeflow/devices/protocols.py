"""Narrow protocols per device kind, and the frame a camera returns.

An adapter implements the kinds it can: a camera (``acquire``), a focus drive (SEM working
distance or optical Z, ``set_wd``), an XY stage (``move_stage``), and optionally a stigmator, a
beam shift or illumination control. Every adapter reports its ``state()`` and ``limits()``.
A :class:`Microscope` is the usual composite (camera + focus drive + stage); jobs ask a scope
for an optional kind with ``scope.device(Stigmator)`` and get None where the adapter lacks it.

Adapters know nothing of ZeroMQ and never validate: the one validation layer is
:func:`scopeflow.devices.limits.guard`, which every caller goes through (the command server,
local scopes, the registry), so no adapter can forget a limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

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
    channel_order: str | None = None  # "RGB" or "BGR" for colour frames; None: RGB


@runtime_checkable
class StateSource(Protocol):
    """What every adapter reports: its state and its limits."""

    def state(self) -> MicroscopeState:
        """The current state (positions, optics, beam)."""

    def limits(self) -> Limits:
        """The device limits."""


@runtime_checkable
class Camera(Protocol):
    """Takes a frame at the current state."""

    def acquire(self) -> Frame:
        """Acquire one frame."""


@runtime_checkable
class FocusDrive(Protocol):
    """Moves focus: an SEM's working distance or a light microscope's Z drive, µm."""

    def set_wd(self, wd_um: float, *, wait: bool = True) -> MicroscopeState:
        """Move to ``wd_um``; with ``wait`` return once the drive has settled."""


@runtime_checkable
class XYStage(Protocol):
    """Moves the specimen in x and y, absolute µm."""

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> MicroscopeState:
        """Move to (x_um, y_um); with ``wait`` return once the stage has settled."""


@runtime_checkable
class Stigmator(Protocol):
    """Corrects astigmatism: two orthogonal components, in µm of focal difference."""

    def stigmator_range_um(self) -> float:
        """Largest accepted |x| and |y|."""

    def stigmator_um(self) -> tuple[float, float]:
        """The current (x, y) setting."""

    def set_stigmator(self, x_um: float, y_um: float) -> None:
        """Apply an (x, y) setting."""


@runtime_checkable
class BeamShift(Protocol):
    """Shifts the imaged field electronically, without moving the stage, µm."""

    def beam_shift_range_um(self) -> float:
        """Largest accepted |x| and |y|."""

    def beam_shift_um(self) -> tuple[float, float]:
        """The current (x, y) shift."""

    def set_beam_shift(self, x_um: float, y_um: float) -> None:
        """Apply an (x, y) shift."""


@runtime_checkable
class Illumination(Protocol):
    """Sets the dose a frame receives (beam current × dwell, or flux × exposure)."""

    def dose_range_e_per_px(self) -> tuple[float, float]:
        """(lowest, highest) accepted dose, electrons per pixel."""

    def set_dose_e_per_px(self, dose: float) -> None:
        """Apply a dose per pixel for the next frames."""


@runtime_checkable
class Objective(Protocol):
    """Changes the objective (a turret): magnification and NA change with it."""

    def objectives(self) -> dict[str, tuple[float, float]]:
        """Name → (magnification, numerical aperture) of each objective mounted."""

    def objective(self) -> str:
        """The objective in use."""

    def set_objective(self, name: str) -> None:
        """Swing ``name`` in."""


@runtime_checkable
class Microscope(StateSource, Camera, FocusDrive, XYStage, Protocol):
    """The usual composite: camera, focus drive and XY stage, with state and limits."""

    name: str

    def close(self) -> None:
        """Release the device."""


OPTIONAL_KINDS: tuple[type, ...] = (Stigmator, BeamShift, Illumination, Objective)
