"""Physics of the simulated in-situ (liquid-cell) TEM video: projected thickness, Beer–Lambert
counts, Poisson noise and the transfer function, motion laws (Brownian, sub-diffusive, confined),
growth and coalescence, decoys, ground truth, the camera's clock, limits and determinism.

Expected values come from the model's formulas (Beer–Lambert with the λ values of DESIGN §5,
Poisson statistics, the Einstein/OU/power-law MSDs, volume conservation), never from earlier runs
of the code. Clocks are fakes; nothing reads wall time.
"""

from __future__ import annotations

import itertools
import json
import math

import cv2
import numpy as np
import pytest

from scopeflow.devices.limits import guard
from scopeflow.devices.protocols import Microscope
from scopeflow.errors import DeviceError, LimitError
from scopeflow_lab.sim.insitu import (
    InSituConfig,
    InSituVideoSource,
    ParticleSpec,
    Population,
    Shape,
    SimulatedInSituCamera,
    defocus_transfer,
    electron_wavelength_nm,
)
from scopeflow_lab.sim.insitu.particles import track_ids
from scopeflow_lab.sim.truth import AnnotatedImage, DatasetSource

from fakes import FakeClock

WATER_NM, SINX_NM, LAMBDA_WATER_NM, LAMBDA_SINX_NM = 150.0, 100.0, 185.0, 144.0
COCO_KEYS = {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd"}


def beer_lambert(
    dose: float,
    t_particle_nm: float = 0.0,
    lambda_particle_nm: float = 40.0,
    water_nm: float = WATER_NM,
) -> float:
    """Mean counts through a particle that displaces its thickness of water (Yao et al. 2020)."""
    return dose * math.exp(
        -(
            t_particle_nm / lambda_particle_nm
            + (water_nm - t_particle_nm) / LAMBDA_WATER_NM
            + SINX_NM / LAMBDA_SINX_NM
        )
    )


def quiet(**overrides) -> InSituConfig:
    """A field with only the particles given: no random particles, decoys, drift or rotation."""
    settings = dict(
        frame_shape=(128, 128),
        particle_density_per_um2=0.0,
        decoy_density_per_um2=0.0,
        drift_x_nm_per_s=0.0,
        drift_y_nm_per_s=0.0,
        rotation_rad2_per_s=0.0,
    )
    settings.update(overrides)
    return InSituConfig(**settings)


def per_um2(in_view: float, frame_px: int, pixel_nm: float = 0.5) -> float:
    """Areal density that puts ``in_view`` objects, on average, in a square field."""
    return in_view / (frame_px * pixel_nm * 1e-3) ** 2


def frames(config: InSituConfig, n: int = 1, ideal: bool = False) -> list[AnnotatedImage]:
    return list(InSituVideoSource(config, ideal=ideal).images(n))


def still(shape: Shape, **extra) -> ParticleSpec:
    return ParticleSpec(shape, "brownian", 0.0, **extra)


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())


def particles_by_id(sample: AnnotatedImage) -> dict[int, dict]:
    return {
        o.attributes["track_id"]: o.attributes for o in sample.objects if o.category == "particle"
    }


# -- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "volume_nm3", "area_nm2", "max_thickness_nm"),
    [
        # sphere r = s; rod r = s/2, length = aspect·s; cube edge 1.6 s; prism edge 3 s, height s
        (Shape("sphere", 10.0), 4 / 3 * math.pi * 10.0**3, math.pi * 100.0, 20.0),
        (
            Shape("rod", 8.0, 3.5, 0.7),
            math.pi * 16.0 * 20.0 + 4 / 3 * math.pi * 64.0,
            8.0 * 20.0 + math.pi * 16.0,
            8.0,
        ),
        (Shape("cube", 10.0, angle_rad=0.3), 16.0**3, 16.0**2, 16.0),
        (
            Shape("prism", 6.0, angle_rad=1.1),
            math.sqrt(3) / 4 * 18.0**2 * 6.0,
            math.sqrt(3) / 4 * 18.0**2,
            6.0,
        ),
    ],
)
def test_projected_thickness_integrates_to_the_volume(
    shape: Shape, volume_nm3: float, area_nm2: float, max_thickness_nm: float
) -> None:
    pixel_nm = 0.2
    half = shape.bound_radius_nm() + 2.0
    axis = np.arange(-half, half + pixel_nm, pixel_nm, dtype=np.float32)
    thickness, inside = shape.thickness_nm(axis[None, :], axis[:, None], pixel_nm)
    assert thickness.sum() * pixel_nm**2 == pytest.approx(volume_nm3, rel=0.01)
    assert inside.sum() * pixel_nm**2 == pytest.approx(area_nm2, rel=0.02)
    assert thickness.max() == pytest.approx(max_thickness_nm, rel=0.01)
    assert shape.volume_nm3() == pytest.approx(volume_nm3)
    assert not inside[0].any() and not inside[-1].any()  # the bound holds the projection


# -- Beer–Lambert, noise, transfer function ---------------------------------------------------


@pytest.mark.parametrize("lambda_nm", [20.0, 80.0])
@pytest.mark.parametrize("edge_nm", [10.0, 40.0])
def test_ideal_counts_follow_beer_lambert_through_a_cube(edge_nm: float, lambda_nm: float) -> None:
    dose = 2000.0
    cube = Shape("cube", edge_nm / 1.6)  # face-on: a slab of thickness = edge
    cfg = quiet(
        dose_e_per_px=dose, lambda_particle_nm=lambda_nm, particles=((still(cube), (0.0, 0.0)),)
    )
    sample = frames(cfg, ideal=True)[0]
    image = sample.image.astype(np.float64)
    (obj,) = sample.objects
    interior = cv2.erode(obj.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    outside = ~cv2.dilate(obj.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    # Ideal frames are the expectation rounded to whole counts (gain 1, offset 0).
    assert np.abs(image[interior] - beer_lambert(dose, edge_nm, lambda_nm)).max() <= 0.5 + 1e-3
    assert np.abs(image[outside] - beer_lambert(dose)).max() <= 0.5 + 1e-3
    assert obj.attributes["thickness_nm"] == pytest.approx(edge_nm)


def test_ideal_counts_follow_the_sphere_thickness_profile() -> None:
    dose, radius, lam, pixel = 3000.0, 12.0, 30.0, 0.5
    # Put the centre on a pixel centre: the 128² field's centre lies at pixel 63.5.
    cfg = quiet(
        dose_e_per_px=dose,
        lambda_particle_nm=lam,
        pixel_size_nm=pixel,
        particles=((still(Shape("sphere", radius)), (0.25, 0.25)),),
    )
    image = frames(cfg, ideal=True)[0].image.astype(np.float64)
    rows, cols = np.mgrid[:128, :128]
    rho = np.hypot(cols - 64, rows - 64) * pixel
    thickness = 2.0 * np.sqrt(np.clip(radius**2 - rho**2, 0.0, None))
    expected = np.vectorize(lambda t: beer_lambert(dose, t, lam))(thickness)
    assert np.abs(image - expected).max() <= 0.5 + 1e-3
    assert image[64, 64] == pytest.approx(beer_lambert(dose, 2 * radius, lam), abs=0.5)


def test_noisy_mean_counts_follow_beer_lambert() -> None:
    dose, edge, lam = 5000.0, 40.0, 40.0
    cfg = quiet(
        frame_shape=(192, 192),
        dose_e_per_px=dose,
        lambda_particle_nm=lam,
        particles=((still(Shape("cube", edge / 1.6)), (0.0, 0.0)),),
    )
    sample = frames(cfg)[0]  # Poisson noise and the transfer function on
    image = sample.image.astype(np.float64)
    mask = sample.objects[0].mask.astype(np.uint8)
    interior = cv2.erode(mask, np.ones((13, 13), np.uint8)).astype(bool)
    outside = ~cv2.dilate(mask, np.ones((13, 13), np.uint8)).astype(bool)
    for region, mean in ((interior, beer_lambert(dose, edge, lam)), (outside, beer_lambert(dose))):
        # T(0) = 1 keeps the mean; the error of a regional mean is ≈ sqrt(μ / n).
        assert image[region].mean() == pytest.approx(mean, abs=5 * math.sqrt(mean / region.sum()))


@pytest.mark.parametrize("dose", [500.0, 2000.0, 5000.0])
def test_noise_is_poisson_at_the_set_dose(dose: float) -> None:
    cfg = quiet(frame_shape=(256, 256), dose_e_per_px=dose, transfer=False)
    counts = frames(cfg)[0].image.astype(np.float64)
    mean = beer_lambert(dose)
    assert counts.mean() == pytest.approx(mean, abs=5 * math.sqrt(mean / counts.size))
    assert np.allclose(counts, np.round(counts))
    assert counts.var() == pytest.approx(mean, rel=0.03)  # Poisson: variance = mean


def test_camera_gain_and_offset_scale_the_poisson_noise() -> None:
    dose, gain, offset = 2000.0, 2.5, 100.0
    cfg = quiet(
        frame_shape=(256, 256),
        dose_e_per_px=dose,
        transfer=False,
        gain_dn_per_e=gain,
        offset_dn=offset,
    )
    dn = frames(cfg)[0].image.astype(np.float64)
    mean = beer_lambert(dose)
    assert dn.mean() - offset == pytest.approx(gain * mean, rel=0.002)
    # var(DN) = gain² · var(counts) + rounding to whole DN (1/12).
    assert dn.var() == pytest.approx(gain**2 * mean + 1 / 12, rel=0.03)


def mtf(q: np.ndarray, q_half: float = 0.25, floor: float = 0.1) -> np.ndarray:
    return floor + (1 - floor) / (1 + (q / q_half) ** 2)


def test_transfer_function_shapes_the_noise_spectrum() -> None:
    dose, n = 2000.0, 256
    cfg = quiet(frame_shape=(n, n), dose_e_per_px=dose)
    image, second = (f.image.astype(np.float64) for f in frames(cfg, n=2))
    mean = beer_lambert(dose)
    q = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    assert image.mean() == pytest.approx(mean, rel=0.002)
    # White Poisson noise of variance μ leaves the filter with variance μ · mean(T²) (Parseval);
    # rounding to whole DN adds 1/12.
    assert image.var() == pytest.approx(mean * np.mean(mtf(q) ** 2) + 1 / 12, rel=0.04)
    power = sum(np.abs(np.fft.fft2(f - f.mean())) ** 2 / f.size for f in (image, second)) / 2
    for q0 in (0.05, 0.15, 0.25, 0.4):
        ring = np.abs(q - q0) < 0.03
        assert power[ring].mean() == pytest.approx(mean * mtf(q0) ** 2 + 1 / 12, rel=0.1)


def test_electron_wavelength_and_defocus_transfer() -> None:
    # Relativistic wavelengths: 2.508 pm at 200 kV, 1.969 pm at 300 kV (textbook values).
    assert electron_wavelength_nm(200.0) == pytest.approx(2.508e-3, rel=1e-3)
    assert electron_wavelength_nm(300.0) == pytest.approx(1.969e-3, rel=1e-3)
    q = np.linspace(0.0, 2.0, 201)
    assert np.allclose(defocus_transfer(q, 0.0, 2.508e-3, 0.5), 1.0)
    # cos(π λ Δz q²) has its first zero at q = 1/sqrt(2 λ Δz).
    dz_um, lam = 1.0, 2.508e-3
    q0 = 1.0 / math.sqrt(2.0 * lam * dz_um * 1e3)
    assert defocus_transfer(np.array([q0]), dz_um, lam, 0.0)[0] == pytest.approx(0.0, abs=1e-9)


# -- ground truth ------------------------------------------------------------------------------


def isolated_particles(sample: AnnotatedImage, gap_px: int = 4) -> list:
    """Particles fully in the frame whose (dilated) masks touch no other object."""
    kernel = np.ones((2 * gap_px + 1, 2 * gap_px + 1), np.uint8)
    out = []
    for obj in sample.objects:
        if obj.category != "particle" or obj.attributes["truncated"]:
            continue
        grown = cv2.dilate(obj.mask.astype(np.uint8), kernel).astype(bool)
        if all(not (grown & other.mask).any() for other in sample.objects if other is not obj):
            out.append((obj, grown))
    return out


def test_ground_truth_centroids_match_the_rendered_particles() -> None:
    cfg = InSituConfig(
        frame_shape=(384, 384),
        particle_density_per_um2=per_um2(16, 384),
        decoy_density_per_um2=0.0,
        seed=7,
    )
    checked = 0
    for ideal in (True, False):
        sample = frames(cfg, n=4, ideal=ideal)[-1]
        background = sample.attributes["background_counts"]
        image = sample.image.astype(np.float64)
        for obj, _ in isolated_particles(sample):
            x, y = obj.attributes["centroid_xy_px"]
            # The footprint is symmetric about the track position.
            assert mask_centroid(obj.mask) == pytest.approx((x, y), abs=0.5)
            # So is the intensity dip (background − counts) around it.
            region = cv2.dilate(obj.mask.astype(np.uint8), np.ones((5, 5), np.uint8))
            rows, cols = np.nonzero(region)
            weight = background - image[rows, cols]
            dip_xy = ((weight * cols).sum() / weight.sum(), (weight * rows).sum() / weight.sum())
            if ideal:
                assert dip_xy == pytest.approx((x, y), abs=0.1)
            else:
                # Noise of variance μ per pixel (T(0) = 1 for slowly varying weights) moves the
                # weighted centroid by σ = sqrt(μ Σ (c − x)²) / Σ w: allow 4σ.
                sx = math.sqrt(background * ((cols - x) ** 2).sum()) / weight.sum()
                sy = math.sqrt(background * ((rows - y) ** 2).sum()) / weight.sum()
                assert abs(dip_xy[0] - x) < 4 * sx + 0.1 and abs(dip_xy[1] - y) < 4 * sy + 0.1
            checked += 1
    assert checked >= 12


def test_decoy_streaks_are_centred_on_their_truth() -> None:
    cfg = InSituConfig(
        frame_shape=(384, 384),
        particle_density_per_um2=0.0,
        decoy_density_per_um2=per_um2(5, 384),
        seed=1,
    )
    checked = 0
    for sample in frames(cfg, n=3, ideal=True):
        background = sample.attributes["background_counts"]
        image = sample.image.astype(np.float64)
        for obj in sample.objects:
            region = cv2.dilate(obj.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            if obj.attributes["truncated"] or any(
                (region & other.mask).any() for other in sample.objects if other is not obj
            ):
                continue
            rows, cols = np.nonzero(region)
            change = image[rows, cols] - background
            # A bubble displaces water (brighter); a fast gold particle absorbs (darker).
            bright = obj.attributes["kind"] == "bubble"
            assert (change.sum() > 0) == bright
            weight = np.abs(change)
            dip_xy = ((weight * cols).sum() / weight.sum(), (weight * rows).sum() / weight.sum())
            assert dip_xy == pytest.approx(obj.attributes["centroid_xy_px"], abs=0.25)
            checked += 1
    assert checked >= 8


def test_track_ids_persist_and_attributes_are_consistent() -> None:
    cfg = InSituConfig(
        frame_shape=(256, 256),
        particle_density_per_um2=per_um2(10, 256),
        decoy_density_per_um2=per_um2(4, 256),
        seed=2,
        diffusion_spread=0.0,
        motion_weights=(("brownian", 1.0),),
    )
    samples = frames(cfg, n=4, ideal=True)
    p = cfg.pixel_size_nm
    for k, sample in enumerate(samples):
        assert sample.attributes["frame_index"] == k
        assert sample.attributes["time_s"] == pytest.approx(k / cfg.fps)
        ids = [o.attributes["track_id"] for o in sample.objects]
        assert len(ids) == len(set(ids))
        for obj in sample.objects:
            assert obj.category in ("particle", "decoy")
            assert obj.mask.shape == cfg.frame_shape and obj.mask.dtype == bool and obj.mask.any()
            assert not COCO_KEYS & obj.attributes.keys()
        assert not COCO_KEYS & sample.attributes.keys()
        json.dumps(sample.attributes)
        json.dumps([o.attributes for o in sample.objects])
    # A particle keeps its id from frame to frame and moves by a Brownian step (< 6σ per axis).
    sigma_px = math.sqrt(2 * cfg.diffusion_nm2_per_s / cfg.fps) / p
    common = 0
    for before, after in itertools.pairwise(samples):
        a, b = particles_by_id(before), particles_by_id(after)
        for tid in a.keys() & b.keys():
            step = np.subtract(b[tid]["centroid_xy_px"], a[tid]["centroid_xy_px"])
            assert np.all(np.abs(step) < 6 * sigma_px)
            assert b[tid]["shape"] == a[tid]["shape"]
            common += 1
    assert common >= 10


def test_frames_are_deterministic_under_a_seed() -> None:
    dense = dict(
        frame_shape=(128, 128),
        particle_density_per_um2=per_um2(6, 128),
        decoy_density_per_um2=per_um2(3, 128),
    )
    cfg = InSituConfig(**dense, seed=5)
    a, b = frames(cfg, n=3), frames(cfg, n=3)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image)
        assert x.attributes == y.attributes
        assert [o.attributes for o in x.objects] == [o.attributes for o in y.objects]
        assert all(
            np.array_equal(o.mask, p.mask) for o, p in zip(x.objects, y.objects, strict=True)
        )
    other = frames(InSituConfig(**dense, seed=6))
    assert not np.array_equal(a[0].image, other[0].image)
    # Noise has its own stream: ideal and noisy videos share their dynamics.
    ideal = frames(cfg, n=3, ideal=True)
    assert [o.attributes for o in ideal[2].objects] == [o.attributes for o in a[2].objects]


# -- motion laws -------------------------------------------------------------------------------


def trajectories(
    spec: ParticleSpec, n_particles: int, steps: int, dt_s: float, seed: int = 0
) -> np.ndarray:
    """Unwrapped positions (steps + 1, particles, 2) without contacts."""
    rng = np.random.default_rng(seed)
    pop = Population(1e7, rng, track_ids(), coalescence=False)
    for xy in rng.uniform(-1e6, 1e6, (n_particles, 2)):
        pop.add(spec, (float(xy[0]), float(xy[1])))
    out = [pop.positions_nm()]
    for _ in range(steps):
        pop.step(dt_s)
        out.append(pop.positions_nm())
    return np.array(out)


def time_averaged_msd(path: np.ndarray, lags: list[int]) -> np.ndarray:
    return np.array([np.mean(np.sum((path[lag:] - path[:-lag]) ** 2, axis=-1)) for lag in lags])


def test_brownian_msd_grows_as_4_d_t() -> None:
    d, dt = 200.0, 0.1
    path = trajectories(ParticleSpec(Shape("sphere", 5.0), "brownian", d), 400, 200, dt)
    lags = [1, 2, 5, 10, 20, 40]
    msd = time_averaged_msd(path, lags)
    expected = 4.0 * d * np.array(lags) * dt  # Einstein, in 2D
    assert msd == pytest.approx(expected, rel=0.08)
    slope = np.polyfit(np.log(lags), np.log(msd), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.05)


def test_subdiffusive_msd_grows_as_t_to_the_alpha() -> None:
    k, alpha, dt = 100.0, 0.5, 0.1
    spec = ParticleSpec(Shape("sphere", 5.0), "subdiffusive", k, alpha=alpha)
    path = trajectories(spec, 400, 200, dt, seed=1)
    lags = [1, 2, 5, 10, 20, 50]
    msd = time_averaged_msd(path, lags)
    slope = np.polyfit(np.log(lags), np.log(msd), 1)[0]
    assert slope == pytest.approx(alpha, abs=0.04)
    expected = 4.0 * k * (np.array(lags) * dt) ** alpha  # MSD = 4 K t^α
    assert msd == pytest.approx(expected, rel=0.08)


def test_confined_msd_saturates_at_the_confinement() -> None:
    d, spread, dt = 100.0, 5.0, 0.1
    spec = ParticleSpec(Shape("sphere", 2.0), "confined", d, confinement_nm=spread)
    path = trajectories(spec, 400, 200, dt, seed=2)
    lags = [1, 3, 50]
    tau = spread**2 / d  # OU relaxation time
    expected = 4 * spread**2 * (1 - np.exp(-np.array(lags) * dt / tau))
    assert time_averaged_msd(path, lags) == pytest.approx(expected, rel=0.08)


# -- growth, coalescence, decoys ------------------------------------------------------------------


def test_growing_spheres_coalesce_into_one_track() -> None:
    r0, growth, gap, dt = 5.0, 1.0, 12.05, 0.1
    pop = Population(1e4, np.random.default_rng(0), track_ids())
    spec = ParticleSpec(Shape("sphere", r0), "brownian", 0.0, growth_nm_per_s=growth)
    a = pop.add(spec, (0.0, 0.0))
    b = pop.add(spec, (gap, 0.0))
    # They touch once 2 r(t) > gap: r(t) = r0 + g t exceeds 6.025 nm during step 11.
    for _ in range(10):
        assert pop.step(dt) == []
    events = pop.step(dt)
    assert [e["type"] for e in events] == ["coalescence"]
    assert (events[0]["survivor"], events[0]["absorbed"]) == (a, b)
    (survivor,) = pop.particles()
    r = r0 + 11 * dt * growth
    assert survivor.track_id == a
    assert survivor.shape.scale_nm == pytest.approx((2 * r**3) ** (1 / 3))  # volume kept
    assert survivor.xy_nm == pytest.approx((gap / 2, 0.0))  # centre of mass
    assert pop.ended()[b] == {"time_s": pytest.approx(1.1), "reason": "coalesced", "merged_into": a}


def test_the_larger_particle_absorbs_the_smaller_at_the_centre_of_mass() -> None:
    pop = Population(1e4, np.random.default_rng(0), track_ids())
    small = pop.add(still(Shape("sphere", 4.0)), (0.0, 0.0))
    big = pop.add(still(Shape("sphere", 6.0)), (9.9, 0.0))
    (event,) = pop.step(0.1)
    assert (event["survivor"], event["absorbed"]) == (big, small)
    (survivor,) = pop.particles()
    v_small, v_big = 4.0**3, 6.0**3  # ∝ r³
    assert survivor.shape.scale_nm == pytest.approx((v_small + v_big) ** (1 / 3))
    assert survivor.xy_nm[0] == pytest.approx(9.9 * v_big / (v_small + v_big))


def test_coalescence_ends_a_track_in_the_video_ground_truth() -> None:
    spec = ParticleSpec(Shape("sphere", 5.0), "brownian", 0.0, growth_nm_per_s=1.0)
    cfg = quiet(particles=((spec, (-6.025, 0.0)), (spec, (6.025, 0.0))))
    samples = frames(cfg, n=14, ideal=True)
    ids = [sorted(particles_by_id(s)) for s in samples]
    assert ids[:11] == [[1, 2]] * 11
    assert ids[11:] == [[1]] * 3  # track 2 ends at frame 11 and never comes back
    assert samples[11].attributes["events"] == [
        {"type": "coalescence", "survivor": 1, "absorbed": 2, "time_s": pytest.approx(1.1)}
    ]
    merged = next(o for o in samples[12].objects if o.category == "particle")
    assert mask_centroid(merged.mask) == pytest.approx((63.5, 63.5), abs=0.5)
    r = 5.0 + 1.2  # grown for 1.2 s at frame 12
    assert merged.attributes["radius_nm"] == pytest.approx((2 * (r - 0.1) ** 3) ** (1 / 3) + 0.1)


def test_particles_grow_then_dissolve() -> None:
    r0, rate = 3.05, -1.0
    spec = ParticleSpec(Shape("sphere", r0), "brownian", 0.0, growth_nm_per_s=rate)
    samples = frames(quiet(particles=((spec, (0.0, 0.0)),), min_size_nm=1.0), n=25, ideal=True)
    for k in range(0, 20, 5):
        (obj,) = samples[k].objects
        assert obj.attributes["radius_nm"] == pytest.approx(r0 + rate * k / 10.0)
    # r = 3.05 − t falls below 1 nm during step 21: the track ends with a "dissolved" event.
    ended = [k for k, s in enumerate(samples) if s.attributes["events"]]
    assert ended == [21]
    assert samples[21].attributes["events"][0]["type"] == "dissolved"
    assert all(not s.objects for s in samples[21:])


def test_decoys_move_faster_than_particles() -> None:
    d, speed, fps, turn = 50.0, 300.0, 10.0, 1.0
    cfg = InSituConfig(
        frame_shape=(256, 256),
        particle_density_per_um2=per_um2(10, 256),
        decoy_density_per_um2=per_um2(6, 256),
        seed=4,
        diffusion_nm2_per_s=d,
        diffusion_spread=0.0,
        fps=fps,
        motion_weights=(("brownian", 1.0),),
        decoy_speed_nm_per_s=speed,
        decoy_turn_rad2_per_s=turn,
        drift_x_nm_per_s=0.0,
        drift_y_nm_per_s=0.0,
    )
    samples = frames(cfg, n=8, ideal=True)
    p, dt = cfg.pixel_size_nm, 1.0 / fps
    particle_steps, decoy_steps, decoy_ratios = [], [], []
    for before, after in itertools.pairwise(samples):
        old = {o.attributes["track_id"]: o.attributes for o in before.objects}
        for obj in after.objects:
            now, prev = obj.attributes, old.get(obj.attributes["track_id"])
            if prev is None or now["truncated"] or prev["truncated"]:
                continue
            step = float(np.hypot(*np.subtract(now["centroid_xy_px"], prev["centroid_xy_px"])))
            if obj.category == "particle":
                particle_steps.append(step)
            else:
                decoy_steps.append(step)
                decoy_ratios.append(step / (now["speed_nm_per_s"] * dt / p))
    # Brownian steps follow a Rayleigh law of mean sqrt(π D dt).
    assert np.mean(particle_steps) == pytest.approx(math.sqrt(math.pi * d * dt) / p, rel=0.25)
    # A decoy's streak midpoint moves by speed·dt·cos(Δθ/2), Δθ ~ N(0, 2 D_r dt):
    # on average speed·dt·exp(−D_r dt / 4).
    assert np.mean(decoy_ratios) == pytest.approx(math.exp(-turn * dt / 4), rel=0.05)
    assert min(decoy_ratios) > 0.6 and max(decoy_ratios) < 1.0 + 1e-6  # |Δθ| < 4σ
    assert min(decoy_steps) > 3 * np.mean(particle_steps)
    assert len(decoy_ratios) >= 5 and len(particle_steps) >= 20


# -- camera: clock, sizes, protocol, limits, stage and drift ------------------------------------


def test_camera_frame_index_follows_its_clock() -> None:
    cfg = InSituConfig(
        frame_shape=(128, 128),
        particle_density_per_um2=per_um2(6, 128),
        decoy_density_per_um2=0.0,
        fps=10.0,
        seed=3,
    )
    clock = FakeClock()
    cam = SimulatedInSituCamera(cfg, clock=clock, sleep=clock.sleep)
    assert cam.frame_index == -1
    clock.t += 5.0  # the stream starts with the first acquire, not at construction
    _, first = cam.acquire_annotated()
    assert first.attributes["frame_index"] == 0 and cam.frame_index == 0
    clock.t += 1.0  # 1 s at 10 fps: ten frame periods, whatever the number of calls
    _, later = cam.acquire_annotated()
    assert later.attributes["frame_index"] == 10 and later.attributes["time_s"] == 1.0
    before = clock.t
    cam.acquire()  # the next frame is not due yet: the camera waits one period for it
    assert cam.frame_index == 11 and clock.t - before == pytest.approx(0.1)
    clock.t += 0.35  # a slow consumer misses frames 12 and 13
    cam.acquire()
    assert cam.frame_index == 14
    # The dynamics follow time, not calls: frame 10 equals the video's frame 10.
    video = frames(cfg, n=11, ideal=True)[10]
    assert particles_by_id(later) == particles_by_id(video)


def test_camera_waiting_on_a_stopped_clock_raises() -> None:
    clock = FakeClock()
    cam = SimulatedInSituCamera(quiet(), clock=clock, sleep=lambda _s: None)
    cam.acquire()
    with pytest.raises(DeviceError, match="clock"):
        cam.acquire()


@pytest.mark.parametrize("size", [512, 1024, 2048, 4096])
def test_frame_sizes_and_dtype(size: int) -> None:
    clock = FakeClock()
    cam = SimulatedInSituCamera(
        InSituConfig(frame_shape=(size, size), seed=1), clock=clock, sleep=clock.sleep
    )
    frame = cam.acquire()
    assert frame.pixels.shape == (size, size) and frame.pixels.dtype == np.uint16
    # Mostly liquid: the median is the background's Beer–Lambert count.
    assert np.median(frame.pixels) == pytest.approx(beer_lambert(2000.0), rel=0.05)


def test_is_a_microscope_with_state_and_limits() -> None:
    cfg = quiet(
        fps=25.0,
        pixel_size_nm=0.4,
        detector_pixel_um=15.0,
        dose_e_per_px=1500.0,
        max_wd_step_um=20.0,
    )
    clock = FakeClock()
    cam = SimulatedInSituCamera(cfg, clock=clock, sleep=clock.sleep)
    assert isinstance(cam, Microscope)
    state = cam.state()
    assert state.exposure_s == pytest.approx(1 / 25.0)
    assert state.pixel_size_nm == 0.4 and state.dose_e_per_px == 1500.0
    assert state.magnification == pytest.approx(15e3 / 0.4)  # detector pitch / pixel size
    for bad in (60.0, -60.0, float("nan")):
        with pytest.raises(LimitError):
            guard(cam).set_wd(bad)
    with pytest.raises(LimitError):  # inside the limits but a larger step than allowed
        guard(cam).set_wd(30.0)
    with pytest.raises(LimitError):
        guard(cam).move_stage(2000.0, 0.0)
    for dose in (-1.0, 1e6, float("inf")):
        with pytest.raises(LimitError):
            cam.set_dose_e_per_px(dose)
    assert cam.state() == state  # refused commands changed nothing
    assert cam.set_wd(2.0).wd_um == 2.0
    frame = cam.acquire()
    assert frame.truth is not None and frame.truth.defocus_um == pytest.approx(2.0)
    # Defocus transfers T(q = 0) = 1: the mean count is kept.
    assert frame.pixels.mean() == pytest.approx(beer_lambert(1500.0), rel=0.005)


def test_stage_moves_and_drift_shift_the_field() -> None:
    drift = (10.0, -5.0)  # nm/s
    cfg = quiet(
        frame_shape=(256, 256),
        particles=((still(Shape("cube", 6.0)), (0.0, 0.0)),),
        drift_x_nm_per_s=drift[0],
        drift_y_nm_per_s=drift[1],
    )
    clock = FakeClock()
    cam = SimulatedInSituCamera(cfg, clock=clock, sleep=clock.sleep)
    p, centre = cfg.pixel_size_nm, 127.5
    cam.acquire()  # the first acquire starts the stream: frame 0
    clock.t += 2.0
    _, sample = cam.acquire_annotated()
    assert sample.attributes["drift_nm"] == pytest.approx([20.0, -10.0])
    # The field moves with the drift, so the still particle moves the other way.
    expected = (centre - 20.0 / p, centre + 10.0 / p)
    (obj,) = sample.objects
    assert obj.attributes["centroid_xy_px"] == pytest.approx(expected)
    assert mask_centroid(obj.mask) == pytest.approx(expected, abs=0.5)
    cam.move_stage(0.010, 0.005)  # µm
    _, moved = cam.acquire_annotated()
    drift_px = np.array(drift) * moved.attributes["time_s"] / p
    expected = (centre - 10.0 / p - drift_px[0], centre - 5.0 / p - drift_px[1])
    assert moved.objects[0].attributes["centroid_xy_px"] == pytest.approx(expected)


# -- dataset source ------------------------------------------------------------------------------


def test_video_source_is_a_dataset_source_with_full_metadata() -> None:
    source = InSituVideoSource(InSituConfig(frame_shape=(128, 128)), seed=9, ideal=False)
    assert isinstance(source, DatasetSource) and source.name == "insitu"
    meta = json.loads(json.dumps(source.metadata()))
    assert meta["seed"] == 9
    settings = meta["simulator"]
    for key in (
        "dose_e_per_px",
        "lambda_particle_nm",
        "lambda_water_nm",
        "lambda_sinx_nm",
        "water_thickness_nm",
        "sinx_thickness_nm",
        "pixel_size_nm",
        "fps",
        "diffusion_nm2_per_s",
        "mtf_half_cycles_per_px",
        "mtf_floor",
    ):
        assert key in settings
    derived = meta["derived"]
    assert derived["background_transmission"] == pytest.approx(beer_lambert(1.0))
    # 2000 e⁻/px over (0.5 nm)² = 25 Å² in 0.1 s: 800 e⁻/Å²/s, inside Yao et al.'s 500–1500.
    assert derived["flux_e_per_a2_s"] == pytest.approx(800.0)
    assert all("diffusion_nm2_per_s" in t for t in meta["initial_tracks"])
    assert len(list(source.images(2))) == 2
