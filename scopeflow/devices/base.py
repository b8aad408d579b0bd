"""A convenience base for adapters: public methods dispatch to ``_do_*`` hooks and wait.

It does not validate: limits are enforced once, by :func:`scopeflow.devices.limits.guard`,
which wraps every adapter whether or not it derives from this class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from scopeflow.devices.protocols import Frame
from scopeflow.schemas.state import Limits, MicroscopeState


class MicroscopeBase(ABC):
    """Camera + focus drive + XY stage from hooks; subclasses implement the ``_do_*`` hooks."""

    name: str = "microscope"

    def acquire(self) -> Frame:
        return self._do_acquire()

    def set_wd(self, wd_um: float, *, wait: bool = True) -> MicroscopeState:
        self._do_set_wd(float(wd_um))
        if wait:
            self._do_wait_settled()
        return self.state()

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> MicroscopeState:
        self._do_move_stage(float(x_um), float(y_um))
        if wait:
            self._do_wait_settled()
        return self.state()

    def close(self) -> None:
        """Release the device; the default has nothing to release."""

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
