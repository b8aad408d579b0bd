"""Physics of the simulated SEM: defocus blur, astigmatism, depth of field, dose and noise,
tilt, drift and settling, determinism, textures and specimen families.

Expected values come from the model's formulas (geometric optics, Poisson statistics, the
actuator law), never from earlier runs of the code. Clocks are fakes; nothing reads wall time.
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest

from scopeflow.devices.limits import guard
from scopeflow.devices.protocols import Microscope
from scopeflow.errors import DeviceError, LimitError
from scopeflow_lab.sim.sem import SPECIMEN_FAMILIES, SEMConfig, SimulatedSEM, make_specimen

from fakes import FakeClock


def make_sim(config: SEMConfig, specimen=None) -> tuple[SimulatedSEM, FakeClock]:
    clock = FakeClock()
    return SimulatedSEM(config, clock=clock, sleep=clock.sleep, specimen=specimen), clock


def gradient_energy(image: np.ndarray) -> float:
    """Tenengrad sharpness: mean squared Sobel gradient."""
    img = image.astype(np.float64)
    gx = cv2.Sobel(img, cv2.CV_64F, 1, 0)
    gy = cv2.Sobel(img, cv2.CV_64F, 0, 1)
    return float(np.mean(gx * gx + gy * gy))


def clean_at(sim: SimulatedSEM, wd_um: float) -> np.ndarray:
    sim.set_wd(wd_um)
    _, clean = sim.acquire_with_clean()
    return clean


def random_texture(seed: int, size: int = 256, blur_px: float = 1.0) -> np.ndarray:
    """An isotropic random texture with detail down to a couple of pixels."""
    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    padded = np.pad(noise, 8, mode="wrap")  # keep it periodic, as the specimen tiles
    return cv2.GaussianBlur(padded, (0, 0), blur_px)[8:-8, 8:-8]


@pytest.fixture(scope="module")
def particles():
    """One small nanoparticle specimen shared by the tests that need realistic content."""
    return make_specimen("nanoparticles", seed=3, samples=1024, sample_nm=4.0)


# -- protocol, state, limits -------------------------------------------------------------------


def test_is_a_microscope_and_limits_are_enforced(particles) -> None:
    sim, _ = make_sim(SEMConfig(frame_shape=(64, 64), max_wd_step_um=500.0), particles)
    assert isinstance(sim, Microscope)
    limits = sim.limits()
    guarded = guard(sim)
    assert (limits.wd_min_um, limits.wd_max_um) == (1000.0, 50000.0)
    with pytest.raises(LimitError):
        guarded.set_wd(limits.wd_max_um + 1.0)
    with pytest.raises(LimitError):
        guarded.set_wd(limits.wd_min_um - 1.0)
    with pytest.raises(LimitError):
        guarded.set_wd(float("nan"))
    with pytest.raises(LimitError):  # a single step larger than max_wd_step_um
        guarded.set_wd(5000.0 + 600.0)
    with pytest.raises(LimitError):
        guarded.move_stage(60000.0, 0.0)
    assert sim.state().wd_um == 5000.0  # refused commands did not move anything


def test_state_frame_and_truth(particles) -> None:
    cfg = SEMConfig(
        frame_shape=(96, 128), pixel_size_nm=8.0, beam_semiangle_mrad=4.0, start_wd_um=5012.0
    )
    sim, _ = make_sim(cfg, particles)
    frame = sim.acquire()
    state = frame.state
    assert frame.pixels.shape == (96, 128) and frame.pixels.dtype == np.uint16
    # Magnification refers to a 127 mm display: 127 mm / (128 px × 8 nm).
    assert state.magnification == pytest.approx(127e-3 / (128 * 8e-9))
    assert (state.pixel_size_nm, state.beam_semiangle_mrad) == (8.0, 4.0)
    assert frame.start_time_ns <= frame.stop_time_ns
    assert frame.truth is not None
    assert frame.truth.focus_wd_um == pytest.approx(5000.0)
    assert frame.truth.defocus_um == pytest.approx(12.0)
    assert frame.truth.dof_um == pytest.approx(8.0 / 4.0)  # pixel / α: nm / mrad = µm
    assert sim.true_focus_wd_um() == pytest.approx(5000.0)


# -- defocus, astigmatism, depth of field --------------------------------------------------------


def test_sharpness_is_highest_at_focus_and_falls_monotonically(particles) -> None:
    cfg = SEMConfig(frame_shape=(192, 192))
    sim, _ = make_sim(cfg, particles)
    dof = cfg.pixel_size_nm / cfg.beam_semiangle_mrad  # µm
    steps = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0]
    for sign in (1.0, -1.0):
        curve = [gradient_energy(clean_at(sim, 5000.0 + sign * k * dof)) for k in steps]
        assert all(a > b for a, b in itertools.pairwise(curve)), curve
    # Without astigmatism the blur depends on |Δz| only.
    plus = gradient_energy(clean_at(sim, 5000.0 + 2 * dof))
    minus = gradient_energy(clean_at(sim, 5000.0 - 2 * dof))
    assert plus == pytest.approx(minus, rel=1e-3)


POINT = np.zeros((256, 256), np.float32)
POINT[128, 128] = 1.0


def point_spread(pixel_nm: float, alpha_mrad: float, defocus_um: float, **extra) -> np.ndarray:
    """Image of a single bright texture pixel, background removed (noise-free)."""
    # The texture pixel (128, 128) is centred at 128.5 texture pixels; put it at the field centre.
    centre_um = 128.5 * pixel_nm * 1e-3
    cfg = SEMConfig(
        frame_shape=(160, 160),
        texture=POINT,
        texture_pixel_nm=pixel_nm,
        pixel_size_nm=pixel_nm,
        beam_semiangle_mrad=alpha_mrad,
        probe_fwhm_nm=0.0,
        start_stage_x_um=centre_um,
        start_stage_y_um=centre_um,
        **extra,
    )
    sim, _ = make_sim(cfg)
    clean = clean_at(sim, cfg.focus_wd_um + defocus_um)
    border = np.concatenate([clean[:4].ravel(), clean[-4:].ravel()])
    return clean - np.median(border)


def second_moments(psf: np.ndarray, radius: float) -> tuple[float, float, float]:
    """(var_x, var_y, cov_xy) in px² within ``radius`` of the centroid."""
    ys, xs = np.mgrid[: psf.shape[0], : psf.shape[1]].astype(np.float64)
    w = np.clip(psf, 0.0, None)
    cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    w = np.where((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2, w, 0.0)
    w /= w.sum()
    cx, cy = (w * xs).sum(), (w * ys).sum()
    return (
        (w * (xs - cx) ** 2).sum(),
        (w * (ys - cy) ** 2).sum(),
        (w * (xs - cx) * (ys - cy)).sum(),
    )


@pytest.mark.parametrize(("pixel_nm", "alpha_mrad"), [(10.0, 3.0), (20.0, 3.0), (10.0, 6.0)])
def test_blur_disk_diameter_is_two_alpha_dz_over_pixel(pixel_nm: float, alpha_mrad: float) -> None:
    # A uniform disk of diameter d has a per-axis variance of d²/16 (R²/4); the probe Gaussian
    # and resampling add a constant, removed by subtracting the in-focus variance. Disks of a
    # few pixels or more (here 4.5–72 px) keep pixel sampling out of the comparison.
    focus_var, _, _ = second_moments(point_spread(pixel_nm, alpha_mrad, 0.0), 10.0)
    for defocus_um in (15.0, -25.0, 60.0):
        expected_px = 2 * alpha_mrad * 1e-3 * abs(defocus_um) * 1e3 / pixel_nm
        var_x, var_y, _ = second_moments(
            point_spread(pixel_nm, alpha_mrad, defocus_um), expected_px / 2 + 6
        )
        for var in (var_x, var_y):
            measured_px = 4 * math.sqrt(var - focus_var)
            assert measured_px == pytest.approx(expected_px, rel=0.03), (defocus_um, measured_px)


def half_sharpness_defocus_um(pixel_nm: float, alpha_mrad: float) -> float:
    """The defocus at which gradient energy falls to half its in-focus value (bisection)."""
    # The texture pixel equals the frame pixel, so the content is the same in pixel units for
    # every pixel size: only the blur in pixels, 2α|Δz|/p, differs.
    cfg = SEMConfig(
        frame_shape=(128, 128),
        texture=random_texture(7),
        texture_pixel_nm=pixel_nm,
        pixel_size_nm=pixel_nm,
        beam_semiangle_mrad=alpha_mrad,
        probe_fwhm_nm=0.0,
    )
    sim, _ = make_sim(cfg)
    in_focus = gradient_energy(clean_at(sim, 5000.0))
    lo, hi = 0.0, 20.0 * pixel_nm / alpha_mrad
    for _ in range(16):
        mid = (lo + hi) / 2
        if gradient_energy(clean_at(sim, 5000.0 + mid)) > 0.5 * in_focus:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_depth_of_field_scales_with_pixel_size_over_alpha() -> None:
    base = half_sharpness_defocus_um(10.0, 3.0)
    assert half_sharpness_defocus_um(20.0, 3.0) / base == pytest.approx(2.0, rel=0.03)
    assert half_sharpness_defocus_um(10.0, 6.0) / base == pytest.approx(0.5, rel=0.03)
    # And the half-sharpness defocus is of the order of the depth of field, pixel / α.
    assert 0.3 < base / (10.0 / 3.0) < 3.0


def long_axis_deg(var_x: float, var_y: float, cov: float) -> float:
    """Orientation of the major axis of a second-moment ellipse, degrees in [0, 180)."""
    return math.degrees(0.5 * math.atan2(2 * cov, var_x - var_y)) % 180.0


def angle_between(a: float, b: float) -> float:
    """Difference of two axis orientations, degrees in [0, 90]."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def test_astigmatism_long_axis_turns_ninety_degrees_through_focus() -> None:
    # Along the axis the disk diameter is 2α|Δz + a/2|, across it 2α|Δz − a/2|: for Δz > 0 the
    # ellipse is long along the astigmatism axis, for Δz < 0 across it.
    angle, astig = 30.0, 20.0
    axes = {}
    for dz in (15.0, -15.0):
        psf = point_spread(10.0, 3.0, dz, astigmatism_um=astig, astigmatism_angle_deg=angle)
        var_x, var_y, cov = second_moments(psf, 25.0)
        axes[dz] = long_axis_deg(var_x, var_y, cov)
        # Expected axis ratio from the diameters: along 2α|15 + 10|, across 2α|15 − 10| → 5:1.
        major = 0.5 * (var_x + var_y) + math.hypot(0.5 * (var_x - var_y), cov)
        minor = 0.5 * (var_x + var_y) - math.hypot(0.5 * (var_x - var_y), cov)
        assert math.sqrt(major / minor) > 3.0
    assert angle_between(axes[15.0], angle) < 3.0
    assert angle_between(axes[-15.0], angle + 90.0) < 3.0


@pytest.mark.parametrize("angle", [0.0, 37.0, 60.0])
def test_psf_at_a_line_focus_is_a_line_at_any_angle(angle: float) -> None:
    # At Δz = −a/2 the disk collapses across the axis into a line of length 2α·a/p. A uniform
    # ellipse has variance D²/16 along each of its axes, so the line adds (2α·a/p)²/16 along
    # its length and nothing across it (the in-focus variance removed, as above), up to the
    # rasterisation of a line two fine samples wide. An oblique line used to come out several
    # times too wide.
    astig = 10.0
    length_px = 2 * 3e-3 * astig * 1e3 / 10.0  # 6 px
    focus_var, _, _ = second_moments(point_spread(10.0, 3.0, 0.0), 10.0)
    psf = point_spread(10.0, 3.0, -astig / 2, astigmatism_um=astig, astigmatism_angle_deg=angle)
    var_x, var_y, cov = second_moments(psf, length_px / 2 + 6)
    spread = math.hypot(0.5 * (var_x - var_y), cov)
    major, minor = 0.5 * (var_x + var_y) + spread, 0.5 * (var_x + var_y) - spread
    assert major - focus_var == pytest.approx(length_px**2 / 16, rel=0.15)
    assert abs(minor - focus_var) < 0.1
    assert angle_between(long_axis_deg(var_x, var_y, cov), angle + 90.0) < 3.0


def structure_tensor_angle(image: np.ndarray) -> tuple[float, float]:
    """(dominant gradient orientation in degrees, anisotropy 0..1) of an image."""
    img = image.astype(np.float64)
    gx = cv2.Sobel(img, cv2.CV_64F, 1, 0)[4:-4, 4:-4]
    gy = cv2.Sobel(img, cv2.CV_64F, 0, 1)[4:-4, 4:-4]
    jxx, jyy, jxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    anisotropy = math.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)
    return long_axis_deg(jxx, jyy, jxy), anisotropy


def test_astigmatism_flips_image_anisotropy_through_focus(particles) -> None:
    # The single-frame cue on real content: blur along one axis leaves the gradients across it.
    angle = 120.0
    cfg = SEMConfig(frame_shape=(192, 192), astigmatism_um=12.0, astigmatism_angle_deg=angle)
    sim, _ = make_sim(cfg, particles)
    over = structure_tensor_angle(clean_at(sim, 5000.0 + 6.0))
    under = structure_tensor_angle(clean_at(sim, 5000.0 - 6.0))
    _, at_focus = structure_tensor_angle(clean_at(sim, 5000.0))
    # Δz > 0: blur along the axis, gradients across it; Δz < 0: the other way round.
    assert angle_between(over[0], angle + 90.0) < 10.0
    assert angle_between(under[0], angle) < 10.0
    assert over[1] > 0.2 and under[1] > 0.2
    assert at_focus < 0.5 * min(over[1], under[1])  # circle of least confusion


# -- tilt --------------------------------------------------------------------------------------


def test_tilted_sample_is_sharp_where_the_focus_plane_meets_it() -> None:
    tilt = 60.0
    cfg = SEMConfig(
        frame_shape=(128, 256),
        texture=random_texture(11),
        texture_pixel_nm=20.0,
        pixel_size_nm=20.0,
        beam_semiangle_mrad=10.0,
        tilt_x_deg=tilt,
    )
    sim, _ = make_sim(cfg)
    quarter_um = 256 * 20.0e-3 / 4
    slope = math.tan(math.radians(tilt))
    # Focus WD at x is focus_wd + slope·x: focus on the left quarter, then on the right one.
    left = clean_at(sim, 5000.0 - slope * quarter_um)
    right = clean_at(sim, 5000.0 + slope * quarter_um)
    assert gradient_energy(left[:, :128]) > 2.0 * gradient_energy(left[:, 128:])
    assert gradient_energy(right[:, 128:]) > 2.0 * gradient_energy(right[:, :128])
    # Moving the stage along the tilt moves the focus with it.
    sim.move_stage(10.0, 0.0)
    assert sim.true_focus_wd_um() == pytest.approx(5000.0 + slope * 10.0)


# -- dose, noise, detector ------------------------------------------------------------------


FLAT = np.ones((64, 64), np.float32)  # a constant texture maps to SE yield 1.0


def flat_frame(
    dose: float, read_noise_e: float, gain: float = 20.0, offset: float = 500.0, seed: int = 0
) -> np.ndarray:
    cfg = SEMConfig(
        frame_shape=(256, 256),
        texture=FLAT,
        dose_e_per_px=dose,
        read_noise_e=read_noise_e,
        gain_dn_per_e=gain,
        offset_dn=offset,
        seed=seed,
    )
    sim, _ = make_sim(cfg)
    return sim.acquire().pixels.astype(np.float64)


def test_shot_noise_variance_equals_gain_times_signal() -> None:
    gain, offset = 20.0, 500.0
    for dose in (10.0, 40.0, 160.0):
        pixels = flat_frame(dose, 0.0, gain, offset)
        signal = pixels.mean() - offset
        assert signal == pytest.approx(gain * dose, rel=0.01)
        # Poisson: var(counts) = mean(counts), so var(DN) = gain × (mean(DN) − offset).
        assert pixels.var() == pytest.approx(gain * signal, rel=0.05)


def test_read_noise_adds_in_quadrature() -> None:
    gain, offset, dose, read_noise = 20.0, 500.0, 10.0, 3.0
    pixels = flat_frame(dose, read_noise, gain, offset)
    assert pixels.var() == pytest.approx(gain**2 * (dose + read_noise**2), rel=0.05)


def test_relative_noise_falls_as_one_over_sqrt_dose() -> None:
    offset = 500.0
    rel = {}
    for dose in (10.0, 160.0):
        pixels = flat_frame(dose, 0.0, offset=offset)
        rel[dose] = pixels.std() / (pixels.mean() - offset)
        assert rel[dose] == pytest.approx(1 / math.sqrt(dose), rel=0.05)
    assert rel[10.0] / rel[160.0] == pytest.approx(math.sqrt(16.0), rel=0.05)


def test_low_dose_counts_are_poisson_integers() -> None:
    gain, offset, dose = 10.0, 100.0, 2.0
    counts = (flat_frame(dose, 0.0, gain, offset) - offset) / gain
    assert np.allclose(counts, np.round(counts))
    assert np.mean(counts == 0) == pytest.approx(math.exp(-dose), rel=0.05)  # P(0) = e^−λ
    assert np.mean(counts == 1) == pytest.approx(dose * math.exp(-dose), rel=0.05)


def test_detector_saturates_at_the_dtype_maximum() -> None:
    cfg = SEMConfig(frame_shape=(64, 64), texture=FLAT, dose_e_per_px=100.0, gain_dn_per_e=1000.0)
    sim, _ = make_sim(cfg)
    assert np.all(sim.acquire().pixels == np.iinfo(np.uint16).max)
    sim8, _ = make_sim(
        SEMConfig(
            frame_shape=(64, 64),
            texture=FLAT,
            dtype="uint8",
            dose_e_per_px=500.0,
            gain_dn_per_e=1.0,
        )
    )
    pixels = sim8.acquire().pixels
    assert pixels.dtype == np.uint8 and pixels.max() == 255


def test_scan_line_jitter_shifts_lines_by_the_configured_rms() -> None:
    # A texture that varies along x only: each line's phase gives its horizontal shift.
    period_px = 32
    x = np.arange(256)
    stripes = np.tile(np.sin(2 * np.pi * x / period_px), (64, 1)).astype(np.float32)
    shifts = {}
    for jitter in (0.0, 1.5):
        cfg = SEMConfig(
            frame_shape=(256, 128),
            texture=stripes,
            texture_pixel_nm=10.0,
            line_jitter_px=jitter,
            probe_fwhm_nm=0.0,
        )
        sim, _ = make_sim(cfg)
        _, clean = sim.acquire_with_clean()
        cols = np.arange(clean.shape[1])
        carrier = np.exp(-2j * np.pi * cols / period_px)
        phase = np.angle((clean - clean.mean()) @ carrier)
        shifts[jitter] = np.unwrap(phase) * period_px / (2 * np.pi)
    assert np.std(shifts[0.0]) < 1e-3
    assert np.std(shifts[1.5]) == pytest.approx(1.5, rel=0.2)


def test_charging_changes_brightness_over_time() -> None:
    fraction, tau, offset = 0.2, 10.0, 500.0
    cfg = SEMConfig(
        frame_shape=(64, 64),
        texture=FLAT,
        charging_fraction=fraction,
        charging_tau_s=tau,
        offset_dn=offset,
    )
    sim, clock = make_sim(cfg)
    _, before = sim.acquire_with_clean()
    clock.t += tau
    _, after = sim.acquire_with_clean()
    ratio = (after.mean() - offset) / (before.mean() - offset)
    assert ratio == pytest.approx(1 + fraction * (1 - math.exp(-1.0)), rel=1e-4)


# -- dynamics on a fake clock ---------------------------------------------------------------


def test_stage_drift_moves_the_image() -> None:
    pixel_nm, drift_x, drift_y, dt = 10.0, 30.0, -20.0, 2.0  # nm/s, s
    texture = random_texture(5, blur_px=2.0)
    cfg = SEMConfig(
        frame_shape=(128, 128),
        texture=texture,
        texture_pixel_nm=pixel_nm,
        stage_drift_x_nm_per_s=drift_x,
        stage_drift_y_nm_per_s=drift_y,
    )
    sim, clock = make_sim(cfg)
    _, first = sim.acquire_with_clean()
    clock.t += dt
    frame, second = sim.acquire_with_clean()
    window = cv2.createHanningWindow((128, 128), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(first.astype(np.float64), second.astype(np.float64), window)
    # The specimen point under the centre moves by +drift·t, so the content moves by −drift·t.
    assert dx == pytest.approx(-drift_x * dt / pixel_nm, abs=0.2)
    assert dy == pytest.approx(-drift_y * dt / pixel_nm, abs=0.2)
    assert (frame.state.stage_x_um, frame.state.stage_y_um) == (0.0, 0.0)  # encoder sees none
    # The drifted frame is the frame of a stage moved by drift·t without drift.
    still, _ = make_sim(
        SEMConfig(
            frame_shape=(128, 128),
            texture=texture,
            texture_pixel_nm=pixel_nm,
            start_stage_x_um=drift_x * dt * 1e-3,
            start_stage_y_um=drift_y * dt * 1e-3,
        )
    )
    _, moved = still.acquire_with_clean()
    assert np.allclose(second, moved, rtol=1e-4, atol=1.0)


def test_thermal_focus_drift() -> None:
    sim, clock = make_sim(SEMConfig(frame_shape=(32, 32), texture=FLAT, focus_drift_um_per_s=0.2))
    clock.t += 25.0
    assert sim.true_focus_wd_um() == pytest.approx(5000.0 + 0.2 * 25.0)
    frame = sim.acquire()
    assert frame.truth is not None
    assert frame.truth.defocus_um == pytest.approx(-5.0)


def test_wd_actuator_settles_over_settle_time() -> None:
    settle = 0.5
    sim, clock = make_sim(SEMConfig(frame_shape=(32, 32), texture=FLAT, settle_s=settle))
    state = sim.set_wd(5100.0, wait=False)
    assert (state.wd_um, state.wd_target_um, state.settled) == (5000.0, 5100.0, False)
    clock.t += 0.1
    # First-order lag reaching e⁻⁵ of the step at settle_s: time constant settle_s / 5.
    expected = 5100.0 - 100.0 * math.exp(-0.1 / (settle / 5))
    assert sim.state().wd_um == pytest.approx(expected)
    frame = sim.acquire()
    assert frame.truth is not None
    assert frame.truth.defocus_um == pytest.approx(expected - 5000.0)  # truth uses the actual WD
    clock.t += settle
    assert sim.state().settled and sim.state().wd_um == 5100.0
    before = clock.t
    state = sim.set_wd(5200.0)  # wait=True sleeps on the injected clock
    assert state.settled and state.wd_um == 5200.0
    assert clock.t - before == pytest.approx(settle)


def test_wd_backlash_after_reversal() -> None:
    sim, _ = make_sim(SEMConfig(frame_shape=(32, 32), texture=FLAT, backlash_um=2.0, settle_s=0.0))
    # Exact when approached from below, +backlash when approached from above; a reversal
    # smaller than the backlash does not move.
    for command, actual in (
        (5010.0, 5010.0),
        (5005.0, 5007.0),
        (5000.0, 5002.0),
        (5001.0, 5002.0),
        (5004.0, 5004.0),
    ):
        assert sim.set_wd(command).wd_um == pytest.approx(actual)


def test_wait_settled_fails_when_sleep_does_not_advance_the_clock() -> None:
    clock = FakeClock()
    sim = SimulatedSEM(
        SEMConfig(frame_shape=(32, 32), texture=FLAT), clock=clock, sleep=lambda _s: None
    )
    with pytest.raises(DeviceError, match="clock"):
        sim.set_wd(5010.0)


def test_paced_frames_take_rows_times_columns_times_dwell() -> None:
    cfg = SEMConfig(frame_shape=(100, 200), texture=FLAT, pace_frames=True, dwell_time_us=2.0)
    sim, clock = make_sim(cfg)
    before = clock.t
    sim.acquire()
    assert clock.t - before == pytest.approx(100 * 200 * 2.0e-6)


# -- specimens, textures, determinism, magnification ------------------------------------------


def test_frames_are_deterministic_under_a_seed() -> None:
    cfg = SEMConfig(frame_shape=(64, 64), family="grains", specimen_samples=256, seed=42)
    a, _ = make_sim(cfg)
    b, _ = make_sim(cfg)
    for _ in range(2):
        assert np.array_equal(a.acquire().pixels, b.acquire().pixels)
    other, _ = make_sim(
        SEMConfig(frame_shape=(64, 64), family="grains", specimen_samples=256, seed=43)
    )
    assert not np.array_equal(a.acquire().pixels, other.acquire().pixels)


def test_texture_from_array_and_from_file(tmp_path) -> None:
    image = (random_texture(2) * 255).astype(np.uint8)
    path = tmp_path / "texture.png"
    assert cv2.imwrite(str(path), image)
    from_array, _ = make_sim(SEMConfig(frame_shape=(64, 64), texture=image))
    from_file, _ = make_sim(SEMConfig(frame_shape=(64, 64), texture=path))
    a, b = from_array.acquire().pixels, from_file.acquire().pixels
    assert np.array_equal(a, b) and a.std() > 0
    with pytest.raises(ValueError, match="cannot read texture"):
        SimulatedSEM(SEMConfig(texture=tmp_path / "missing.png"))


@pytest.mark.parametrize("family", sorted(SPECIMEN_FAMILIES))
def test_every_family_renders(family: str) -> None:
    dtype = "uint8" if family in ("grains", "pores") else "uint16"
    cfg = SEMConfig(
        frame_shape=(96, 128),
        family=family,
        specimen_samples=512,
        dtype=dtype,
        gain_dn_per_e=1.0 if dtype == "uint8" else None,
        offset_dn=10.0 if dtype == "uint8" else None,
    )
    sim, _ = make_sim(cfg)
    frame, clean = sim.acquire_with_clean()
    assert frame.pixels.shape == (96, 128) and frame.pixels.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(clean)) and clean.std() > 0
    assert frame.pixels.std() > 0
    specimen = sim.specimen
    assert np.all(np.isfinite(specimen.height_nm)) and specimen.height_nm.std() > 0
    assert specimen.se_yield.min() > 0


def test_downsampling_is_anti_aliased() -> None:
    # A checkerboard at the 4 nm sample pitch: at 40 nm pixels every pixel averages 100 samples,
    # half bright and half dark, so the image is flat; at 4 nm it has full contrast.
    checker = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
    yields = {}
    for pixel_nm in (4.0, 40.0):
        cfg = SEMConfig(
            frame_shape=(64, 64),
            texture=checker,
            texture_pixel_nm=4.0,
            pixel_size_nm=pixel_nm,
            probe_fwhm_nm=0.0,
            offset_dn=0.0,
        )
        sim, _ = make_sim(cfg)
        _, clean = sim.acquire_with_clean()
        yields[pixel_nm] = clean / (sim.detector.gain_dn_per_e * cfg.dose_e_per_px)
    mean_yield = (0.05 + 1.0) / 2  # texture values 0 and 1 map to yields 0.05 and 1.0
    assert yields[40.0].mean() == pytest.approx(mean_yield, rel=0.01)
    assert yields[40.0].std() < 0.01 * mean_yield
    assert yields[4.0].std() > 10 * yields[40.0].std()  # the in-focus probe keeps the pattern


def test_magnification_changes_the_image(particles) -> None:
    sim, _ = make_sim(SEMConfig(frame_shape=(128, 128), pixel_size_nm=2.0), particles)
    _, fine = sim.acquire_with_clean()
    sim.set_pixel_size_nm(50.0)
    frame, coarse = sim.acquire_with_clean()
    assert frame.state.magnification == pytest.approx(127e-3 / (128 * 50e-9))
    # At 50 nm the 24 nm particles are averaged away; at 2 nm they are resolved.
    assert coarse.std() < 0.5 * fine.std()
    # Area averaging keeps the mean yield of the specimen.
    mean_dn = 1000.0 + sim.detector.gain_dn_per_e * 50.0 * float(particles.se_yield.mean())
    assert coarse.mean() == pytest.approx(mean_dn, rel=0.03)


def test_automatic_gain_keeps_the_mean_signal_in_range_at_any_dose(particles) -> None:
    # Automatic brightness/contrast: mean = offset + 20 % of the remaining range, whatever the
    # dose, so low doses use the range and high doses do not saturate.
    # (The field of view's mean yield differs a little from the whole specimen's: 10 %.)
    full, offset = 65535.0, 1000.0
    expected = offset + 0.2 * (full - offset)
    means = []
    for dose in (5.0, 50.0, 500.0):
        sim, _ = make_sim(SEMConfig(frame_shape=(128, 128), dose_e_per_px=dose), particles)
        _, clean = sim.acquire_with_clean()
        means.append(clean.mean())
        assert np.mean(sim.acquire().pixels == full) < 0.01
    assert means == pytest.approx([expected] * 3, rel=0.1)
    assert means == pytest.approx([means[0]] * 3, rel=0.001)  # the same image at every dose
    # Changing the dose re-applies it; blanking the beam (dose 0) leaves offset + read noise.
    sim.set_dose_e_per_px(20.0)
    assert sim.acquire_with_clean()[1].mean() == pytest.approx(means[0], rel=0.001)
    sim.set_dose_e_per_px(0.0)
    assert sim.acquire().pixels.mean() == pytest.approx(offset, abs=2 * sim.detector.gain_dn_per_e)
