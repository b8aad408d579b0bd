"""Atomic-resolution simulators: the physics their frames must show, checked against constants
of the materials and of counting, not against the simulators' own output."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scopeflow_lab.sim.atomic import multislice, parametric


def _peak_spacing_nm(patch: np.ndarray, pixel_nm: float, lo_nm: float, hi_nm: float) -> float:
    """The real-space period (nm) of the strongest Fourier peak between two spacings."""
    win = np.hanning(patch.shape[0])[:, None] * np.hanning(patch.shape[1])[None, :]
    power = np.abs(np.fft.fft2((patch - patch.mean()) * win)) ** 2
    ky = np.fft.fftfreq(patch.shape[0], d=pixel_nm)[:, None]
    kx = np.fft.fftfreq(patch.shape[1], d=pixel_nm)[None, :]
    k = np.hypot(kx, ky)
    band = (k > 1.0 / hi_nm) & (k < 1.0 / lo_nm)
    i = np.argmax(np.where(band, power, 0.0))
    return 1.0 / float(k.ravel()[i])


def test_parametric_hrtem_shows_gold_111_fringes_and_conserves_the_dose():
    gold = parametric.MATERIALS["Au"]
    g = 1.0 / gold.spacings_nm[0]
    particle = parametric.Particle(0.0, 0.0, 2.5, 2.5, 0.0, "Au", ((g, 0.0, 0.0),), 0.9)
    config = parametric.AtomicConfig(
        frame_shape=(256, 256),
        pixel_size_nm=0.03,
        dose_e_per_a2=2000.0,
        defocus_nm=-10.0,
        cs_mm=0.0,
        support_thickness_nm=1.0,
        support_noise_rad=0.01,
        particles=(particle,),
        detector_blur_px=0.0,
        gain_dn_per_e=1.0,
        offset_dn=0.0,
    )
    image = parametric.render(config)
    frame = image.image.astype(np.float64)
    centre = frame[96:160, 96:160]
    spacing = _peak_spacing_nm(centre, 0.03, 0.15, 0.4)
    assert spacing == pytest.approx(0.2355, rel=0.06)
    # Far from the particle the thin support passes nearly all electrons: counts ≈ dose × area.
    corner = frame[:40, :40]
    expected = 2000.0 * (0.3**2)  # e⁻/Å² × (0.03 nm = 0.3 Å)²
    assert corner.mean() == pytest.approx(expected, rel=0.1)
    assert len(image.objects) == 1
    area = image.objects[0].mask.sum() * 0.03**2
    assert area == pytest.approx(math.pi * 2.5**2, rel=0.05)


def test_parametric_haadf_particles_outshine_the_support_as_z_to_the_1_7():
    particle = parametric.Particle(0.0, 0.0, 2.0, 2.0, 0.0, "Au", (), 0.0)
    config = parametric.AtomicConfig(
        modality="haadf",
        frame_shape=(256, 256),
        pixel_size_nm=0.05,
        dose_e_per_a2=1e6,
        support_thickness_nm=4.0,
        particles=(particle,),
        offset_dn=0.0,
        gain_dn_per_e=1.0,
        haadf_per_nm=0.005,
    )
    frame = parametric.render(config).image.astype(np.float64)
    centre = frame[124:132, 124:132].mean()  # 4 nm of gold through the middle
    support = frame[:40, :40].mean()  # 4 nm of carbon
    assert centre / support == pytest.approx((79 / 6) ** 1.7, rel=0.25)


def test_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="hrtem or haadf"):
        parametric.render(parametric.AtomicConfig(modality="sem"))


def test_multislice_gold_in_100_shows_its_200_planes_and_its_footprint():
    frame = multislice.MultisliceFrame(
        frame_shape=(192, 192),
        pixel_size_nm=0.03,
        dose_e_per_a2=5000.0,
        defocus_nm=-5.0,
        cs_um=0.0,
        astigmatism_nm=0.0,
        support_nm=1.0,
        particles=(("Au", 2.0, 2.88, 2.88, "100"),),
        seed=3,
    )
    image = multislice.render(frame)
    pixels = image.image.astype(np.float64)
    spacing = _peak_spacing_nm(pixels[64:128, 64:128], 0.03, 0.16, 0.4)
    # [100] projection of FCC: {200} planes, a/2 apart (the {220} at a/(2√2) are finer).
    assert spacing == pytest.approx(multislice.LATTICE_NM["Au"] / 2.0, rel=0.06)
    (particle,) = image.objects
    area = particle.mask.sum() * 0.03**2
    # Faceted sphere of radius 2 nm: between the {100}-cut square and the full disk.
    assert math.pi * 2.0**2 * 0.6 < area <= math.pi * 2.05**2
    # No specimen beyond 1 nm of carbon around it: the mean count is the dose per pixel.
    assert pixels[:30, :30].mean() == pytest.approx(5000.0 * 0.09, rel=0.1)


def test_multislice_haadf_is_brighter_on_platinum_than_on_palladium():
    def centre_signal(material: str) -> float:
        frame = multislice.MultisliceFrame(
            modality="haadf",
            frame_shape=(128, 128),
            pixel_size_nm=0.05,
            dose_e_per_a2=1e5,
            support_nm=1.0,
            particles=((material, 1.5, 3.2, 3.2, "random"),),
            seed=5,
        )
        pixels = multislice.render(frame).image.astype(np.float64) - 1000.0
        return float(pixels[54:74, 54:74].mean())

    # Same size and lattice to within 1 %: the signal goes as Z^1.64 (78 vs 46 → 2.4×).
    assert centre_signal("Pt") / centre_signal("Pd") == pytest.approx((78 / 46) ** 1.64, rel=0.3)


@pytest.mark.parametrize("modality,dose", [("hrtem", 200.0), ("haadf", 1e4)])
def test_multislice_expected_frame_is_the_mean_of_the_counted_one(modality, dose):
    """The noise-free expectation a denoiser is scored against: the counted frame scatters
    around it by shot noise (Poisson: the HRTEM residual's variance is about its mean, less
    what the pixel MTF takes), with no bias."""
    frame = multislice.test_frame(41, modality, dose, 0.03, (128, 128))
    im = multislice.render(frame)
    noisy = im.image.astype(np.float64)
    expected = im.attributes["expected"].astype(np.float64)
    residual = noisy - expected
    assert abs(residual.mean()) < 0.01 * expected.mean()
    if modality == "hrtem":
        # Poisson variance = mean, of which the pixel's sinc MTF passes (∫ sinc²)² ≈ 0.60.
        assert residual.var() == pytest.approx(0.60 * expected.mean(), rel=0.15)
    else:
        # PMT: N ~ Poisson(λ) electrons times one gamma(4, 6.25) gain G per pixel (E[G] = 25,
        # Var G = 156.25 DN²), plus 6 DN of read noise: Var(NG) = λ E[G²] + λ² Var G, with
        # λ = (expected − 1000 DN offset) / 25 DN per electron.
        lam = (expected - 1000.0) / 25.0
        predicted = float(np.mean(lam * 781.25 + lam**2 * 156.25)) + 36.0
        assert residual.var() == pytest.approx(predicted, rel=0.15)


def test_the_particle_bench_quick_run_scores_every_condition(tmp_path):
    """``scopeflow bench particles --quick``: one small frame per row, every row scored by the
    shipped detector and the baseline, the held-out multislice rows marked held out."""
    import json

    from scopeflow_lab.bench.particles import run_particles_bench

    out = tmp_path / "particles.json"
    assert run_particles_bench(json_path=str(out), quick=True, progress=lambda _: None) == 0
    report = json.loads(out.read_text())
    rows = {r["condition"]: r for r in report["rows"]}
    assert len(rows) == 11
    held = [name for name, r in rows.items() if r["held_out"]]
    assert sum("multislice" in name for name in held) == 5
    assert all(r["frames"] >= 1 and 0.0 <= r["f1_iou50"] <= 1.0 for r in rows.values())
    assert all(r["frame_ms_median"] > 0 for r in rows.values())
