"""The device contract, per device kind, on every registered adapter.

As python-microscope's test suite does per device kind, each test states one rule of a kind
(camera, focus drive, XY stage, state, and the optional stigmator, beam shift and
illumination) and runs on every adapter that implements that kind, opened by its spec through
the entry-point registry and used behind the validation layer, as jobs use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from scopeflow.acquisition.node import AcquireConfig, AcquireNode
from scopeflow.devices.limits import GuardedMicroscope
from scopeflow.devices.protocols import (
    BeamShift,
    Camera,
    FocusDrive,
    Illumination,
    Objective,
    Stigmator,
    XYStage,
)
from scopeflow.devices.registry import adapters, open_device
from scopeflow.errors import LimitError
from scopeflow.schemas.codec import DTYPE_ITEMSIZE
from scopeflow.schemas.state import Limits, MicroscopeState
from scopeflow_lab.sim.sim_adapter import open_simulator

from harness import running

SEM = "sim:sem,frame_size=64,settle_s=0,max_step_um=400"
# Each adapter under test: a name and the spec that opens it ("remote" is served by an
# acquisition node around a simulated SEM, started by the fixture).
ADAPTERS = {
    "sim-sem": SEM,
    "sim-optical": "sim:optical,settle_s=0,max_step_um=200",
    "sim-insitu": "sim:insitu,frame_size=64,max_step_um=20",
    "remote": "remote",
    "mmcore-sim": "mmcore:sim,max_z_step_um=200",
}
CORE = {Camera, FocusDrive, XYStage}
OPTIONAL = (Stigmator, BeamShift, Illumination, Objective)
# The kinds each adapter implements; test_declared_kinds_are_the_adapters_own checks them.
KINDS: dict[str, set[type]] = {
    "sim-sem": CORE | {Stigmator, BeamShift, Illumination},
    "sim-optical": CORE | {Objective},
    "sim-insitu": CORE | {Illumination, BeamShift},
    "remote": {FocusDrive, XYStage},  # frames travel on the frame stream, not the client
    "mmcore-sim": CORE | {Objective},  # the simulated turret as a Micro-Manager state device
}


def having(kind: type) -> list[str]:
    """The adapters that implement ``kind``: the ones its rules bind."""
    return sorted(name for name, kinds in KINDS.items() if kind in kinds)


@contextmanager
def opened(name: str, ipc_dir) -> Iterator[GuardedMicroscope]:
    spec = ADAPTERS[name]
    if spec != "remote":
        device = open_device(spec)
        try:
            yield device
        finally:
            device.close()
        return
    ctx = zmq.Context()
    node = AcquireNode(
        open_simulator(SEM.removeprefix("sim:")),
        AcquireConfig(frames_endpoint=f"ipc://{ipc_dir}/f", commands_endpoint=f"ipc://{ipc_dir}/c"),
        ctx=ctx,
    )
    try:
        with running(node):
            device = open_device(f"remote:ipc://{ipc_dir}/c")
            try:
                yield device
            finally:
                device.close()
    finally:
        ctx.term()


@pytest.fixture(params=sorted(ADAPTERS))
def device(request, ipc_dir) -> Iterator[GuardedMicroscope]:
    with opened(request.param, ipc_dir) as dev:
        yield dev


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_declared_kinds_are_the_adapters_own(name, ipc_dir):
    with opened(name, ipc_dir) as dev:
        implemented = {k for k in (*CORE, *OPTIONAL) if isinstance(dev.adapter, k)}
    assert implemented == KINDS[name]


def test_every_registered_adapter_is_under_contract():
    covered = {spec.split(":")[0] for spec in ADAPTERS.values()}
    assert set(adapters()) <= covered, "add the new adapter to ADAPTERS"
    assert {"sim", "remote", "mmcore"} <= set(adapters())


# -- every adapter: state and limits -----------------------------------------------------------


def test_state_and_limits_are_typed_and_the_position_is_inside_the_limits(device):
    state, limits = device.state(), device.limits()
    assert isinstance(state, MicroscopeState) and isinstance(limits, Limits)
    assert limits.wd_min_um <= state.wd_target_um <= limits.wd_max_um
    assert limits.stage_x_min_um <= state.stage_x_um <= limits.stage_x_max_um
    assert limits.stage_y_min_um <= state.stage_y_um <= limits.stage_y_max_um
    assert state.depth_of_field_um() is None or state.depth_of_field_um() > 0


# -- camera ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", having(Camera), indirect=True)
def test_camera_frames_carry_pixels_their_state_and_ordered_times(device):
    frame = device.acquire()
    assert isinstance(frame.pixels, np.ndarray) and frame.pixels.ndim in (2, 3)
    assert frame.pixels.dtype.name in DTYPE_ITEMSIZE and frame.pixels.size > 0
    assert frame.start_time_ns <= frame.stop_time_ns and frame.monotonic_ns > 0
    assert frame.state.wd_target_um == device.state().wd_target_um
    second = device.acquire()
    assert second.monotonic_ns > frame.monotonic_ns


# -- focus drive -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", having(FocusDrive), indirect=True)
def test_focus_drive_goes_where_it_is_told_and_settles(device):
    limits, start = device.limits(), device.state().wd_target_um
    step = min(1.0, (limits.max_wd_step_um or 1.0) / 2)
    target = start + step if start + step <= limits.wd_max_um else start - step
    state = device.set_wd(target)
    assert state.wd_target_um == pytest.approx(target) and state.settled
    # Where it stands may differ by the drive's backlash, not by the step it was asked for.
    assert abs(device.state().wd_um - target) < 0.5 * step


@pytest.mark.parametrize("where", ["above", "below", "nan", "inf", "text"])
@pytest.mark.parametrize("device", having(FocusDrive), indirect=True)
def test_focus_drive_refuses_what_is_outside_its_limits_and_does_not_move(device, where):
    limits, before = device.limits(), device.state()
    bad = {
        "above": limits.wd_max_um + 1.0,
        "below": limits.wd_min_um - 1.0,
        "nan": math.nan,
        "inf": math.inf,
        "text": "5000",
    }[where]
    with pytest.raises(LimitError):
        device.set_wd(bad)
    assert device.state().wd_target_um == before.wd_target_um


@pytest.mark.parametrize("device", having(FocusDrive), indirect=True)
def test_focus_drive_refuses_a_step_larger_than_its_maximum(device):
    limits, before = device.limits(), device.state().wd_target_um
    assert limits.max_wd_step_um is not None  # every spec above sets one
    target = before + 1.01 * limits.max_wd_step_um
    if target > limits.wd_max_um:
        target = before - 1.01 * limits.max_wd_step_um
    with pytest.raises(LimitError, match="maximum step"):
        device.set_wd(target)
    assert device.state().wd_target_um == before


# -- XY stage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", having(XYStage), indirect=True)
def test_stage_goes_where_it_is_told(device):
    state = device.move_stage(12.5, -7.25)
    assert (state.stage_x_um, state.stage_y_um) == (12.5, -7.25)


@pytest.mark.parametrize("where", ["x_high", "y_low", "nan"])
@pytest.mark.parametrize("device", having(XYStage), indirect=True)
def test_stage_refuses_positions_outside_its_limits_and_does_not_move(device, where):
    limits, before = device.limits(), device.state()
    bad = {
        "x_high": (limits.stage_x_max_um + 1.0, 0.0),
        "y_low": (0.0, limits.stage_y_min_um - 1.0),
        "nan": (math.nan, 0.0),
    }[where]
    with pytest.raises(LimitError):
        device.move_stage(*bad)
    after = device.state()
    assert (after.stage_x_um, after.stage_y_um) == (before.stage_x_um, before.stage_y_um)


# -- optional kinds ----------------------------------------------------------------------------


def test_an_adapter_without_an_optional_kind_answers_none(device):
    for kind in OPTIONAL:
        found = device.device(kind)
        assert (found is None) == (not isinstance(device.adapter, kind))
    with pytest.raises(TypeError):
        device.device(Camera)  # not an optional kind


@pytest.mark.parametrize(
    ("device", "kind"),
    [(n, k) for k in (Stigmator, BeamShift) for n in having(k)],
    indirect=["device"],
)
def test_stigmator_and_beam_shift_take_settings_inside_their_range_only(device, kind):
    part = device.device(kind)
    if kind is Stigmator:
        bound, setter, getter = part.stigmator_range_um(), part.set_stigmator, part.stigmator_um
    else:
        bound, setter, getter = part.beam_shift_range_um(), part.set_beam_shift, part.beam_shift_um
    setter(0.5 * bound, -0.25 * bound)
    assert getter() == (0.5 * bound, -0.25 * bound)
    for bad in ((1.01 * bound, 0.0), (0.0, -1.01 * bound), (math.nan, 0.0)):
        with pytest.raises(LimitError):
            setter(*bad)
    assert getter() == (0.5 * bound, -0.25 * bound)


@pytest.mark.parametrize("device", having(Illumination), indirect=True)
def test_illumination_takes_doses_inside_its_range_only(device):
    part = device.device(Illumination)
    lo, hi = part.dose_range_e_per_px()
    part.set_dose_e_per_px(0.5 * (lo + hi))
    assert device.state().dose_e_per_px == pytest.approx(0.5 * (lo + hi))
    for bad in (hi * 1.01 + 1, lo - 1.0, math.inf):
        with pytest.raises(LimitError):
            part.set_dose_e_per_px(bad)
    assert device.state().dose_e_per_px == pytest.approx(0.5 * (lo + hi))


@pytest.mark.parametrize("device", having(Objective), indirect=True)
def test_objectives_swing_in_by_name_and_change_the_pixel_size(device):
    part = device.device(Objective)
    mounted = part.objectives()
    first = part.objective()
    assert first in mounted and len(mounted) >= 2
    before = device.state().pixel_size_nm
    other = next(name for name in mounted if mounted[name][0] != mounted[first][0])
    part.set_objective(other)
    assert part.objective() == other
    # The pixel size on the sample scales inversely with the magnification.
    ratio = device.state().pixel_size_nm / before
    assert ratio == pytest.approx(mounted[first][0] / mounted[other][0])
    with pytest.raises(LimitError, match="no objective"):
        part.set_objective("999x")
    assert part.objective() == other
