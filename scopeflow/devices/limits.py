"""The one validation layer between every caller and every adapter.

:func:`guard` wraps an adapter so that every move is checked before the adapter sees it:
finite numbers, inside the limits the adapter reports, no larger than its maximum step; optional
devices (stigmator, beam shift, illumination) inside the ranges they declare. The command
server, local scopes and the adapter registry all hand out guarded devices only, so an adapter
cannot forget a limit and a caller cannot skip one.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from scopeflow.devices.protocols import (
    OPTIONAL_KINDS,
    BeamShift,
    Camera,
    FocusDrive,
    Frame,
    Illumination,
    Objective,
    Stigmator,
    XYStage,
)
from scopeflow.errors import DeviceError, LimitError
from scopeflow.schemas.state import Limits, MicroscopeState

T = TypeVar("T")


def check_wd_move(limits: Limits, current_target_um: float, wd_um: float) -> None:
    """Raise LimitError unless moving the focus from ``current_target_um`` to ``wd_um`` is
    allowed: a finite value, inside the WD limits, no larger than the maximum step."""
    require_finite("wd_um", wd_um)
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
    require_finite("x_um", x_um)
    require_finite("y_um", y_um)
    if not (
        limits.stage_x_min_um <= x_um <= limits.stage_x_max_um
        and limits.stage_y_min_um <= y_um <= limits.stage_y_max_um
    ):
        raise LimitError(
            f"stage position ({x_um:.3f}, {y_um:.3f}) µm is outside the limits "
            f"x [{limits.stage_x_min_um}, {limits.stage_x_max_um}], "
            f"y [{limits.stage_y_min_um}, {limits.stage_y_max_um}] µm"
        )


def require_finite(name: str, value: Any) -> None:
    """Raise LimitError unless ``value`` is a finite real number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LimitError(f"{name} must be a finite number, got {value!r}")


def _check_pair(what: str, x: float, y: float, bound: float) -> None:
    require_finite(f"{what} x", x)
    require_finite(f"{what} y", y)
    if abs(x) > bound or abs(y) > bound:
        raise LimitError(f"{what} ({x:g}, {y:g}) µm is outside ±{bound:g} µm")


class _GuardedStigmator:
    def __init__(self, device: Stigmator) -> None:
        self._device = device

    def stigmator_range_um(self) -> float:
        return self._device.stigmator_range_um()

    def stigmator_um(self) -> tuple[float, float]:
        return self._device.stigmator_um()

    def set_stigmator(self, x_um: float, y_um: float) -> None:
        _check_pair("stigmator", x_um, y_um, self._device.stigmator_range_um())
        self._device.set_stigmator(float(x_um), float(y_um))


class _GuardedBeamShift:
    def __init__(self, device: BeamShift) -> None:
        self._device = device

    def beam_shift_range_um(self) -> float:
        return self._device.beam_shift_range_um()

    def beam_shift_um(self) -> tuple[float, float]:
        return self._device.beam_shift_um()

    def set_beam_shift(self, x_um: float, y_um: float) -> None:
        _check_pair("beam shift", x_um, y_um, self._device.beam_shift_range_um())
        self._device.set_beam_shift(float(x_um), float(y_um))


class _GuardedIllumination:
    def __init__(self, device: Illumination) -> None:
        self._device = device

    def dose_range_e_per_px(self) -> tuple[float, float]:
        return self._device.dose_range_e_per_px()

    def set_dose_e_per_px(self, dose: float) -> None:
        require_finite("dose_e_per_px", dose)
        lo, hi = self._device.dose_range_e_per_px()
        if not lo <= dose <= hi:
            raise LimitError(f"dose {dose:g} e⁻/px is outside [{lo:g}, {hi:g}]")
        self._device.set_dose_e_per_px(float(dose))


class _GuardedObjective:
    def __init__(self, device: Objective) -> None:
        self._device = device

    def objectives(self) -> dict[str, tuple[float, float]]:
        return self._device.objectives()

    def objective(self) -> str:
        return self._device.objective()

    def set_objective(self, name: str) -> None:
        """Swing ``name`` in: a mounted objective's name, or a magnification ("50x") that
        exactly one mounted objective has (turrets name objectives in many ways)."""
        mounted = self._device.objectives()
        if name not in mounted:
            wanted = name.strip().lower().removesuffix("x")
            try:
                mag = float(wanted)
            except ValueError:
                mag = math.nan
            same = [n for n, (m, _) in mounted.items() if math.isclose(m, mag)]
            if len(same) != 1:
                raise LimitError(f"no objective {name!r} is mounted; mounted: {', '.join(mounted)}")
            name = same[0]
        self._device.set_objective(name)


_GUARDS: dict[type, type] = {
    Stigmator: _GuardedStigmator,
    BeamShift: _GuardedBeamShift,
    Illumination: _GuardedIllumination,
    Objective: _GuardedObjective,
}


class GuardedMicroscope:
    """An adapter behind the validation layer; the only form callers get devices in.

    ``adapter`` is the raw device (kept for ground truth in simulations and for tests);
    :meth:`device` returns an optional kind, guarded too, or None where the adapter lacks it.
    """

    def __init__(self, adapter: Any) -> None:
        if isinstance(adapter, GuardedMicroscope):
            adapter = adapter.adapter
        self.adapter = adapter
        self.name: str = getattr(adapter, "name", type(adapter).__name__)

    def state(self) -> MicroscopeState:
        return self.adapter.state()

    def limits(self) -> Limits:
        return self.adapter.limits()

    def acquire(self) -> Frame:
        if not isinstance(self.adapter, Camera):
            raise DeviceError(f"{self.name} has no camera")
        return self.adapter.acquire()

    def set_wd(self, wd_um: float, *, wait: bool = True) -> MicroscopeState:
        if not isinstance(self.adapter, FocusDrive):
            raise DeviceError(f"{self.name} has no focus drive")
        check_wd_move(self.limits(), self.state().wd_target_um, wd_um)
        return self.adapter.set_wd(float(wd_um), wait=wait)

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> MicroscopeState:
        if not isinstance(self.adapter, XYStage):
            raise DeviceError(f"{self.name} has no XY stage")
        check_stage_move(self.limits(), x_um, y_um)
        return self.adapter.move_stage(float(x_um), float(y_um), wait=wait)

    def device(self, kind: type[T]) -> T | None:
        """The adapter's ``kind`` device (Stigmator, BeamShift, Illumination, Objective),
        guarded."""
        if kind not in _GUARDS:
            known = ", ".join(k.__name__ for k in OPTIONAL_KINDS)
            raise TypeError(f"{kind!r} is not an optional device kind; ask for one of {known}")
        if not isinstance(self.adapter, kind):
            return None
        return _GUARDS[kind](self.adapter)  # type: ignore[return-value]

    def close(self) -> None:
        close = getattr(self.adapter, "close", None)
        if close is not None:
            close()


def guard(adapter: Any) -> GuardedMicroscope:
    """``adapter`` behind the validation layer (a guarded one is returned as is)."""
    return adapter if isinstance(adapter, GuardedMicroscope) else GuardedMicroscope(adapter)
