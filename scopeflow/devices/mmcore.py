"""The ``mmcore`` device adapter: any Micro-Manager-configured microscope through pymmcore-plus.

``mmcore:PATH/TO/MMConfig.cfg[,KEY=VALUE...]`` loads a Micro-Manager configuration into a
``pymmcore_plus.CMMCorePlus`` and drives its camera, focus drive and XY stage.
``mmcore:NAME`` builds a core registered under NAME in the ``scopeflow.mmcore`` entry-point
group: the lab registers ``sim``, a ``UniMMCore`` with pure-Python devices around the simulated
optical microscope, so the whole path is tested without hardware.

Keys: ``z_min_um``, ``z_max_um`` (required for a real configuration: Micro-Manager does not know
how far a Z drive may safely go), ``max_z_step_um``, ``stage_min_um``, ``stage_max_um``,
``numerical_aperture`` (for the depth of field the autofocus works in), ``pixel_size_um`` and
``magnification`` (when the configuration has no pixel-size preset).

Objectives: when the configuration has an objective turret (a state device labelled
``Objective``, Micro-Manager's convention), the adapter is also an ``Objective`` device: its
state labels are the objective names, the magnification and NA are read from each label
("20x", "Nikon 20X Plan Fluor N.A. 0.45", "50x/0.80"), and the pixel size follows from the
configuration's pixel-size presets for that objective, as Micro-Manager applies them.

Frames: ``getImage()`` as pymmcore-plus returns it; colour cameras come as (rows, cols, 3) in
RGB order (pymmcore-plus converts Micro-Manager's BGRA). Needs the ``mm`` extra.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, fields, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.devices.protocols import Frame
from scopeflow.errors import DeviceError, UsageError
from scopeflow.schemas.state import Limits, MicroscopeState

CORES_GROUP = "scopeflow.mmcore"
OBJECTIVE_DEVICE = "Objective"  # Micro-Manager's usual label for the objective turret
_MAGNIFICATION = re.compile(r"(\d+(?:\.\d+)?)\s*[xX]\b")
_APERTURE = re.compile(r"(?:N\.?A\.?\s*|/\s*)(\d?\.\d+)")


def parse_objective_label(label: str) -> tuple[float, float]:
    """(magnification, NA) read from an objective's label; NaN where the label does not say
    (``"20x"`` → (20, nan), ``"Nikon 20X Plan Fluor N.A. 0.45"`` → (20, 0.45))."""
    mag = _MAGNIFICATION.search(label)
    na = _APERTURE.search(label)
    return (float(mag.group(1)) if mag else math.nan, float(na.group(1)) if na else math.nan)


@dataclass(frozen=True)
class MMOptions:
    """What ``mmcore:`` specs may set beyond the configuration file."""

    z_min_um: float | None = None
    z_max_um: float | None = None
    max_z_step_um: float | None = None
    stage_min_um: float = -1e5
    stage_max_um: float = 1e5
    numerical_aperture: float | None = None
    pixel_size_um: float | None = None
    magnification: float | None = None


class MMCoreMicroscope:
    """A pymmcore-plus core as a scopeflow device: camera, focus drive, XY stage."""

    def __init__(self, core: Any, options: MMOptions, name: str = "mmcore") -> None:
        if options.z_min_um is None or options.z_max_um is None:
            raise UsageError("mmcore needs z_min_um and z_max_um: the safe range of the Z drive")
        self.core = core
        self.name = name
        self.options = options
        self._limits = Limits(
            wd_min_um=options.z_min_um,
            wd_max_um=options.z_max_um,
            stage_x_min_um=options.stage_min_um,
            stage_x_max_um=options.stage_max_um,
            stage_y_min_um=options.stage_min_um,
            stage_y_max_um=options.stage_max_um,
            max_wd_step_um=options.max_z_step_um,
        )
        for role, device in (("camera", core.getCameraDevice()), ("focus", core.getFocusDevice())):
            if not device:
                raise DeviceError(f"the Micro-Manager configuration sets no {role} device")
        self._z_target = float(core.getPosition())

    def limits(self) -> Limits:
        return self._limits

    def state(self) -> MicroscopeState:
        core = self.core
        x, y = core.getXYPosition() if core.getXYStageDevice() else (0.0, 0.0)
        pixel_um = core.getPixelSizeUm() or self.options.pixel_size_um
        if not pixel_um:
            raise DeviceError(
                "Micro-Manager reports no pixel size: define a pixel-size preset or give "
                "pixel_size_um in the scope spec"
            )
        return MicroscopeState(
            wd_um=float(core.getPosition()),
            wd_target_um=self._z_target,
            settled=not core.deviceBusy(core.getFocusDevice()),
            stage_x_um=float(x),
            stage_y_um=float(y),
            magnification=self.options.magnification or float(core.getMagnificationFactor()),
            pixel_size_nm=float(pixel_um) * 1e3,
            exposure_s=float(core.getExposure()) / 1e3 or None,
            numerical_aperture=self.options.numerical_aperture,
        )

    def acquire(self) -> Frame:
        start = time.time_ns()
        self.core.snapImage()
        pixels = np.asarray(self.core.getImage())
        order = "RGB" if pixels.ndim == 3 else None  # pymmcore-plus turns BGRA into RGB
        return Frame(
            pixels, self.state(), start, time.time_ns(), time.monotonic_ns(), channel_order=order
        )

    def set_wd(self, wd_um: float, *, wait: bool = True) -> MicroscopeState:
        self.core.setPosition(float(wd_um))
        self._z_target = float(wd_um)
        if wait:
            self.core.waitForDevice(self.core.getFocusDevice())
        return self.state()

    def move_stage(self, x_um: float, y_um: float, *, wait: bool = True) -> MicroscopeState:
        stage = self.core.getXYStageDevice()
        if not stage:
            raise DeviceError("the Micro-Manager configuration sets no XY stage")
        self.core.setXYPosition(float(x_um), float(y_um))
        if wait:
            self.core.waitForDevice(stage)
        return self.state()

    def close(self) -> None:
        self.core.unloadAllDevices()


class MMCoreMicroscopeWithObjective(MMCoreMicroscope):
    """The adapter with an objective turret (the ``Objective`` device kind)."""

    def __init__(self, core: Any, options: MMOptions, name: str, turret: str) -> None:
        super().__init__(core, options, name)
        self.turret = turret

    def objectives(self) -> dict[str, tuple[float, float]]:
        """Label → (magnification, NA) of every turret position (NaN where unknown)."""
        return {
            str(label): parse_objective_label(str(label))
            for label in self.core.getStateLabels(self.turret)
        }

    def objective(self) -> str:
        return str(self.core.getStateLabel(self.turret))

    def set_objective(self, name: str) -> None:
        if name not in self.objectives():
            raise UsageError(f"no objective {name!r} on the turret; have {list(self.objectives())}")
        self.core.setStateLabel(self.turret, name)
        self.core.waitForDevice(self.turret)

    def _preset_pixel_um(self) -> float | None:
        """The pixel size of the preset naming the objective in use: Micro-Manager's own
        choice of preset can miss devices whose state it does not cache (Python devices)."""
        label = self.objective()
        for preset in self.core.getAvailablePixelSizeConfigs():
            data = self.core.getPixelSizeConfigData(preset)
            settings = [data.getSetting(i) for i in range(data.size())]
            if any(
                st.getDeviceLabel() == self.turret and st.getPropertyValue() == label
                for st in settings
            ):
                return float(self.core.getPixelSizeUmByID(preset))
        return None

    def state(self) -> MicroscopeState:
        if not self.core.getPixelSizeUm():
            pixel_um = self._preset_pixel_um()
            if pixel_um:
                self.options = replace(self.options, pixel_size_um=pixel_um)
        state = super().state()
        mag, na = parse_objective_label(self.objective())
        update = {}
        if math.isfinite(mag) and self.options.magnification is None:
            update["magnification"] = mag
        if math.isfinite(na):
            update["numerical_aperture"] = na
        return state.model_copy(update=update) if update else state


def _with_turret(core: Any, options: MMOptions, name: str) -> MMCoreMicroscope:
    """The adapter, with the Objective kind when the configuration has a turret."""
    if OBJECTIVE_DEVICE in core.getLoadedDevices():
        return MMCoreMicroscopeWithObjective(core, options, name, OBJECTIVE_DEVICE)
    return MMCoreMicroscope(core, options, name)


def parse_mm_spec(arg: str) -> tuple[str, dict[str, float]]:
    """``PATH|sim[,KEY=VALUE...]`` → (PATH or 'sim', the options given)."""
    target, *pairs = [p.strip() for p in arg.split(",")]
    known = {f.name for f in fields(MMOptions)}
    values: dict[str, float] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise UsageError(f"mmcore option {pair!r} is not KEY=VALUE with KEY one of {known}")
        try:
            values[key] = float(text)
        except ValueError:
            raise UsageError(f"mmcore option {key}={text!r} is not a number") from None
    if not target:
        raise UsageError("mmcore needs a configuration file or 'sim': mmcore:PATH or mmcore:sim")
    return target, values


def open_mmcore(arg: str) -> MMCoreMicroscope:
    """Entry point of the ``mmcore`` adapter."""
    target, given = parse_mm_spec(arg)
    root = logging.getLogger()
    level = root.level
    try:
        import pymmcore_plus  # noqa: F401 - fail here, with the fix, if the extra is missing
    except ImportError:
        raise UsageError(
            "the mmcore adapter needs pymmcore-plus: pip install 'scopeflow[mm]'"
        ) from None
    finally:
        root.setLevel(level)  # importing pymmcore-plus sets the root logger to DEBUG
    built = {ep.name: ep for ep in entry_points(group=CORES_GROUP)}
    if target in built:  # a registered core (mmcore:sim): it brings its limits and optics
        core, defaults = built[target].load()()
        return _with_turret(core, MMOptions(**{**defaults, **given}), f"mmcore:{target}")
    path = Path(target)
    if not path.is_file():
        raise UsageError(f"no Micro-Manager configuration at {path}")
    from pymmcore_plus import CMMCorePlus

    core = CMMCorePlus()
    try:
        core.loadSystemConfiguration(str(path))
    except Exception as exc:  # Micro-Manager reports a bad file or a missing adapter here
        raise DeviceError(f"Micro-Manager could not load {path}: {exc}") from exc
    return _with_turret(core, MMOptions(**given), f"mmcore:{path.name}")
