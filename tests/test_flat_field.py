"""Flat field and white balance from blank tiles of the simulated chip."""

from __future__ import annotations

import numpy as np
import pytest

from scopeflow.jobs.flakes.flat_field import MIN_BLANK_TILES, FlatField
from scopeflow_lab.sim.optical import (
    CameraConfig,
    ChipConfig,
    OpticalConfig,
    SimulatedOpticalMicroscope,
)

BARE = ChipConfig(flakes_per_mm2=0.0, residue_per_mm2=0.0, dirt_per_mm2=0.0)


def _frames(chip: ChipConfig, positions: list[tuple[float, float]]) -> list[np.ndarray]:
    # No white balance (the lamp's cast shows) and strong vignetting: 60 % at the corners.
    camera = CameraConfig(shape=(300, 480), white_balance=None, vignetting_corner=0.6)
    sim = SimulatedOpticalMicroscope(
        OpticalConfig(chip=chip, camera=camera, seed=4, z_settle_s=0, stage_settle_s=0)
    )
    out = []
    for x, y in positions:
        sim.move_stage(x, y)
        sim.set_wd(sim.true_focus_z_um())
        out.append(sim.acquire().pixels)
    return out


def test_blank_tiles_give_the_vignetting_and_a_grey_substrate():
    ff = FlatField()
    frames = _frames(BARE, [(-500.0 + 400 * i, 300.0) for i in range(MIN_BLANK_TILES + 1)])
    assert not ff.ready
    assert all(ff.offer(f, detections=0) for f in frames)
    assert ff.ready
    flat = ff.flat()
    # The simulator's cos⁴ profile reaches 0.6 at the sensor's corner pixel; the corner cell
    # averages a little brighter pixels, the centre cell a little darker ones.
    assert flat[0, 0].mean() / flat[15, 24].mean() == pytest.approx(0.62, abs=0.03)
    corrected = ff.correct(frames[0]).astype(float)
    centre = corrected[120:180, 200:280].reshape(-1, 3).mean(axis=0)
    corner = corrected[:30, :40].reshape(-1, 3).mean(axis=0)
    assert np.ptp(centre) / centre.mean() < 0.03  # grey: the lamp's cast is gone
    assert corner.mean() / centre.mean() == pytest.approx(1.0, abs=0.04)  # flat: no dark corner
    assert ff.id.startswith("ff-")


def test_tiles_with_objects_are_not_taken_as_blank():
    ff = FlatField()
    crowded = ChipConfig(flakes_per_mm2=2000.0, dirt_per_mm2=0.0, residue_per_mm2=0.0)
    frames = _frames(crowded, [(0.0, 0.0), (300.0, 0.0)])
    assert not ff.offer(frames[0], detections=2)  # the detector saw something
    assert not ff.offer(frames[1], detections=0)  # the detector missed it; the tile is uneven
    assert ff.tiles == 0 and not ff.ready
