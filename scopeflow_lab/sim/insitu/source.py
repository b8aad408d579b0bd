"""The in-situ TEM video dataset source: consecutive frames with ground truth (masks, track ids,
centroids) for dataset writers (:class:`InSituVideoSource`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

from scopeflow_lab.sim.insitu.camera import InSituScene
from scopeflow_lab.sim.insitu.config import InSituConfig
from scopeflow_lab.sim.insitu.imaging import electron_wavelength_nm
from scopeflow_lab.sim.insitu.particles import subdiffusion_modes
from scopeflow_lab.sim.truth import AnnotatedImage


class InSituVideoSource:
    """Consecutive frames of the simulated in-situ video with ground truth, for datasets.

    ``images(n)`` yields frames 0 … n−1 of the video the seed defines (each call starts the
    video again, so it is a pure function of config, seed and ideal). ``ideal``: noise-free
    Beer–Lambert counts without transfer function.
    """

    name = "insitu"

    def __init__(
        self, config: InSituConfig | None = None, seed: int | None = None, ideal: bool = False
    ) -> None:
        base = config if config is not None else InSituConfig()
        self.config = base if seed is None else replace(base, seed=int(seed))
        self.seed = self.config.seed
        self.ideal = ideal

    def metadata(self) -> dict[str, Any]:
        cfg = self.config
        settings = asdict(cfg)
        settings["particles"] = [
            {"spec": asdict(spec), "xy_nm": list(xy)} for spec, xy in cfg.particles
        ]
        cell = cfg.cell()
        tau, sigma, d_tail = subdiffusion_modes(cfg.diffusion_nm2_per_s, cfg.subdiffusion_alpha)
        scene = InSituScene(cfg)
        return {
            "seed": self.seed,
            "ideal": self.ideal,
            "simulator": settings,
            "derived": {
                "exposure_s": cfg.exposure_s,
                "magnification": cfg.magnification,
                "field_nm": list(cfg.field_nm),
                "domain_nm": cfg.domain,
                "flux_e_per_a2_s": cfg.flux_e_per_a2_s(),
                "background_transmission": cell.transmission(),
                "background_counts_e_per_px": cfg.dose_e_per_px * cell.transmission(),
                "electron_wavelength_nm": electron_wavelength_nm(cfg.voltage_kv),
                "subdiffusion_mode_tau_s": [float(t) for t in tau],
                "subdiffusion_mode_rms_nm_at_median_k": [float(s) for s in sigma],
                "subdiffusion_tail_d_nm2_per_s_at_median_k": d_tail,
            },
            "model": {
                "mean_counts": "dose·exp(−(t_p/λ_p + (t_w − t_p)/λ_w + t_SiNx/λ_SiNx))",
                "detector_mtf": "floor + (1 − floor)/(1 + (q/q_half)²), q in cycles/px, "
                "applied after Poisson noise",
                "defocus_transfer": "cos(π λ Δz q²)·exp(−(π α Δz q)²), applied before noise",
                "reference": "Yao et al., ACS Cent. Sci. 6, 1421 (2020)",
            },
            "initial_tracks": scene.initial_tracks,
            "units": "nm for lengths, s for times, e⁻/px per frame for dose, µm for stage and "
            "focus, cycles/px for the MTF",
        }

    def images(self, n: int) -> Iterator[AnnotatedImage]:
        scene = InSituScene(self.config)
        stage = (self.config.start_stage_x_um, self.config.start_stage_y_um)
        defocus = self.config.start_wd - self.config.focus_wd_um
        for k in range(n):
            scene.advance_to(k)
            yield scene.render(stage, defocus_um=defocus, ideal=self.ideal)
