"""A simulated reflected-light microscope over an exfoliated-flake chip (its configuration is in
:mod:`.config`, the annotated dataset source in :mod:`.source`).

Frame formation, in order: the bare-substrate reflectance of every pixel (oxide thickness map →
:class:`ContrastTable`, sampled on a coarse grid and interpolated; times the illumination falloff
and the electrons per unit reflectance); each flake, residue patch or dirt particle multiplies
it by 1 + its contrast; out of focus each object's contrast map is blurred by the point-spread
function at that object's own defocus (the focus surface is tilted and bowed, so Δz varies over
the chip); then the camera counts, adds noise and digitises (:mod:`.camera`).

The PSF is a uniform defocus disk of diameter 2·NA·|Δz| (the geometric blur circle, in the
paraxial form the SEM simulator uses too) convolved with a Gaussian of σ = 0.21·λ/NA (the
diffraction-limited spot, Zhang et al., Appl. Opt. 46, 1819 (2007)) and the pixel's box
(σ² += 1/12 px²): near focus the diffraction spot dominates, far from it the disk. Blurring
the contrast map and multiplying by the substrate signal equals blurring the image up to the
substrate's change across one blur width (oxide gradient and vignetting: < 10⁻³).

Dynamics run on an injectable clock: XY stage and Z drive approach their targets as first-order
lags over their move time (settle time, plus distance / speed for the stage) and have backlash.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scopeflow.devices.base import MicroscopeBase
from scopeflow.devices.protocols import Frame
from scopeflow.errors import LimitError
from scopeflow.optics.thinfilm import MATERIALS, ContrastTable
from scopeflow.schemas.state import Limits, MicroscopeState, SimTruth, optical_depth_of_field_um
from scopeflow_lab.sim.actuator import Actuator, wait_settled
from scopeflow_lab.sim.optical.camera import Camera
from scopeflow_lab.sim.optical.chip import Chip, ChipObject, DrawnRegion
from scopeflow_lab.sim.optical.config import OpticalConfig
from scopeflow_lab.sim.sem.optics import BlurSpec, KernelCache, convolve
from scopeflow_lab.sim.truth import AnnotatedImage, ObjectTruth

#: σ of the Gaussian fit to the widefield diffraction PSF, in units of λ/NA (Zhang et al. 2007).
DIFFRACTION_SIGMA_PER_LAMBDA_NA = 0.21
PSF_WAVELENGTH_NM = 550.0  # one PSF for all channels (green); chromatic blur is not modelled
_MAX_BLUR_PX = 512.0  # a wider disk only averages the field: capped to keep kernels small
_COARSE_MAX_FACTOR = 8
_BACKGROUND_STEP_PX = 32  # the smooth background is computed on this grid and interpolated


def blur_spec(
    defocus_um: float,
    numerical_aperture: float,
    pixel_um: float,
    wavelength_nm: float = PSF_WAVELENGTH_NM,
) -> BlurSpec:
    """The PSF at ``defocus_um`` in pixels of ``pixel_um`` (referred to the sample): a disk of
    diameter 2·NA·|Δz| convolved with a Gaussian of σ² = (0.21 λ/NA)² + 1/12 px²."""
    diameter_px = 2.0 * numerical_aperture * abs(defocus_um) / pixel_um
    sigma_px = math.sqrt(
        (DIFFRACTION_SIGMA_PER_LAMBDA_NA * wavelength_nm * 1e-3 / numerical_aperture / pixel_um)
        ** 2
        + 1.0 / 12.0
    )
    return BlurSpec(diameter_px, diameter_px, 0.0, sigma_px).capped(_MAX_BLUR_PX)


@dataclass
class _Tile:
    """A rendered tile before the camera: mean electrons, objects and per-region truth."""

    electrons: np.ndarray
    regions: list[DrawnRegion]
    labels: np.ndarray  # frame part of the label canvas
    contrast: dict[int, np.ndarray]  # label → expected contrast (R, G, B)
    oxide_nm: dict[int, float]  # object id → oxide under it
    defocus_um: dict[int, float]  # object id → defocus at it
    centre_um: tuple[float, float]
    z_um: float


#: The simulated turret: name → (magnification, numerical aperture), dry objectives.
OBJECTIVES = {
    "5x": (5.0, 0.15),
    "10x": (10.0, 0.30),
    "20x": (20.0, 0.40),
    "50x": (50.0, 0.80),
    "100x": (100.0, 0.90),
}


class SimulatedOpticalMicroscope(MicroscopeBase):
    """A simulated motorised reflected-light microscope with a colour camera over a flake chip.

    ``wd_um`` of the protocol is the Z (focus drive) position, µm. ``clock`` (s) and ``sleep``
    drive the actuators and may be fakes in tests; ``chip`` overrides the one the config
    describes (to share one between instances).
    """

    def __init__(
        self,
        config: OpticalConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        chip: Chip | None = None,
    ) -> None:
        self._config = config if config is not None else OpticalConfig()
        cfg = self._config
        self.name = cfg.name
        self._clock = clock
        self._sleep = sleep
        self._chip = chip if chip is not None else Chip(cfg.chip, cfg.seed)
        lo, hi = self._chip.config.oxide_range_nm()
        self._table = ContrastTable(cfg.spectrum, max(0.0, lo - 1.0), hi + 1.0)
        self._limits = cfg.limits()
        self._kernels = KernelCache()
        self._rng = np.random.default_rng([cfg.seed, 0x0C7A])  # apart from the chip's streams
        self._camera = self._make_camera(cfg.camera.exposure_s)
        t0 = clock()
        start_z = (
            cfg.start_z_um
            if cfg.start_z_um is not None
            else cfg.focus_z_at(cfg.start_x_um, cfg.start_y_um)
        )
        self._z = Actuator.at_rest(
            start_z, t0, settle_s=cfg.z_settle_s, backlash_um=cfg.z_backlash_um
        )
        self._x, self._y = (
            Actuator.at_rest(
                start,
                t0,
                settle_s=cfg.stage_settle_s,
                backlash_um=cfg.stage_backlash_um,
                speed_um_per_s=cfg.stage_speed_um_per_s,
            )
            for start in (cfg.start_x_um, cfg.start_y_um)
        )

    def _make_camera(self, exposure_s: float) -> Camera:
        cfg = self._config
        camera_cfg = dataclasses.replace(cfg.camera, exposure_s=exposure_s)
        reference = self._table.background_rgb(self._chip.oxide_nm(0.0, 0.0))
        return Camera(camera_cfg, cfg.spectrum.raw_response(), reference, ideal=cfg.ideal)

    # -- extra controls and truth ---------------------------------------------------------------
    @property
    def config(self) -> OpticalConfig:
        return self._config

    @property
    def chip(self) -> Chip:
        return self._chip

    @property
    def camera(self) -> Camera:
        """The camera with its resolved gain, white balance and black level."""
        return self._camera

    @property
    def contrast_table(self) -> ContrastTable:
        return self._table

    def objectives(self) -> dict[str, tuple[float, float]]:
        """The turret: name → (magnification, NA); the configured objective is one of them."""
        mounted = dict(OBJECTIVES)
        cfg = self._config
        mounted.setdefault(
            f"{cfg.magnification:g}x", (float(cfg.magnification), cfg.numerical_aperture)
        )
        return mounted

    def objective(self) -> str:
        cfg = self._config
        for name, (mag, na) in self.objectives().items():
            if mag == cfg.magnification and na == cfg.numerical_aperture:
                return name
        return f"{cfg.magnification:g}x"

    def set_objective(self, name: str) -> None:
        """Swing another objective in: the field, the pixel size and the depth of field change
        with it (parfocal: focus stays where it was)."""
        mag, na = self.objectives()[name]
        self._config = dataclasses.replace(self._config, magnification=mag, numerical_aperture=na)

    def set_exposure_s(self, exposure_s: float) -> None:
        """Change the exposure; an automatic gain keeps the brightness (and the noise grows)."""
        if not (
            isinstance(exposure_s, (int, float))
            and math.isfinite(exposure_s)
            and 1e-6 <= exposure_s <= 10.0
        ):
            raise LimitError(f"exposure {exposure_s!r} s is outside [1e-6, 10] s")
        self._camera = self._make_camera(float(exposure_s))

    def true_focus_z_um(self) -> float:
        """Z that would focus the tile centre now (ground truth, for scoring only)."""
        x, y = self._actual_xy(self._clock())
        return self._config.focus_z_at(x, y)

    def expected_contrast_rgb(
        self, material: str, thickness_nm: float, oxide_nm: float
    ) -> np.ndarray:
        """The contrast R_film / R_substrate − 1 (R, G, B) the model predicts."""
        return self._table.contrast_rgb(MATERIALS[material], thickness_nm, oxide_nm)

    def acquire_with_clean(self) -> tuple[Frame, np.ndarray]:
        """A frame and its noise-free expectation in DN (float32, rows × cols × 3)."""
        frame, tile = self._acquire()
        return frame, self._camera.expected_dn(tile.electrons)

    def acquire_with_truth(self) -> tuple[Frame, AnnotatedImage]:
        """A frame and the ground truth of the tile under the camera: every visible object
        with its mask and attributes (see :class:`FlakeChipSource`)."""
        frame, tile = self._acquire()
        return frame, AnnotatedImage(
            frame.pixels, self._objects_truth(tile), self._tile_attributes(frame, tile)
        )

    # -- Microscope hooks -----------------------------------------------------------------------
    def state(self) -> MicroscopeState:
        return self._state_at(self._clock())

    def limits(self) -> Limits:
        return self._limits

    def _do_acquire(self) -> Frame:
        frame, _ = self._acquire()
        return frame

    def _do_set_wd(self, wd_um: float) -> None:
        self._z.command(wd_um, self._clock())

    def _do_move_stage(self, x_um: float, y_um: float) -> None:
        t = self._clock()
        self._x.command(x_um, t)
        self._y.command(y_um, t)

    def _do_wait_settled(self) -> None:
        wait_settled((self._x, self._y, self._z), self._clock, self._sleep)

    # -- physics ----------------------------------------------------------------------------------
    def _actual_xy(self, t: float) -> tuple[float, float]:
        return self._x.position(t)[0], self._y.position(t)[0]

    def _state_at(self, t: float) -> MicroscopeState:
        cfg = self._config
        z, z_settled = self._z.position(t)
        xy_settled = self._x.position(t)[1] and self._y.position(t)[1]
        return MicroscopeState(
            wd_um=float(z),
            wd_target_um=float(self._z.target_um),
            settled=bool(z_settled and xy_settled),
            stage_x_um=float(self._x.target_um),
            stage_y_um=float(self._y.target_um),
            magnification=float(cfg.magnification),
            pixel_size_nm=cfg.pixel_um * 1e3,
            exposure_s=float(self._camera.config.exposure_s),
            numerical_aperture=float(cfg.numerical_aperture),
        )

    def _acquire(self) -> tuple[Frame, _Tile]:
        cfg = self._config
        start_ns = time.time_ns()
        t = self._clock()
        state = self._state_at(t)
        cx, cy = self._actual_xy(t)
        tile = self._render(cx, cy, state.wd_um)
        pixels = self._camera.read_out(tile.electrons, self._rng)
        if cfg.pace_frames:
            self._sleep(self._camera.config.exposure_s)
        focus = cfg.focus_z_at(cx, cy)
        truth = SimTruth(
            focus_wd_um=float(focus),
            defocus_um=float(state.wd_um - focus),
            dof_um=optical_depth_of_field_um(cfg.pixel_um * 1e3, cfg.numerical_aperture),
        )
        frame = Frame(
            pixels=pixels,
            state=state,
            start_time_ns=start_ns,
            stop_time_ns=time.time_ns(),
            monotonic_ns=time.monotonic_ns(),
            truth=truth,
            channel_order="RGB",
        )
        return frame, tile

    def _render(self, cx: float, cy: float, z: float) -> _Tile:
        cfg = self._config
        rows, cols = cfg.camera.shape
        p = cfg.pixel_um
        margin = 0
        if not cfg.ideal:  # room for blur to reach in from objects just outside the field
            half_x, half_y = (cols / 2 + 8) * p, (rows / 2 + 8) * p
            worst = max(
                abs(z - cfg.focus_z_at(cx + sx * half_x, cy + sy * half_y))
                for sx in (-1, 0, 1)
                for sy in (-1, 0, 1)
            )
            spec = blur_spec(1.1 * worst + 1.0, cfg.numerical_aperture, p)
            margin = math.ceil(spec.along_px / 2 + 4 * spec.sigma_px) + 2
        layout = self._chip.layout(cx, cy, (rows, cols), p, margin)
        background = self._background(cx, cy)
        electrons = background.copy()
        contrast: dict[int, np.ndarray] = {}
        oxide: dict[int, float] = {}
        defocus: dict[int, float] = {}
        by_object: dict[int, list[DrawnRegion]] = {}
        for drawn in layout.regions:
            obj = drawn.obj
            if obj.object_id not in oxide:
                oxide[obj.object_id] = float(self._chip.oxide_nm(*obj.centre_um))
                defocus[obj.object_id] = z - cfg.focus_z_at(*obj.centre_um)
            contrast[drawn.label] = self._region_contrast(drawn, oxide[obj.object_id])
            by_object.setdefault(obj.object_id, []).append(drawn)
        m = layout.margin_px
        for regions in by_object.values():
            if cfg.ideal:
                self._paint_sharp(electrons, layout.labels, regions, contrast, m)
            else:
                spec = blur_spec(defocus[regions[0].obj.object_id], cfg.numerical_aperture, p)
                self._paint_blurred(
                    electrons, background, layout.labels, regions, contrast, m, spec
                )
        frame_labels = layout.labels[m : m + rows, m : m + cols]
        return _Tile(electrons, layout.regions, frame_labels, contrast, oxide, defocus, (cx, cy), z)

    def _region_contrast(self, drawn: DrawnRegion, oxide_nm: float) -> np.ndarray:
        region = drawn.region
        if region.factor_rgb is not None:  # dirt: an absorber, not a film
            return np.asarray(region.factor_rgb, float) - 1.0
        return self._table.contrast_rgb(MATERIALS[region.material], region.thickness_nm, oxide_nm)

    def _background(self, cx: float, cy: float) -> np.ndarray:
        """Mean electrons of the bare chip (rows, cols, 3) float32.

        Computed on a grid every 32 px that reaches one step beyond the frame on every side,
        then interpolated bilinearly (cv2.resize maps grid sample u to pixel (u + ½)·32 − ½).
        """
        cfg = self._config
        rows, cols = cfg.camera.shape
        s = _BACKGROUND_STEP_PX
        n_r, n_c = math.ceil(rows / s) + 2, math.ceil(cols / s) + 2
        r_px = (np.arange(n_r) + 0.5) * s - 0.5 - s  # frame pixel of each grid sample
        c_px = (np.arange(n_c) + 0.5) * s - 0.5 - s
        p = cfg.pixel_um
        x = cx + (c_px - (cols - 1) / 2) * p
        y = cy + (r_px - (rows - 1) / 2) * p
        oxide = self._chip.oxide_nm(x[None, :], y[:, None])
        lo, hi = self._table.oxide_nm[0], self._table.oxide_nm[-1]
        reflectance = self._table.background_rgb(np.clip(oxide, lo, hi))
        grid = (
            reflectance
            * self._camera.vignetting(r_px[:, None], c_px[None, :])[..., None]
            * self._camera.e_per_reflectance
        ).astype(np.float32)
        full = cv2.resize(grid, (n_c * s, n_r * s), interpolation=cv2.INTER_LINEAR)
        out = full[s : s + rows, s : s + cols]  # a view: the caller copies it once
        self._paint_off_chip(out, cx, cy)
        return out

    def _paint_off_chip(self, out: np.ndarray, cx: float, cy: float) -> None:
        """Beyond the chip edge the (dark) holder shows; the edge itself is not blurred."""
        cfg = self._config
        rows, cols = cfg.camera.shape
        p = cfg.pixel_um
        x0, y0, x1, y1 = self._chip.bounds_um
        c_lo = math.ceil((x0 - cx) / p + (cols - 1) / 2)  # first column on the chip
        c_hi = math.floor((x1 - cx) / p + (cols - 1) / 2) + 1
        r_lo = math.ceil((y0 - cy) / p + (rows - 1) / 2)
        r_hi = math.floor((y1 - cy) / p + (rows - 1) / 2) + 1
        if c_lo <= 0 and r_lo <= 0 and c_hi >= cols and r_hi >= rows:
            return
        inside = np.zeros((rows, cols), bool)
        inside[max(r_lo, 0) : max(min(r_hi, rows), 0), max(c_lo, 0) : max(min(c_hi, cols), 0)] = (
            True
        )
        rr, cc = np.nonzero(~inside)
        vignetting = self._camera.vignetting(rr, cc)[:, None]
        out[rr, cc] = (
            cfg.off_chip_reflectance * vignetting * self._camera.e_per_reflectance
        ).astype(np.float32)

    @staticmethod
    def _paint_sharp(
        electrons: np.ndarray,
        labels: np.ndarray,
        regions: list[DrawnRegion],
        contrast: dict[int, np.ndarray],
        m: int,
    ) -> None:
        rows, cols = electrons.shape[:2]
        for drawn in regions:
            r0, r1, c0, c1 = drawn.bbox
            fr0, fr1 = max(r0 - m, 0), min(r1 - m, rows)
            fc0, fc1 = max(c0 - m, 0), min(c1 - m, cols)
            if fr1 <= fr0 or fc1 <= fc0:
                continue
            mask = labels[fr0 + m : fr1 + m, fc0 + m : fc1 + m] == drawn.label
            view = electrons[fr0:fr1, fc0:fc1]
            view[mask] *= (1.0 + contrast[drawn.label]).astype(np.float32)

    def _paint_blurred(
        self,
        electrons: np.ndarray,
        background: np.ndarray,
        labels: np.ndarray,
        regions: list[DrawnRegion],
        contrast: dict[int, np.ndarray],
        m: int,
        spec: BlurSpec,
    ) -> None:
        """Add background × (PSF ⊛ contrast map) of one object over its padded bounding box."""
        rows, cols = electrons.shape[:2]
        pad = math.ceil(spec.along_px / 2 + 4 * spec.sigma_px) + 2
        r0 = max(min(d.bbox[0] for d in regions) - pad, 0)
        r1 = min(max(d.bbox[1] for d in regions) + pad, labels.shape[0])
        c0 = max(min(d.bbox[2] for d in regions) - pad, 0)
        c1 = min(max(d.bbox[3] for d in regions) + pad, labels.shape[1])
        fr0, fr1 = max(r0 - m, 0), min(r1 - m, rows)
        fc0, fc1 = max(c0 - m, 0), min(c1 - m, cols)
        if fr1 <= fr0 or fc1 <= fc0:
            return
        patch = labels[r0:r1, c0:c1]
        delta = np.zeros(patch.shape + (3,), np.float32)
        for drawn in regions:
            delta[patch == drawn.label] = contrast[drawn.label]
        blurred = self._blur(delta, spec)
        part = blurred[fr0 + m - r0 : fr1 + m - r0, fc0 + m - c0 : fc1 + m - c0]
        electrons[fr0:fr1, fc0:fc1] += background[fr0:fr1, fc0:fc1] * part

    def _blur(self, image: np.ndarray, spec: BlurSpec) -> np.ndarray:
        """Convolve with the PSF; wide disks on a grid 2–8× coarser (second moments kept)."""
        factor = spec.coarse_factor(_COARSE_MAX_FACTOR)
        if factor == 1:
            return convolve(image, self._kernels.get(spec))
        h, w = image.shape[:2]
        big_h, big_w = math.ceil(h / factor) * factor, math.ceil(w / factor) * factor
        padded = np.zeros((big_h, big_w, 3), np.float32)
        padded[:h, :w] = image
        small = cv2.resize(padded, (big_w // factor, big_h // factor), interpolation=cv2.INTER_AREA)
        small = convolve(small, self._kernels.get(spec.on_grid(factor)))
        return cv2.resize(small, (big_w, big_h), interpolation=cv2.INTER_LINEAR)[:h, :w]

    # -- truth ----------------------------------------------------------------------------------
    def _objects_truth(self, tile: _Tile) -> list[ObjectTruth]:
        objects = []
        for drawn in tile.regions:
            mask = tile.labels == drawn.label
            area = int(np.count_nonzero(mask))
            if area == 0:
                continue
            obj, region = drawn.obj, drawn.region
            objects.append(
                ObjectTruth(
                    category=region.material,
                    mask=mask,
                    attributes=self._object_attributes(obj, drawn, tile, area, mask),
                )
            )
        return objects

    def _object_attributes(
        self, obj: ChipObject, drawn: DrawnRegion, tile: _Tile, area: int, mask: np.ndarray
    ) -> dict[str, Any]:
        region = drawn.region
        kind = obj.kind if region is obj.regions[0] else "terrace"
        edge = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        return {
            "material": region.material,
            "kind": kind,
            "layers": int(region.layers),
            "thickness_nm": float(region.thickness_nm),
            "expected_contrast_rgb": [float(c) for c in tile.contrast[drawn.label]],
            "object_id": int(obj.object_id),
            "flake_id": int(obj.object_id),
            "oxide_nm": tile.oxide_nm[obj.object_id],
            "defocus_um": float(tile.defocus_um[obj.object_id]),
            "centre_um": [obj.centre_um[0], obj.centre_um[1]],
            "area_px": area,
            "truncated": edge,
        }

    def _tile_attributes(self, frame: Frame, tile: _Tile) -> dict[str, Any]:
        cfg = self._config
        assert frame.truth is not None
        return {
            "stage_x_um": frame.state.stage_x_um,
            "stage_y_um": frame.state.stage_y_um,
            "actual_x_um": float(tile.centre_um[0]),
            "actual_y_um": float(tile.centre_um[1]),
            "z_um": float(tile.z_um),
            "focus_z_um": frame.truth.focus_wd_um,
            "defocus_um": frame.truth.defocus_um,
            "dof_um": frame.truth.dof_um,
            "oxide_nm": float(self._chip.oxide_nm(*tile.centre_um)),
            "pixel_size_nm": cfg.pixel_um * 1e3,
            "magnification": cfg.magnification,
            "numerical_aperture": cfg.numerical_aperture,
            "exposure_s": self._camera.config.exposure_s,
            "bit_depth": cfg.camera.bit_depth,
            "ideal": cfg.ideal,
        }
