"""Annotated dataset source over the simulated optical flake chip: tiles centred near flakes,
with masks and per-object attributes (:class:`FlakeChipSource`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from scopeflow.optics.thinfilm import MATERIALS, WAVELENGTHS_NM, Substrate
from scopeflow.schemas.state import optical_depth_of_field_um
from scopeflow_lab.sim.optical.config import OpticalConfig
from scopeflow_lab.sim.optical.microscope import SimulatedOpticalMicroscope
from scopeflow_lab.sim.truth import AnnotatedImage


class _ManualClock:
    """A clock that moves only when slept on: dataset tiles take no wall time."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.0)


class FlakeChipSource:
    """Annotated chip tiles that contain flakes, for detector training and tests.

    Each image is a tile centred near a randomly chosen flake (offset up to 30 % of the field),
    focused at the true focus plus, unless ``ideal``, a uniform defocus within
    ± ``defocus_dof`` depths of field. Objects: every visible flake region (terraces apart),
    residue patch and dirt particle, with masks of the visible part and attributes (material,
    kind, layers, thickness_nm, expected_contrast_rgb [R, G, B], object_id, flake_id, oxide_nm,
    defocus_um, centre_um, area_px, truncated). Deterministic under ``seed``, which replaces
    ``config.seed``.
    """

    name = "flakes"

    def __init__(
        self,
        config: OpticalConfig | None = None,
        seed: int = 0,
        ideal: bool = False,
        defocus_dof: float = 1.0,
    ) -> None:
        base = config if config is not None else OpticalConfig()
        if ideal and config is None:  # 16 bits, so quantisation does not blur contrast checks
            base = dataclasses.replace(base, camera=dataclasses.replace(base.camera, bit_depth=16))
        self.config = dataclasses.replace(base, seed=int(seed), ideal=bool(ideal))
        self.seed = int(seed)
        self.defocus_dof = float(defocus_dof)
        clock = _ManualClock()
        #: The microscope the metadata describes; ``images`` runs a fresh one on the same chip.
        self.microscope = SimulatedOpticalMicroscope(self.config, clock=clock, sleep=clock.sleep)

    def metadata(self) -> dict[str, Any]:
        """Every physical parameter used, JSON-serialisable (units in the keys)."""
        cfg = self.config
        sim = self.microscope
        camera = sim.camera
        lam = np.array([450.0, 550.0, 650.0])
        n_ox, n_si = Substrate().indices(lam)

        def index_samples(values: np.ndarray) -> dict[str, list[float]]:
            return {
                f"{int(w)}nm": [float(v.real), float(-v.imag)]
                for w, v in zip(lam, values, strict=True)
            }

        oxide_0 = float(sim.chip.oxide_nm(0.0, 0.0))
        reference = {}
        for name in ("graphene", "hBN"):
            material = MATERIALS[name]
            reference[name] = {
                str(n): [
                    float(c)
                    for c in sim.expected_contrast_rgb(name, material.thickness_nm(n), oxide_0)
                ]
                for n in (1, 2, 3)
            }
        return {
            "source": self.name,
            "seed": self.seed,
            "ideal": cfg.ideal,
            "defocus_dof": self.defocus_dof,
            "chip": dataclasses.asdict(cfg.chip),
            "oxide_range_nm": list(cfg.chip.oxide_range_nm()),
            "spectrum": {
                **dataclasses.asdict(cfg.spectrum),
                "wavelengths_nm": [
                    float(WAVELENGTHS_NM[0]),
                    float(WAVELENGTHS_NM[-1]),
                    float(WAVELENGTHS_NM[1] - WAVELENGTHS_NM[0]),
                ],
                "channel_order": "RGB",
                "raw_response_rgb": [float(v) for v in cfg.spectrum.raw_response()],
            },
            "indices_n_k": {
                "SiO2": index_samples(n_ox),
                "Si": index_samples(n_si),
                **{name: index_samples(m.index(lam)) for name, m in MATERIALS.items()},
            },
            "index_sources": {
                "SiO2": "Malitson, JOSA 55, 1205 (1965), Sellmeier",
                "Si": "Green, Sol. Energ. Mat. Sol. Cells 92, 1305 (2008), tabulated",
                **{name: m.source for name, m in MATERIALS.items()},
            },
            "layer_thickness_nm": {
                name: m.layer_nm for name, m in MATERIALS.items() if name != "residue"
            },
            "contrast_rgb_at_chip_centre": {"oxide_nm": oxide_0, **reference},
            "optics": {
                "magnification": cfg.magnification,
                "numerical_aperture": cfg.numerical_aperture,
                "pixel_size_nm": cfg.pixel_um * 1e3,
                "dof_um": optical_depth_of_field_um(cfg.pixel_um * 1e3, cfg.numerical_aperture),
                "psf": "disk of diameter 2·NA·|Δz| ⊛ Gaussian σ = 0.21·λ/NA (λ = 550 nm) ⊛ pixel",
                "focus_z_um": cfg.focus_z_um,
                "focus_tilt_x_um_per_mm": cfg.focus_tilt_x_um_per_mm,
                "focus_tilt_y_um_per_mm": cfg.focus_tilt_y_um_per_mm,
                "focus_bow_um": cfg.focus_bow_um,
                "off_chip_reflectance": cfg.off_chip_reflectance,
            },
            "camera": {
                **dataclasses.asdict(cfg.camera),
                "gain_dn_per_e_resolved": camera.gain_dn_per_e,
                "white_balance_rgb_resolved": [float(g) for g in camera.white_balance],
                "black_level_dn_resolved": camera.black_level_dn,
            },
            "actuators": {
                "z_settle_s": cfg.z_settle_s,
                "z_backlash_um": cfg.z_backlash_um,
                "stage_settle_s": cfg.stage_settle_s,
                "stage_speed_um_per_s": cfg.stage_speed_um_per_s,
                "stage_backlash_um": cfg.stage_backlash_um,
            },
        }

    def images(self, n: int) -> Iterator[AnnotatedImage]:
        """``n`` annotated tiles, each containing at least one flake; the same ``n`` tiles on
        every call (a fresh microscope each time, sharing the chip)."""
        cfg = self.config
        clock = _ManualClock()
        sim = SimulatedOpticalMicroscope(
            cfg, clock=clock, sleep=clock.sleep, chip=self.microscope.chip
        )
        rng = np.random.default_rng([self.seed, 0xDA7A])
        limits = sim.limits()
        rows, cols = cfg.camera.shape
        fov_x, fov_y = cols * cfg.pixel_um, rows * cfg.pixel_um
        dof = optical_depth_of_field_um(cfg.pixel_um * 1e3, cfg.numerical_aperture)
        made = attempts = 0
        while made < n:
            attempts += 1
            if attempts > 1000 * n:
                raise ValueError(
                    f"found only {made} of {n} tiles with flakes: the chip has too "
                    "few flakes; raise ChipConfig.flakes_per_mm2"
                )
            flakes = [
                o
                for o in sim.chip.cell(
                    int(rng.integers(sim.chip.cells_x)), int(rng.integers(sim.chip.cells_y))
                )
                if o.kind == "flake"
            ]
            if not flakes:
                continue
            obj = flakes[int(rng.integers(len(flakes)))]
            x = float(
                np.clip(
                    obj.centre_um[0] + rng.uniform(-0.3, 0.3) * fov_x,
                    limits.stage_x_min_um,
                    limits.stage_x_max_um,
                )
            )
            y = float(
                np.clip(
                    obj.centre_um[1] + rng.uniform(-0.3, 0.3) * fov_y,
                    limits.stage_y_min_um,
                    limits.stage_y_max_um,
                )
            )
            sim.move_stage(x, y)
            # Backlash moves the field a little: focus where the stage actually is.
            dz = 0.0 if cfg.ideal else float(rng.uniform(-1.0, 1.0)) * self.defocus_dof * dof
            z = float(np.clip(sim.true_focus_z_um() + dz, limits.wd_min_um, limits.wd_max_um))
            sim.set_wd(z)
            _, annotated = sim.acquire_with_truth()
            if any(o.attributes["kind"] in ("flake", "terrace") for o in annotated.objects):
                made += 1
                yield annotated
