"""scopeflow's simulated optical microscope as pure-Python Micro-Manager devices.

pymmcore-plus's ``UniMMCore`` hosts Python devices without a Micro-Manager installation: a
camera, a Z stage and an XY stage here, all three driving one
:class:`~scopeflow_lab.sim.optical.SimulatedOpticalMicroscope`. ``mmcore:sim`` uses them to
test the ``mmcore`` adapter end to end (snap, setPosition, setXYPosition, pixel-size presets),
the same calls a real Micro-Manager configuration answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import (
    SimpleCameraDevice,
    StageDevice,
    UniMMCore,
    XYStageDevice,
)

from scopeflow_lab.sim.optical import OpticalConfig, SimulatedOpticalMicroscope


class SimCamera(SimpleCameraDevice):
    """The simulator's colour camera: (rows, cols, 3) uint8, RGB."""

    def __init__(self, sim: SimulatedOpticalMicroscope) -> None:
        super().__init__()
        self._sim = sim
        self._shape = sim.acquire().pixels.shape  # one frame tells the sensor's shape

    def sensor_shape(self) -> tuple[int, int, int]:
        return self._shape

    def dtype(self) -> Any:
        return np.uint8

    def get_exposure(self) -> float:
        return float(self._sim.state().exposure_s or 0.01) * 1e3  # Micro-Manager: ms

    def set_exposure(self, exposure: float) -> None:
        self._sim.set_exposure_s(float(exposure) / 1e3)

    def snap(self, buffer: np.ndarray) -> Mapping:
        frame = self._sim.acquire()
        buffer[:] = frame.pixels
        return {"scopeflow_z_um": str(frame.state.wd_um)}


class SimZ(StageDevice):
    """The simulator's focus drive."""

    def __init__(self, sim: SimulatedOpticalMicroscope) -> None:
        super().__init__()
        self._sim = sim

    def set_position_um(self, val: float) -> None:
        self._sim.set_wd(float(val), wait=True)

    def get_position_um(self) -> float:
        return float(self._sim.state().wd_um)

    def home(self) -> None:
        """The simulated drive has no home switch; homing leaves it where it is."""

    def stop(self) -> None:
        """Moves complete before set_position_um returns: nothing to stop."""

    def set_origin(self) -> None:
        raise NotImplementedError("the simulated Z drive keeps its absolute origin")


class SimXY(XYStageDevice):
    """The simulator's XY stage."""

    def __init__(self, sim: SimulatedOpticalMicroscope) -> None:
        super().__init__()
        self._sim = sim

    def set_position_um(self, x: float, y: float) -> None:
        self._sim.move_stage(float(x), float(y), wait=True)

    def get_position_um(self) -> tuple[float, float]:
        state = self._sim.state()
        return float(state.stage_x_um), float(state.stage_y_um)

    def set_origin_x(self) -> None:
        raise NotImplementedError("the simulated stage keeps its absolute origin")

    def set_origin_y(self) -> None:
        raise NotImplementedError("the simulated stage keeps its absolute origin")

    def home(self) -> None:
        """The simulated stage has no home switch; homing leaves it where it is."""

    def stop(self) -> None:
        """Moves complete before set_position_um returns: nothing to stop."""


def simulated_core(
    sim: SimulatedOpticalMicroscope | None = None,
) -> tuple[Any, dict[str, float]]:
    """A ``UniMMCore`` with the simulated camera, Z and XY stage of ``sim`` (a fresh one when
    None) loaded and assigned, and the options the ``mmcore`` adapter needs that Micro-Manager
    does not know (limits, NA)."""
    if sim is None:
        sim = SimulatedOpticalMicroscope(OpticalConfig(z_settle_s=0.0, stage_settle_s=0.0))
    core = UniMMCore(mm_path="/nonexistent")  # a path skips the search for an MM install
    for label, device in (("Camera", SimCamera(sim)), ("Z", SimZ(sim)), ("XY", SimXY(sim))):
        core.loadPyDevice(label, device)
    core.initializeAllDevices()
    core.setCameraDevice("Camera")
    core.setFocusDevice("Z")
    core.setXYStageDevice("XY")
    core.setAutoShutter(False)  # no shutter device: the MDA engine would try to close one
    state, limits = sim.state(), sim.limits()
    core.definePixelSizeConfig("sim")
    core.setPixelSizeUm("sim", state.pixel_size_nm / 1e3)
    core.setPixelSizeConfig("sim")
    options = {
        "z_min_um": limits.wd_min_um,
        "z_max_um": limits.wd_max_um,
        "stage_min_um": max(limits.stage_x_min_um, limits.stage_y_min_um),
        "stage_max_um": min(limits.stage_x_max_um, limits.stage_y_max_um),
        "numerical_aperture": state.numerical_aperture or 0.4,
        "magnification": state.magnification,
    }
    if limits.max_wd_step_um is not None:
        options["max_z_step_um"] = limits.max_wd_step_um
    return core, options
