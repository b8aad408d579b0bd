"""SEM frames at known defocus as a dataset (autofocus and denoising training/evaluation)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from scopeflow.schemas.state import depth_of_field_um
from scopeflow_lab.sim.sem.simulator import SEMConfig, SimulatedSEM
from scopeflow_lab.sim.sem.specimen import SPECIMEN_FAMILIES, Specimen, make_specimen
from scopeflow_lab.sim.truth import AnnotatedImage


@dataclass(frozen=True)
class SEMDatasetConfig:
    """What varies from frame to frame, and its ranges."""

    frame_size: int = 512
    families: tuple[str, ...] = tuple(sorted(SPECIMEN_FAMILIES))
    pixel_sizes_nm: tuple[float, ...] = (5.0, 10.0, 20.0)
    semiangles_mrad: tuple[float, ...] = (2.0, 3.0, 5.0)
    dose_range_e_per_px: tuple[float, float] = (10.0, 500.0)  # log-uniform
    max_defocus_dof: float = 30.0
    astigmatism_probability: float = 0.5
    astigmatism_range_dof: tuple[float, float] = (0.5, 3.0)


class SEMFocusSource:
    """Frames of the simulated SEM at random defocus, dose, magnification and specimen.

    Each image's attributes hold its ground truth (``defocus_um``, ``defocus_dof``, ``dof_um``,
    family, pixel size, α, dose, astigmatism). No objects are annotated. With ``ideal`` the
    frames are noise-free and in focus (the imaged SE yield, for checking the physics).
    """

    name = "sem"

    def __init__(
        self, seed: int = 0, ideal: bool = False, config: SEMDatasetConfig | None = None
    ) -> None:
        self.seed = seed
        self.ideal = ideal
        self.config = config or SEMDatasetConfig()
        unknown = set(self.config.families) - set(SPECIMEN_FAMILIES)
        if unknown:
            raise ValueError(f"unknown specimen families {sorted(unknown)}")
        self._specimens: dict[str, Specimen] = {}

    def metadata(self) -> dict[str, Any]:
        base = SEMConfig()
        return {
            "seed": self.seed,
            "ideal": self.ideal,
            "variation": asdict(self.config),
            "simulator": {k: v for k, v in asdict(base).items() if k != "texture"},
            "units": "µm for WD and defocus, nm for pixel size, mrad for α, e⁻/px for dose",
        }

    def _specimen(self, family: str) -> Specimen:
        if family not in self._specimens:
            self._specimens[family] = make_specimen(family, seed=self.seed)
        return self._specimens[family]

    def images(self, n: int) -> Iterator[AnnotatedImage]:
        cfg = self.config
        rng = np.random.default_rng([self.seed, 0x5EB])
        for k in range(n):
            family = str(_pick(rng, cfg.families))
            pixel_nm = float(_pick(rng, cfg.pixel_sizes_nm))
            alpha = float(_pick(rng, cfg.semiangles_mrad))
            dof = depth_of_field_um(pixel_nm, alpha)
            lo, hi = np.log(cfg.dose_range_e_per_px)
            dose = float(np.exp(rng.uniform(lo, hi)))
            defocus_dof = float(rng.uniform(-cfg.max_defocus_dof, cfg.max_defocus_dof))
            astig = rng.random() < cfg.astigmatism_probability
            astig_um = float(rng.uniform(*cfg.astigmatism_range_dof)) * dof if astig else 0.0
            angle = float(rng.uniform(0.0, 180.0))
            stage = rng.uniform(-20.0, 20.0, 2)
            if self.ideal:
                defocus_dof, astig_um = 0.0, 0.0
            sim_cfg = replace(
                SEMConfig(),
                seed=self.seed + k,
                family=family,
                frame_shape=(cfg.frame_size, cfg.frame_size),
                pixel_size_nm=pixel_nm,
                beam_semiangle_mrad=alpha,
                dose_e_per_px=dose,
                astigmatism_um=astig_um,
                astigmatism_angle_deg=angle,
                start_wd_um=5000.0 + defocus_dof * dof,
                start_stage_x_um=float(stage[0]),
                start_stage_y_um=float(stage[1]),
                settle_s=0.0,
            )
            sim = SimulatedSEM(sim_cfg, specimen=self._specimen(family))
            frame, clean = sim.acquire_with_clean()
            image = frame.pixels
            if self.ideal:
                info = np.iinfo(image.dtype)
                image = np.clip(np.rint(clean), 0, info.max).astype(image.dtype)
            yield AnnotatedImage(
                image=image,
                objects=[],
                attributes={
                    "family": family,
                    "pixel_size_nm": pixel_nm,
                    "beam_semiangle_mrad": alpha,
                    "dose_e_per_px": dose,
                    "dof_um": dof,
                    "defocus_um": defocus_dof * dof,
                    "defocus_dof": defocus_dof,
                    "astigmatism_um": astig_um,
                    "astigmatism_angle_deg": angle if astig_um else 0.0,
                    "stage_xy_um": [float(stage[0]), float(stage[1])],
                    "ideal": self.ideal,
                },
            )


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]
