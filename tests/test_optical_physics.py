"""Physics of the simulated optical flake chip: thin-film reflectance and colour contrast, ideal
images against the model, defocus, camera noise, oxide gradient, actuators, determinism and the
dataset source.

Expected values come from formulas (Fresnel, the quarter-wave condition, Blake et al. 2007 with
the indices DESIGN §5 quotes, the actuator law, shot + read noise) or from the published sanity
values, never from earlier runs of the code. Clocks are fakes; nothing reads wall time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import cv2
import numpy as np
import pytest

from scopeflow.devices.limits import guard
from scopeflow.devices.protocols import Microscope
from scopeflow.errors import LimitError
from scopeflow.optics.thinfilm import WAVELENGTHS_NM, si_index, sio2_index
from scopeflow.schemas.state import optical_depth_of_field_um
from scopeflow_lab.sim.optical import (
    GRAPHENE,
    HBN,
    Camera,
    CameraConfig,
    Chip,
    ChipConfig,
    ContrastTable,
    FlakeChipSource,
    OpticalConfig,
    SimulatedOpticalMicroscope,
    SpectralModel,
    blake_reflectance,
    contrast_rgb,
    reflectance_rgb,
    stack_reflectance,
)
from scopeflow_lab.sim.truth import DatasetSource

from fakes import FakeClock

R, G, B = 0, 1, 2  # channel order of every RGB array here


def make_sim(config: OpticalConfig) -> tuple[SimulatedOpticalMicroscope, FakeClock]:
    clock = FakeClock()
    return SimulatedOpticalMicroscope(config, clock=clock, sleep=clock.sleep), clock


SMALL = CameraConfig(shape=(240, 320))
FLAT_FOCUS = {"focus_tilt_x_um_per_mm": 0.0, "focus_tilt_y_um_per_mm": 0.0, "focus_bow_um": 0.0}


def gradient_energy(image: np.ndarray) -> float:
    """Tenengrad sharpness: mean squared Sobel gradient."""
    img = image.astype(np.float64)
    gx = cv2.Sobel(img, cv2.CV_64F, 1, 0)
    gy = cv2.Sobel(img, cv2.CV_64F, 0, 1)
    return float(np.mean(gx * gx + gy * gy))


def first_flake(sim: SimulatedOpticalMicroscope, min_layers: int = 1):
    """A flake near the chip centre (deterministic for a seed)."""
    chip = sim.chip
    for ix, iy in itertools.product(range(chip.cells_x // 2, chip.cells_x), repeat=2):
        for obj in chip.cell(ix, iy):
            if obj.kind == "flake" and obj.regions[0].layers >= min_layers:
                return obj
    raise AssertionError("no flake found")


# -- thin-film optics ---------------------------------------------------------------------------


def test_stack_recursion_equals_blakes_closed_form() -> None:
    rng = np.random.default_rng(1)
    n_ox, n_si = sio2_index(WAVELENGTHS_NM), si_index(WAVELENGTHS_NM)
    for _ in range(20):
        n1 = complex(rng.uniform(1.3, 3.0), -rng.uniform(0.0, 1.5))
        d1, d2 = rng.uniform(0.0, 200.0), rng.uniform(0.0, 400.0)
        recursive = stack_reflectance(WAVELENGTHS_NM, [(n1, d1), (n_ox, d2)], n_si)
        closed = blake_reflectance(n1, d1, n_ox, d2, n_si, WAVELENGTHS_NM)
        np.testing.assert_allclose(recursive, closed, rtol=1e-10, atol=1e-14)


def test_bare_substrate_limits() -> None:
    lam = np.array([550.0])
    n_ox, n_si = sio2_index(lam), si_index(lam)
    # No oxide: the Fresnel reflectance of silicon, |(1 − n)/(1 + n)|².
    bare = stack_reflectance(lam, [(n_ox, 0.0)], n_si)
    assert bare[0] == pytest.approx(abs((1 - n_si[0]) / (1 + n_si[0])) ** 2, rel=1e-12)
    # Quarter-wave oxide (n₂d = λ/4): r = (n₀n₃ − n₂²)/(n₀n₃ + n₂²), the antireflection minimum.
    d_quarter = 550.0 / (4 * n_ox[0].real)
    quarter = stack_reflectance(lam, [(n_ox, d_quarter)], n_si)
    expected = abs((n_si[0] - n_ox[0] ** 2) / (n_si[0] + n_ox[0] ** 2)) ** 2
    assert quarter[0] == pytest.approx(expected, rel=1e-9)
    # A film with the oxide's own index is just more oxide.
    thicker = stack_reflectance(
        WAVELENGTHS_NM,
        [(sio2_index(WAVELENGTHS_NM), 40.0), (sio2_index(WAVELENGTHS_NM), 250.0)],
        si_index(WAVELENGTHS_NM),
    )
    single = stack_reflectance(
        WAVELENGTHS_NM, [(sio2_index(WAVELENGTHS_NM), 290.0)], si_index(WAVELENGTHS_NM)
    )
    np.testing.assert_allclose(thicker, single, rtol=1e-10)
    # And a film of zero thickness changes nothing.
    assert np.all(contrast_rgb(SpectralModel(), GRAPHENE, 0.0, 285.0) == 0.0)


def test_green_channel_follows_the_monochromatic_blake_contrast() -> None:
    # Blake's formula with the constants DESIGN §5 quotes (n_SiO2 = 1.46, n_Si = 4.08 − 0.03i,
    # graphene 2.6 − 1.3i) at the green band centre, 540 nm, written out here independently.
    def blake(d1: float, lam: float) -> float:
        n0, n1, n2, n3 = 1.0, 2.6 - 1.3j, 1.46, 4.08 - 0.03j
        r1, r2, r3 = (n0 - n1) / (n0 + n1), (n1 - n2) / (n1 + n2), (n2 - n3) / (n2 + n3)
        f1, f2 = 2 * math.pi * n1 * d1 / lam, 2 * math.pi * n2 * 90.0 / lam
        e = np.exp
        num = (
            r1 * e(1j * (f1 + f2))
            + r2 * e(-1j * (f1 - f2))
            + r3 * e(-1j * (f1 + f2))
            + r1 * r2 * r3 * e(1j * (f1 - f2))
        )
        den = (
            e(1j * (f1 + f2))
            + r1 * r2 * e(-1j * (f1 - f2))
            + r1 * r3 * e(-1j * (f1 + f2))
            + r2 * r3 * e(1j * (f1 - f2))
        )
        return abs(num / den) ** 2

    mono = blake(0.335, 540.0) / blake(0.0, 540.0) - 1.0
    green = contrast_rgb(SpectralModel(), GRAPHENE, 0.335, 90.0)[G]
    # The band average over 80 nm around a broad maximum and the dispersion of Si/SiO₂ move
    # the value by a few thousandths only.
    assert green == pytest.approx(mono, abs=0.01)


def test_monolayer_graphene_on_90nm_matches_the_sanity_values() -> None:
    # DESIGN §5: about −0.09 / −0.14 / −0.13 (B / G / R). Tolerance ±0.03: the published
    # values are rounded, read from images taken with unspecified lamps and colour filters,
    # and the band model is generic (halogen vs white LED alone moves red by 0.01).
    c = contrast_rgb(SpectralModel(), GRAPHENE, GRAPHENE.thickness_nm(1), 90.0)
    assert c[B] == pytest.approx(-0.09, abs=0.03)
    assert c[G] == pytest.approx(-0.14, abs=0.03)
    assert c[R] == pytest.approx(-0.13, abs=0.03)
    led = contrast_rgb(SpectralModel(illuminant="led"), GRAPHENE, 0.335, 90.0)
    np.testing.assert_allclose(led, [-0.13, -0.14, -0.09], atol=0.03)


def test_green_contrast_grows_close_to_linearly_for_one_to_three_layers() -> None:
    model = SpectralModel()
    green = np.array(
        [contrast_rgb(model, GRAPHENE, GRAPHENE.thickness_nm(n), 90.0)[G] for n in (1, 2, 3)]
    )
    np.testing.assert_allclose(green, [-0.14, -0.26, -0.37], atol=0.03)  # DESIGN §5
    # Each layer changes the phase by 2π·n·0.335/λ ≈ 0.01 rad, so the contrast is linear in N
    # to first order; the quadratic term is ≲ 10 % of the linear one at 3 layers. A line through
    # the origin fits within 0.02 and the layer-to-layer steps stay within 25 % of the first.
    n = np.array([1.0, 2.0, 3.0])
    slope = float(n @ green / (n @ n))
    assert np.max(np.abs(green - slope * n)) < 0.02
    steps = np.diff(np.concatenate([[0.0], green]))
    assert np.all(np.abs(steps - steps[0]) < 0.25 * abs(steps[0]))
    assert np.all(steps < 0)  # each layer darker


@pytest.mark.parametrize("oxide_nm", [90.0, 285.0, 300.0])
def test_monolayer_hbn_contrast_is_small(oxide_nm: float) -> None:
    c = contrast_rgb(SpectralModel(), HBN, HBN.thickness_nm(1), oxide_nm)
    assert np.max(np.abs(c)) < 0.03  # the hard case: 1–2 %
    assert np.max(np.abs(c)) > 0.002  # but not invisible


def test_contrast_table_matches_direct_integration() -> None:
    model = SpectralModel()
    table = ContrastTable(model, 80.0, 320.0)
    for oxide in (90.0, 91.37, 284.9, 300.0):
        for material, nm in ((GRAPHENE, 0.67), (HBN, 30.0)):
            # Linear interpolation on a 0.25 nm grid: < 1e-5 in reflectance, < 1e-4 relative.
            np.testing.assert_allclose(
                table.contrast_rgb(material, nm, oxide),
                contrast_rgb(model, material, nm, oxide),
                rtol=1e-4,
                atol=1e-5,
            )


# -- ideal images against the model --------------------------------------------------------------


@pytest.fixture(scope="module", params=[285.0, 90.0], ids=["285nm", "90nm"])
def ideal_images(request):
    config = OpticalConfig(
        chip=ChipConfig(oxide_nm=request.param), camera=CameraConfig(bit_depth=16)
    )
    return list(FlakeChipSource(config, seed=5, ideal=True).images(5))


def measured_contrast(
    image: np.ndarray, mask: np.ndarray, occupied: np.ndarray, ring_px: int = 25
) -> tuple[np.ndarray, int, int] | None:
    """mean(image in eroded mask) / mean(nearby bare background) − 1 per channel."""
    m8 = mask.astype(np.uint8)
    inner = cv2.erode(m8, np.ones((5, 5), np.uint8)).astype(bool)
    near = cv2.dilate(m8, np.ones((2 * ring_px + 1,) * 2, np.uint8)).astype(bool)
    free = ~cv2.dilate(occupied.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    ring = near & free
    if inner.sum() < 20 or ring.sum() < 50:
        return None
    img = image.astype(np.float64)
    return img[inner].mean(axis=0) / img[ring].mean(axis=0) - 1.0, int(inner.sum()), int(ring.sum())


def test_ideal_images_show_each_object_at_its_expected_contrast(ideal_images) -> None:
    checked = {"graphene": 0, "hBN": 0, "residue": 0, "dirt": 0}
    for annotated in ideal_images:
        occupied = np.zeros(annotated.image.shape[:2], bool)
        for obj in annotated.objects:
            occupied |= obj.mask
        for obj in annotated.objects:
            result = measured_contrast(annotated.image, obj.mask, occupied)
            if result is None:
                continue
            measured, _, _ = result
            expected = np.array(obj.attributes["expected_contrast_rgb"])
            assert np.max(np.abs(measured - expected)) <= 0.01, (
                obj.category,
                obj.attributes,
                measured,
            )
            checked[obj.category] += 1
    assert checked["graphene"] + checked["hBN"] >= 10, checked
    assert checked["dirt"] >= 1, checked


def test_realistic_images_keep_the_contrast_of_large_flakes() -> None:
    # With blur (in focus: diffraction + pixel), vignetting, white balance, shot and read noise
    # and 8-bit rounding, the black-level-corrected contrast of flakes large enough to average
    # the noise (≥ 300 px after an erosion wider than the blur) stays within 0.02 of the model.
    source = FlakeChipSource(OpticalConfig(), seed=8, defocus_dof=0.0)
    black = source.microscope.camera.black_level_dn
    checked = 0
    for annotated in source.images(4):
        image = annotated.image.astype(np.float64) - black
        occupied = np.zeros(image.shape[:2], bool)
        for obj in annotated.objects:
            occupied |= obj.mask
        for obj in annotated.objects:
            if obj.category not in ("graphene", "hBN"):
                continue
            expected = np.array(obj.attributes["expected_contrast_rgb"])
            if np.max(expected) > 1.0:  # bright bulk flakes saturate the 8-bit range
                continue
            m8 = obj.mask.astype(np.uint8)
            inner = cv2.erode(m8, np.ones((9, 9), np.uint8)).astype(bool)
            ring = cv2.dilate(m8, np.ones((51, 51), np.uint8)).astype(bool) & ~cv2.dilate(
                occupied.astype(np.uint8), np.ones((15, 15), np.uint8)
            ).astype(bool)
            if inner.sum() < 300 or ring.sum() < 300:
                continue
            measured = image[inner].mean(axis=0) / image[ring].mean(axis=0) - 1.0
            assert np.max(np.abs(measured - expected)) <= 0.02, (obj.attributes, measured)
            checked += 1
    assert checked >= 5


def test_ideal_truth_masks_are_uniform_regions(ideal_images) -> None:
    # Without blur and noise each region is one colour (up to the oxide gradient, < 0.1 %).
    for annotated in ideal_images:
        for obj in annotated.objects:
            inner = cv2.erode(obj.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if inner.sum() < 10:
                continue
            values = annotated.image[inner].astype(np.float64)
            assert np.all(values.std(axis=0) <= 1e-3 * values.mean(axis=0) + 0.5)


def test_truth_attributes(ideal_images) -> None:
    kinds = set()
    for annotated in ideal_images:
        attrs = annotated.attributes
        assert attrs["oxide_nm"] in (pytest.approx(285.0, abs=6.0), pytest.approx(90.0, abs=6.0))
        assert attrs["defocus_um"] == pytest.approx(attrs["z_um"] - attrs["focus_z_um"])
        json.dumps(attrs)
        for obj in annotated.objects:
            a = obj.attributes
            kinds.add(a["kind"])
            assert obj.mask.shape == annotated.image.shape[:2] and obj.mask.dtype == bool
            assert obj.category == a["material"]
            assert isinstance(a["layers"], int) and len(a["expected_contrast_rgb"]) == 3
            if a["material"] in ("graphene", "hBN"):
                layer_nm = {"graphene": 0.335, "hBN": 0.333}[a["material"]]
                assert a["thickness_nm"] == pytest.approx(a["layers"] * layer_nm)
            json.dumps(a)
    assert {"flake", "dirt"} <= kinds


# -- defocus ----------------------------------------------------------------------------------


def flake_tile_sim(**extra) -> tuple[SimulatedOpticalMicroscope, FakeClock]:
    cfg = OpticalConfig(
        camera=dataclasses.replace(SMALL, vignetting_corner=1.0),
        z_backlash_um=0.0,
        stage_backlash_um=0.0,
        seed=2,
        **extra,
    )
    sim, clock = make_sim(cfg)
    obj = first_flake(sim, min_layers=3)
    sim.move_stage(*obj.centre_um)
    return sim, clock


def test_sharpness_is_highest_at_focus_and_falls_monotonically() -> None:
    sim, _ = flake_tile_sim(**FLAT_FOCUS)
    focus = sim.true_focus_z_um()
    assert focus == pytest.approx(2500.0)  # a flat focus surface
    steps_um = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    for sign in (1.0, -1.0):
        curve = []
        for dz in steps_um:
            sim.set_wd(focus + sign * dz)
            curve.append(gradient_energy(sim.acquire_with_clean()[1][..., G]))
        assert all(a > b for a, b in itertools.pairwise(curve)), curve
    # The blur depends on |Δz| only.
    sim.set_wd(focus + 3.0)
    plus = gradient_energy(sim.acquire_with_clean()[1][..., G])
    sim.set_wd(focus - 3.0)
    minus = gradient_energy(sim.acquire_with_clean()[1][..., G])
    assert plus == pytest.approx(minus, rel=1e-3)


def test_tilted_and_bowed_focus_surface() -> None:
    tilt_x, tilt_y, bow = 4.0, -2.0, 5.0
    sim, _ = flake_tile_sim(
        focus_tilt_x_um_per_mm=tilt_x, focus_tilt_y_um_per_mm=tilt_y, focus_bow_um=bow
    )
    x, y = sim.state().stage_x_um, sim.state().stage_y_um
    half_diag2 = (10_000.0**2 + 10_000.0**2) / 4
    expected = 2500.0 + tilt_x * x / 1000 + tilt_y * y / 1000 + bow * (x * x + y * y) / half_diag2
    assert sim.true_focus_z_um() == pytest.approx(expected, abs=1e-9)
    # The sharpest Z of a scan in 0.5 µm steps is the true focus of this tile.
    zs = expected + np.arange(-4.0, 4.01, 0.5)
    scores = []
    for z in zs:
        sim.set_wd(float(z))
        scores.append(gradient_energy(sim.acquire_with_clean()[1][..., G]))
    assert abs(zs[int(np.argmax(scores))] - expected) <= 0.5


def test_frame_truth_and_state() -> None:
    sim, _ = make_sim(OpticalConfig(camera=SMALL, start_z_um=2510.0, **FLAT_FOCUS))
    frame = sim.acquire()
    state = frame.state
    assert frame.pixels.shape == (240, 320, 3) and frame.pixels.dtype == np.uint8
    assert state.magnification == 20.0 and state.numerical_aperture == pytest.approx(0.40)
    assert state.pixel_size_nm == pytest.approx(5860.0 / 20.0)  # camera pixel / magnification
    assert state.exposure_s == pytest.approx(0.01) and state.beam_semiangle_mrad is None
    assert frame.truth is not None
    assert frame.truth.focus_wd_um == pytest.approx(2500.0)
    assert frame.truth.defocus_um == pytest.approx(10.0)
    assert frame.truth.dof_um == pytest.approx(optical_depth_of_field_um(293.0, 0.40))


# -- camera ------------------------------------------------------------------------------------


def test_camera_noise_is_shot_plus_read_noise() -> None:
    cfg = CameraConfig(shape=(256, 256), bit_depth=16, read_noise_e=8.0, white_balance=None)
    camera = Camera(cfg, np.ones(3), np.full(3, 0.2))
    rng = np.random.default_rng(3)
    for mean_e in (200.0, 2000.0, 20000.0):
        pixels = camera.read_out(np.full((256, 256, 3), mean_e, np.float32), rng)
        dn = pixels.reshape(-1, 3).astype(np.float64)
        g = camera.gain_dn_per_e
        assert dn.mean() == pytest.approx(camera.black_level_dn + g * mean_e, rel=2e-3)
        # Poisson: variance = mean (e⁻), plus read noise², plus rounding (1/12 DN²).
        expected_var = g * g * (mean_e + cfg.read_noise_e**2) + 1.0 / 12.0
        assert dn.var(axis=0) == pytest.approx([expected_var] * 3, rel=0.05)


def test_full_well_and_output_range_saturate() -> None:
    cfg = CameraConfig(shape=(32, 32), bit_depth=8, gain_dn_per_e=1.0)
    camera = Camera(cfg, np.ones(3), np.full(3, 0.2))
    assert np.all(
        camera.read_out(np.full((32, 32, 3), 1e5, np.float32), np.random.default_rng(0)) == 255
    )
    cfg16 = CameraConfig(shape=(32, 32), bit_depth=16, gain_dn_per_e=1.0, read_noise_e=0.0)
    camera16 = Camera(cfg16, np.ones(3), np.full(3, 0.2))
    out = camera16.read_out(np.full((32, 32, 3), 1e5, np.float32), np.random.default_rng(0))
    # The full well (32 000 e⁻) clips before the 16-bit range: gain 1 DN/e⁻ + black level.
    assert np.all(out == round(cfg16.full_well_e + camera16.black_level_dn))


def test_eight_and_sixteen_bit_output_show_the_same_scene() -> None:
    frames = {}
    for bits in (8, 16):
        sim, _ = make_sim(
            OpticalConfig(camera=dataclasses.replace(SMALL, bit_depth=bits), ideal=True, seed=4)
        )
        frames[bits] = sim.acquire().pixels
    assert frames[8].dtype == np.uint8 and frames[16].dtype == np.uint16
    # Automatic gain puts the substrate at the same fraction of either range.
    assert np.max(np.abs(frames[16] / 257.0 - frames[8])) <= 1.0


def test_vignetting_darkens_the_corners_as_configured() -> None:
    empty = ChipConfig(
        flakes_per_mm2=0.0,
        residue_per_mm2=0.0,
        dirt_per_mm2=0.0,
        oxide_gradient_nm_per_mm=0.0,
        oxide_bow_nm=0.0,
    )
    cfg = OpticalConfig(
        chip=empty, camera=dataclasses.replace(SMALL, vignetting_corner=0.7, shape=(241, 321))
    )
    sim, _ = make_sim(cfg)
    _, clean = sim.acquire_with_clean()
    black = sim.camera.black_level_dn
    centre = clean[120, 160] - black
    corner = clean[0, 0] - black
    np.testing.assert_allclose(corner / centre, 0.7, rtol=0.01)


# -- oxide gradient ------------------------------------------------------------------------------


def test_oxide_gradient_changes_the_background_colour() -> None:
    chip = ChipConfig(
        oxide_gradient_nm_per_mm=20.0,
        oxide_gradient_angle_deg=0.0,
        oxide_bow_nm=0.0,
        flakes_per_mm2=0.0,
        residue_per_mm2=0.0,
        dirt_per_mm2=0.0,
    )
    means, oxide = {}, {}
    for white_balance in (None, "mirror"):
        for ideal in (True, False):
            sim, _ = make_sim(
                OpticalConfig(
                    chip=chip,
                    ideal=ideal,
                    camera=dataclasses.replace(SMALL, white_balance=white_balance),
                )
            )
            for x in (-3000.0, 3000.0):
                sim.move_stage(x, 0.0)
                frame, annotated = sim.acquire_with_truth()
                # The stage stops short by its backlash when it arrives from above.
                oxide[x] = (annotated.attributes["oxide_nm"], annotated.attributes["actual_x_um"])
                pixels = frame.pixels.astype(np.float64) - sim.camera.black_level_dn
                means[(white_balance, ideal, x)] = pixels.reshape(-1, 3).mean(axis=0)
    # 20 nm/mm along x: 285 ∓ 60 nm.
    for nm, actual_x in oxide.values():
        assert nm == pytest.approx(285.0 + 20.0 * actual_x / 1000.0)
    assert oxide[-3000.0][0] == pytest.approx(225.0, abs=0.1)
    assert oxide[3000.0][0] == pytest.approx(345.0, abs=0.1)
    model = SpectralModel()
    expected_ratio = reflectance_rgb(model, None, 0.0, 345.0) / reflectance_rgb(
        model, None, 0.0, 225.0
    )
    measured_ratio = means[(None, True, 3000.0)] / means[(None, True, -3000.0)]
    np.testing.assert_allclose(measured_ratio, expected_ratio, rtol=0.01)
    # White balance scales channels, so the ratios stay; noise and vignetting average out.
    noisy_ratio = means[("mirror", False, 3000.0)] / means[("mirror", False, -3000.0)]
    np.testing.assert_allclose(noisy_ratio, expected_ratio, rtol=0.02)

    def chromaticity(rgb: np.ndarray) -> np.ndarray:
        return rgb / rgb.sum()

    shift = chromaticity(means[("mirror", False, 3000.0)]) - chromaticity(
        means[("mirror", False, -3000.0)]
    )
    assert np.max(np.abs(shift)) > 0.05  # a visible change of colour, not just brightness


# -- actuators, limits, protocol ---------------------------------------------------------------


def test_is_a_microscope_and_limits_are_enforced() -> None:
    sim, _ = make_sim(OpticalConfig(camera=SMALL, max_z_step_um=100.0))
    assert isinstance(sim, Microscope)
    limits = sim.limits()
    guarded = guard(sim)
    assert (limits.wd_min_um, limits.wd_max_um) == (0.0, 5000.0)
    assert (limits.stage_x_min_um, limits.stage_x_max_um) == (-5500.0, 5500.0)
    for bad_z in (limits.wd_max_um + 1.0, limits.wd_min_um - 1.0, float("nan"), 2500.0 + 150.0):
        with pytest.raises(LimitError):
            guarded.set_wd(bad_z)
    for bad_xy in ((6000.0, 0.0), (0.0, -5600.0), (float("inf"), 0.0)):
        with pytest.raises(LimitError):
            guarded.move_stage(*bad_xy)
    state = sim.state()  # refused commands moved nothing
    assert (state.wd_um, state.stage_x_um, state.stage_y_um) == (2500.0, 0.0, 0.0)
    with pytest.raises(LimitError):
        sim.set_exposure_s(-1.0)


def test_z_drive_settles_as_a_first_order_lag_with_backlash() -> None:
    settle, backlash = 0.05, 0.3
    sim, clock = make_sim(
        OpticalConfig(camera=SMALL, z_settle_s=settle, z_backlash_um=backlash, **FLAT_FOCUS)
    )
    z0 = 2500.0
    sim.set_wd(z0 + 10.0, wait=False)
    assert not sim.state().settled
    clock.t += settle / 5  # one time constant: 1 − e⁻¹ of the step
    assert sim.state().wd_um == pytest.approx(z0 + 10.0 * (1 - math.exp(-1.0)))
    clock.t += settle
    state = sim.state()
    assert state.settled and state.wd_um == pytest.approx(z0 + 10.0)  # from below: exact
    slept = clock.slept
    sim.set_wd(z0 + 5.0)  # from above: short by the backlash
    assert clock.slept - slept == pytest.approx(settle)
    assert sim.state().wd_um == pytest.approx(z0 + 5.0 + backlash)
    assert sim.acquire().truth.defocus_um == pytest.approx(5.0 + backlash)
    sim.set_wd(z0 + 7.0)  # up again: the play is taken up, exact
    assert sim.state().wd_um == pytest.approx(z0 + 7.0)


def test_stage_moves_take_time_and_have_backlash() -> None:
    speed, settle, backlash = 10_000.0, 0.1, 2.0
    cfg = OpticalConfig(
        camera=dataclasses.replace(SMALL, shape=(256, 256)),
        ideal=True,
        seed=2,
        stage_speed_um_per_s=speed,
        stage_settle_s=settle,
        stage_backlash_um=backlash,
    )
    sim, clock = make_sim(cfg)
    obj = first_flake(sim, min_layers=10)
    x, y = obj.centre_um
    sim.move_stage(x - 1000.0, y - 1000.0)
    sim.move_stage(x - 500.0, y - 500.0)  # moving up on both axes: no backlash left
    slept = clock.slept
    sim.move_stage(x, y, wait=False)
    assert not sim.state().settled
    assert sim.state().stage_x_um == x  # the controller reports the command
    sim.move_stage(x, y)
    # Move time: 500 µm at 10 mm/s plus the settle time.
    assert clock.slept - slept == pytest.approx(500.0 / speed + settle)
    below, truth_below = sim.acquire_with_truth()
    sim.move_stage(x + 500.0, y)
    sim.move_stage(x, y)  # from above in x: the stage stops short by the backlash
    above, truth_above = sim.acquire_with_truth()
    assert truth_below.attributes["actual_x_um"] == pytest.approx(x)
    assert truth_above.attributes["actual_x_um"] == pytest.approx(x + backlash)
    assert above.state.stage_x_um == x
    # The image moves by backlash / pixel (2 µm / 0.293 µm = 6.8 px) to the left.
    shift, _ = cv2.phaseCorrelate(
        below.pixels[..., G].astype(np.float64), above.pixels[..., G].astype(np.float64)
    )
    assert shift[0] == pytest.approx(-backlash / cfg.pixel_um, abs=0.3)
    assert shift[1] == pytest.approx(0.0, abs=0.3)


# -- determinism and the dataset source -----------------------------------------------------------


def test_same_seed_same_chip_images_and_truth() -> None:
    cfg = OpticalConfig(camera=SMALL)

    def run(seed: int):
        source = FlakeChipSource(cfg, seed=seed)
        return [
            (a.image, [(o.category, o.attributes, o.mask) for o in a.objects])
            for a in source.images(3)
        ]

    first, again, other = run(11), run(11), run(12)
    source = FlakeChipSource(cfg, seed=11)  # the same tiles on every call, too
    np.testing.assert_array_equal(next(source.images(1)).image, next(source.images(1)).image)
    for (img_a, obj_a), (img_b, obj_b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(img_a, img_b)
        assert [(c, a) for c, a, _ in obj_a] == [(c, a) for c, a, _ in obj_b]
        for (_, _, mask_a), (_, _, mask_b) in zip(obj_a, obj_b, strict=True):
            np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(first[0][0], other[0][0])


def test_chip_cells_do_not_depend_on_query_order() -> None:
    # Cells are generated from (seed, cell) alone, so a huge chip costs only what is looked at.
    big = ChipConfig(size_x_um=100_000.0, size_y_um=100_000.0)
    first, second = Chip(big, seed=9), Chip(big, seed=9)
    for ix, iy in ((200, 3), (0, 0), (249, 249)):
        second.cell(ix, iy)
    a, b = first.cell(120, 121), second.cell(120, 121)
    assert [o.object_id for o in a] == [o.object_id for o in b] and a
    for obj_a, obj_b in zip(a, b, strict=True):
        for reg_a, reg_b in zip(obj_a.regions, obj_b.regions, strict=True):
            assert (reg_a.material, reg_a.layers) == (reg_b.material, reg_b.layers)
            for pa, pb in zip(reg_a.polygons_um, reg_b.polygons_um, strict=True):
                np.testing.assert_array_equal(pa, pb)
    # Objects stay inside their cell and never overlap.
    for obj in a:
        assert all(
            math.dist(obj.centre_um, o.centre_um) > obj.radius_um + o.radius_um
            for o in a
            if o is not obj
        )


def test_flake_chip_source_is_a_dataset_source() -> None:
    source = FlakeChipSource(OpticalConfig(camera=SMALL), seed=3)
    assert isinstance(source, DatasetSource) and source.name == "flakes"
    meta = json.loads(json.dumps(source.metadata()))
    assert meta["seed"] == 3 and meta["chip"]["oxide_nm"] == 285.0
    assert meta["optics"]["numerical_aperture"] == 0.40
    assert meta["spectrum"]["band_centres_nm"] == [610.0, 540.0, 465.0]
    assert set(meta["indices_n_k"]) >= {"SiO2", "Si", "graphene", "hBN"}
    assert meta["camera"]["exposure_s"] == 0.01
    images = list(source.images(3))
    assert len(images) == 3
    for annotated in images:
        assert annotated.image.shape == (240, 320, 3)
        assert any(o.attributes["kind"] in ("flake", "terrace") for o in annotated.objects)
        assert abs(annotated.attributes["defocus_um"]) <= meta["optics"]["dof_um"] + 0.3 + 1e-9
