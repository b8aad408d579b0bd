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
    StateDevice,
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


class SimObjective(StateDevice):
    """The simulated turret as a Micro-Manager state device: labels are objective names with
    their NA ("20x NA 0.40"), as real configurations name them."""

    def __init__(self, sim: SimulatedOpticalMicroscope) -> None:
        self._sim = sim
        self._names = list(sim.objectives())
        super().__init__(
            {i: objective_label(n, sim.objectives()[n]) for i, n in enumerate(self._names)}
        )

    def get_state(self) -> int:
        return self._names.index(self._sim.objective())

    def set_state(self, position: int) -> None:
        self._sim.set_objective(self._names[int(position)])


def objective_label(name: str, optics: tuple[float, float]) -> str:
    """Micro-Manager label of a simulated objective: its name and NA."""
    return f"{name} NA {optics[1]:.2f}"


def simulated_core(
    sim: SimulatedOpticalMicroscope | None = None,
) -> tuple[Any, dict[str, float]]:
    """A ``UniMMCore`` with the simulated camera, Z and XY stage of ``sim`` (a fresh one when
    None) loaded and assigned, and the options the ``mmcore`` adapter needs that Micro-Manager
    does not know (limits, NA)."""
    if sim is None:
        sim = SimulatedOpticalMicroscope(OpticalConfig(z_settle_s=0.0, stage_settle_s=0.0))
    core = UniMMCore(mm_path="/nonexistent")  # a path skips the search for an MM install
    devices = (
        ("Camera", SimCamera(sim)),
        ("Z", SimZ(sim)),
        ("XY", SimXY(sim)),
        ("Objective", SimObjective(sim)),
    )
    for label, device in devices:
        core.loadPyDevice(label, device)
    core.initializeAllDevices()
    core.setCameraDevice("Camera")
    core.setFocusDevice("Z")
    core.setXYStageDevice("XY")
    core.setAutoShutter(False)  # no shutter device: the MDA engine would try to close one
    state, limits = sim.state(), sim.limits()
    # One pixel-size preset per objective, as a real configuration has: Micro-Manager then
    # reports the pixel size of whichever objective is in.
    camera_pixel_um = state.pixel_size_nm / 1e3 * state.magnification
    for name, optics in sim.objectives().items():
        label = objective_label(name, optics)
        core.definePixelSizeConfig(label, "Objective", "Label", label)
        core.setPixelSizeUm(label, camera_pixel_um / optics[0])
    options = {
        "z_min_um": limits.wd_min_um,
        "z_max_um": limits.wd_max_um,
        "stage_min_um": max(limits.stage_x_min_um, limits.stage_y_min_um),
        "stage_max_um": min(limits.stage_x_max_um, limits.stage_y_max_um),
        "numerical_aperture": state.numerical_aperture or 0.4,
        # UniMMCore does not match presets to Python devices' state: the objective in use now
        # (the turret adapter looks its preset up itself).
        "pixel_size_um": state.pixel_size_nm / 1e3,
    }
    if limits.max_wd_step_um is not None:
        options["max_z_step_um"] = limits.max_wd_step_um
    return core, options
