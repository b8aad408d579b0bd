"""An exfoliated-flake chip: oxide thickness map, flakes, tape residue and dirt, in chip µm.

The chip is centred on the origin of chip coordinates (µm; x to the right, y down the image
rows). Objects are generated lazily per square cell from ``(seed, cell)``, so a chip of any size
costs only the cells a tile touches, and the same seed always gives the same chip. Within a cell
objects are placed with rejection so that no two overlap (a flake never lies on another), and
each object lies wholly inside its cell, so cells are independent.

Flakes are unions of up to three convex pieces whose edges run along the crystal directions
(multiples of 30° from a random lattice orientation: zigzag and armchair cleavage), with a few
torn edges at random angles and a little vertex jitter. A terraced flake has a step along a
crystal direction; each part of uniform thickness is a :class:`Region` of its own. Tape residue
(thin transparent polymer film) and dirt (small absorbing particles) are the decoys.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from scopeflow.optics.thinfilm import MATERIALS

_CELL_CACHE = 256  # cells kept per chip (a 20× tile touches 4–9)
_GAP_UM = 2.0  # least distance between two objects' bounding circles
_PLACEMENT_TRIES = 20
_FIXED_POINT_BITS = 4  # fillPoly sub-pixel precision: 1/16 px


@dataclass(frozen=True)
class ChipConfig:
    """Layout of a chip (units in the names; see docs/simulators.md).

    Oxide: ``oxide_nm`` at the chip centre, a linear gradient of ``oxide_gradient_nm_per_mm``
    towards ``oxide_gradient_angle_deg`` (from +x towards +y) and a radial bow of ``oxide_bow_nm``
    from the centre to the corners (how a wafer's thickness profile looks at chip scale).
    Objects per mm²: ``flakes_per_mm2``, ``residue_per_mm2``, ``dirt_per_mm2``. Flakes:
    ``materials`` drawn with ``material_weights``; layer counts 1, 2, 3… drawn with
    ``few_layer_weights`` and bulk (lognormal thickness, median ``bulk_median_nm``) with
    ``bulk_weight``; lateral size (equivalent diameter, lognormal) of median
    ``thin_size_um`` (≤ 10 layers) or ``bulk_size_um``; ``terrace_fraction`` of multilayer flakes
    have a step. ``cell_um``: generation cell (objects never exceed it).
    """

    size_x_um: float = 10_000.0
    size_y_um: float = 10_000.0
    oxide_nm: float = 285.0
    oxide_gradient_nm_per_mm: float = 0.4
    oxide_gradient_angle_deg: float = 30.0
    oxide_bow_nm: float = 1.0
    flakes_per_mm2: float = 20.0
    residue_per_mm2: float = 3.0
    dirt_per_mm2: float = 15.0
    materials: tuple[str, ...] = ("graphene", "hBN")
    material_weights: tuple[float, ...] = (0.5, 0.5)
    few_layer_weights: tuple[float, ...] = (
        0.14,
        0.10,
        0.08,
        0.06,
        0.05,
        0.04,
        0.03,
        0.03,
        0.02,
        0.02,
    )
    bulk_weight: float = 0.43
    bulk_median_nm: float = 30.0
    thin_size_um: float = 15.0
    bulk_size_um: float = 35.0
    terrace_fraction: float = 0.3
    cell_um: float = 400.0

    def __post_init__(self) -> None:
        for name in (
            "size_x_um",
            "size_y_um",
            "oxide_nm",
            "cell_um",
            "bulk_median_nm",
            "thin_size_um",
            "bulk_size_um",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        for name in (
            "flakes_per_mm2",
            "residue_per_mm2",
            "dirt_per_mm2",
            "bulk_weight",
            "oxide_gradient_nm_per_mm",
            "oxide_bow_nm",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if not 0.0 <= self.terrace_fraction <= 1.0:
            raise ValueError("terrace_fraction must lie within [0, 1]")
        unknown = [m for m in self.materials if m not in MATERIALS or m == "residue"]
        if unknown or not self.materials:
            choices = ", ".join(m for m in MATERIALS if m != "residue")
            raise ValueError(f"unknown flake materials {unknown}; choose from {choices}")
        if len(self.material_weights) != len(self.materials) or min(self.material_weights) < 0:
            raise ValueError("give one non-negative weight per material")
        if (
            min(self.few_layer_weights, default=0.0) < 0
            or (sum(self.few_layer_weights) + self.bulk_weight) <= 0
        ):
            raise ValueError("layer weights must be non-negative and not all zero")
        if self.cell_um < 4 * max(self.thin_size_um, self.bulk_size_um):
            raise ValueError("cell_um must be at least 4× the largest median flake size")

    def oxide_range_nm(self) -> tuple[float, float]:
        """Least and greatest oxide thickness anywhere on the chip."""
        half_diag_mm = math.hypot(self.size_x_um, self.size_y_um) / 2e3
        spread = self.oxide_gradient_nm_per_mm * half_diag_mm
        return (
            self.oxide_nm - spread + min(0.0, self.oxide_bow_nm),
            self.oxide_nm + spread + max(0.0, self.oxide_bow_nm),
        )


@dataclass(frozen=True)
class Region:
    """A part of an object with one thickness: convex polygons in chip µm, drawn together.

    Thin films have ``material`` (a key of ``MATERIALS``) and ``thickness_nm``; dirt has
    ``factor_rgb`` instead, the factor by which it scales the reflectance of what is under it.
    """

    polygons_um: tuple[np.ndarray, ...]
    material: str
    thickness_nm: float
    layers: int
    factor_rgb: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ChipObject:
    """A flake (``kind`` "flake"), a residue patch ("residue") or a dirt particle ("dirt").

    ``regions[0]`` is the whole object; later regions (terraces) are painted over it.
    ``centre_um`` and ``radius_um`` bound it (every vertex lies within the circle).
    """

    object_id: int
    kind: str
    regions: tuple[Region, ...]
    centre_um: tuple[float, float]
    radius_um: float


# -- shapes ----------------------------------------------------------------------------------


def clip_half_plane(polygon: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """The part of a convex polygon (k, 2) where normal·p ≤ offset (Sutherland–Hodgman)."""
    out: list[np.ndarray] = []
    dist = polygon @ normal - offset
    for i in range(len(polygon)):
        j = (i + 1) % len(polygon)
        if dist[i] <= 0:
            out.append(polygon[i])
        if dist[i] * dist[j] < 0:
            out.append(polygon[i] + (polygon[j] - polygon[i]) * (dist[i] / (dist[i] - dist[j])))
    return np.array(out, float).reshape(-1, 2)


def _unit(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)])


def flake_pieces(rng: np.random.Generator, size_um: float) -> tuple[list[np.ndarray], float]:
    """Convex pieces of an exfoliated flake around the origin, and its lattice angle (deg).

    Each piece is an elongated polygon cut by half-planes whose normals lie along crystal
    directions (multiples of 30°): its edges are zigzag/armchair cleavage lines. Some pieces get
    one torn edge at a random angle; vertices are jittered by 1 % of the size.
    """
    lattice_deg = float(rng.uniform(0.0, 60.0))
    long_deg = lattice_deg + 30.0 * int(rng.integers(0, 6))  # elongated along a cleave line
    aspect = float(rng.uniform(1.0, 2.5))
    count = 1 + int(rng.binomial(2, 0.35))
    pieces = []
    for p in range(count):
        a = size_um / 2 * math.sqrt(aspect) * (1.0 if p == 0 else float(rng.uniform(0.4, 0.7)))
        b = a / aspect
        centre = (
            np.zeros(2)
            if p == 0
            else _unit(long_deg + float(rng.uniform(-60, 60)))
            * float(rng.uniform(0.3, 0.8))
            * size_um
            / 2
        )
        poly = centre + 4.0 * a * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
        for k in range(12):
            # Even k: one 60° family of edges (always cut, they bound the piece); odd k: the
            # family 30° off, cut sometimes. Long straight edges, corners at multiples of 30°.
            if k % 2 and rng.random() > 0.35:
                continue
            normal = _unit(lattice_deg + 30.0 * k)
            phi = math.radians(lattice_deg + 30.0 * k - long_deg)
            support = math.hypot(a * math.cos(phi), b * math.sin(phi))
            poly = clip_half_plane(
                poly, normal, float(normal @ centre) + support * float(rng.uniform(0.55, 1.0))
            )
        if rng.random() < 0.4:  # a torn edge, off the crystal directions
            normal = _unit(float(rng.uniform(0.0, 360.0)))
            extent = float((poly @ normal).max() - normal @ centre)
            poly = clip_half_plane(
                poly, normal, float(normal @ centre) + extent * float(rng.uniform(0.6, 0.9))
            )
        poly = poly + rng.normal(0.0, 0.01 * size_um / 2, poly.shape)
        if len(poly) >= 3:
            pieces.append(poly)
    return pieces, lattice_deg


def blob(
    rng: np.random.Generator, radius_um: float, roughness: float, vertices: int = 40
) -> np.ndarray:
    """A smooth irregular closed outline (k, 2) around the origin: radius modulated by random
    harmonics 2–6 (amplitude ``roughness``/k) and a random stretch."""
    phi = np.linspace(0.0, 2 * math.pi, vertices, endpoint=False)
    r = np.ones_like(phi)
    for k in range(2, 7):
        r += rng.normal(0.0, roughness / k) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    r = radius_um * np.clip(r, 0.3, None)
    stretch = float(rng.uniform(1.0, 1.8))
    angle = float(rng.uniform(0.0, math.pi))
    x, y = r * np.cos(phi) * stretch, r * np.sin(phi) / math.sqrt(stretch)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * x - s * y, s * x + c * y], axis=1)


# -- the chip --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrawnRegion:
    """A region drawn into a label canvas: its label, object, region and bounding box
    (row0, row1, col0, col1; canvas pixels, end exclusive)."""

    label: int
    obj: ChipObject
    region: Region
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class TileLayout:
    """The objects of one tile drawn as labels (0 = substrate) on a canvas that extends
    ``margin_px`` beyond the tile on every side, so that blur can reach in from outside."""

    labels: np.ndarray
    regions: list[DrawnRegion]
    margin_px: int


class Chip:
    """A chip built from a :class:`ChipConfig` and a seed; queried per tile."""

    def __init__(self, config: ChipConfig | None = None, seed: int = 0) -> None:
        self.config = config if config is not None else ChipConfig()
        self.seed = int(seed)
        cfg = self.config
        self.cells_x = math.ceil(cfg.size_x_um / cfg.cell_um)
        self.cells_y = math.ceil(cfg.size_y_um / cfg.cell_um)
        self._cells: OrderedDict[tuple[int, int], list[ChipObject]] = OrderedDict()
        weights = np.array(cfg.few_layer_weights + (cfg.bulk_weight,), float)
        self._layer_p = weights / weights.sum()
        mats = np.array(cfg.material_weights, float)
        self._material_p = mats / mats.sum()

    @property
    def bounds_um(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) of the chip."""
        hx, hy = self.config.size_x_um / 2, self.config.size_y_um / 2
        return (-hx, -hy, hx, hy)

    def oxide_nm(self, x_um: np.ndarray | float, y_um: np.ndarray | float) -> np.ndarray:
        """SiO₂ thickness at chip positions (µm), nm."""
        cfg = self.config
        x, y = np.asarray(x_um, float), np.asarray(y_um, float)
        a = math.radians(cfg.oxide_gradient_angle_deg)
        along_mm = (x * math.cos(a) + y * math.sin(a)) * 1e-3
        half_diag2 = (cfg.size_x_um**2 + cfg.size_y_um**2) / 4
        return (
            cfg.oxide_nm
            + cfg.oxide_gradient_nm_per_mm * along_mm
            + cfg.oxide_bow_nm * (x * x + y * y) / half_diag2
        )

    # -- objects -------------------------------------------------------------------------------
    def objects_in(
        self, x_min: float, y_min: float, x_max: float, y_max: float
    ) -> list[ChipObject]:
        """Objects whose bounding circle meets the rectangle (chip µm)."""
        cfg = self.config
        x0, y0, _, _ = self.bounds_um
        ix0 = max(0, math.floor((x_min - x0) / cfg.cell_um))
        ix1 = min(self.cells_x - 1, math.floor((x_max - x0) / cfg.cell_um))
        iy0 = max(0, math.floor((y_min - y0) / cfg.cell_um))
        iy1 = min(self.cells_y - 1, math.floor((y_max - y0) / cfg.cell_um))
        found = []
        for iy in range(iy0, iy1 + 1):
            for ix in range(ix0, ix1 + 1):
                for obj in self.cell(ix, iy):
                    cx, cy = obj.centre_um
                    dx = max(x_min - cx, 0.0, cx - x_max)
                    dy = max(y_min - cy, 0.0, cy - y_max)
                    if dx * dx + dy * dy <= obj.radius_um**2:
                        found.append(obj)
        return found

    def cell(self, ix: int, iy: int) -> list[ChipObject]:
        """The objects of cell (ix, iy), generated on first use from (seed, ix, iy)."""
        key = (ix, iy)
        objects = self._cells.get(key)
        if objects is None:
            objects = self._generate_cell(ix, iy)
            self._cells[key] = objects
            if len(self._cells) > _CELL_CACHE:
                self._cells.popitem(last=False)
        else:
            self._cells.move_to_end(key)
        return objects

    def _generate_cell(self, ix: int, iy: int) -> list[ChipObject]:
        cfg = self.config
        rng = np.random.default_rng([self.seed, 0xC41F, ix, iy])
        x0, y0, x1, y1 = self.bounds_um
        left, top = x0 + ix * cfg.cell_um, y0 + iy * cfg.cell_um
        box = (left, top, min(left + cfg.cell_um, x1), min(top + cfg.cell_um, y1))
        area_mm2 = (box[2] - box[0]) * (box[3] - box[1]) * 1e-6
        plan = (
            ["flake"] * int(rng.poisson(cfg.flakes_per_mm2 * area_mm2))
            + ["residue"] * int(rng.poisson(cfg.residue_per_mm2 * area_mm2))
            + ["dirt"] * int(rng.poisson(cfg.dirt_per_mm2 * area_mm2))
        )
        placed: list[ChipObject] = []
        base_id = (iy * self.cells_x + ix) * 1000
        for kind in plan:
            regions = {"flake": self._flake, "residue": self._residue, "dirt": self._dirt}[kind](
                rng
            )
            radius = max(float(np.hypot(*poly.T).max()) for r in regions for poly in r.polygons_um)
            centre = self._place(rng, box, radius, placed)
            if centre is None or len(placed) >= 1000:
                continue
            shifted = tuple(
                Region(
                    tuple(p + centre for p in r.polygons_um),
                    r.material,
                    r.thickness_nm,
                    r.layers,
                    r.factor_rgb,
                )
                for r in regions
            )
            placed.append(
                ChipObject(
                    base_id + len(placed),
                    kind,
                    shifted,
                    (float(centre[0]), float(centre[1])),
                    radius,
                )
            )
        return placed

    @staticmethod
    def _place(
        rng: np.random.Generator,
        box: tuple[float, float, float, float],
        radius: float,
        placed: list[ChipObject],
    ) -> np.ndarray | None:
        lo = np.array([box[0], box[1]]) + radius
        hi = np.array([box[2], box[3]]) - radius
        if np.any(hi <= lo):
            return None
        for _ in range(_PLACEMENT_TRIES):
            centre = rng.uniform(lo, hi)
            if all(math.dist(centre, o.centre_um) > radius + o.radius_um + _GAP_UM for o in placed):
                return centre
        return None

    def _thickness(self, rng: np.random.Generator, layer_nm: float) -> tuple[int, float]:
        """(layers, thickness nm): few-layer by weight, else bulk (lognormal, 4–300 nm)."""
        choice = int(rng.choice(len(self._layer_p), p=self._layer_p))
        if choice < len(self.config.few_layer_weights):
            return choice + 1, (choice + 1) * layer_nm
        nm = float(np.clip(self.config.bulk_median_nm * math.exp(rng.normal(0.0, 0.9)), 4.0, 300.0))
        layers = max(len(self.config.few_layer_weights) + 1, round(nm / layer_nm))
        return layers, layers * layer_nm

    def _flake(self, rng: np.random.Generator) -> list[Region]:
        cfg = self.config
        material = MATERIALS[cfg.materials[int(rng.choice(len(cfg.materials), p=self._material_p))]]
        layers, nm = self._thickness(rng, material.layer_nm)
        median = cfg.thin_size_um if layers <= 10 else cfg.bulk_size_um
        size = float(np.clip(median * math.exp(rng.normal(0.0, 0.5)), 2.0, cfg.cell_um / 4))
        pieces, lattice_deg = flake_pieces(rng, size)
        regions = [Region(tuple(pieces), material.name, nm, layers)]
        if layers >= 2 and rng.random() < cfg.terrace_fraction:
            terrace = self._terrace(rng, pieces, lattice_deg, layers, material.layer_nm)
            if terrace is not None:
                regions.append(Region(terrace[0], material.name, terrace[2], terrace[1]))
        return regions

    def _terrace(
        self,
        rng: np.random.Generator,
        pieces: list[np.ndarray],
        lattice_deg: float,
        layers: int,
        layer_nm: float,
    ) -> tuple[tuple[np.ndarray, ...], int, float] | None:
        """A thinner part beyond a step along a crystal direction: (polygons, layers, nm)."""
        normal = _unit(lattice_deg + 30.0 * int(rng.integers(0, 12)))
        proj = np.concatenate([p @ normal for p in pieces])
        cut = proj.min() + float(rng.uniform(0.3, 0.7)) * (proj.max() - proj.min())
        parts = tuple(q for q in (clip_half_plane(p, -normal, -cut) for p in pieces) if len(q) >= 3)
        if not parts:
            return None
        if layers <= 10 or rng.random() < 0.5:
            thin = int(rng.integers(1, min(layers, 6)))  # 1 … min(layers, 6) − 1 layers
        else:
            thin = max(11, round(layers * float(rng.uniform(0.3, 0.7))))
        return parts, thin, thin * layer_nm

    @staticmethod
    def _residue(rng: np.random.Generator) -> list[Region]:
        nm = float(np.clip(4.0 * math.exp(rng.normal(0.0, 0.6)), 1.0, 20.0))
        radius = float(np.clip(15.0 * math.exp(rng.normal(0.0, 0.5)), 4.0, 60.0))
        return [Region((blob(rng, radius, 0.5),), "residue", nm, 0)]

    @staticmethod
    def _dirt(rng: np.random.Generator) -> list[Region]:
        radius = float(np.clip(1.5 * math.exp(rng.normal(0.0, 0.5)), 0.5, 6.0))
        darkness = float(rng.uniform(0.4, 0.85))
        # Brownish: blue absorbed a little more than red.
        factor = (
            1.0 - darkness,
            (1.0 - darkness) * float(rng.uniform(0.85, 1.0)),
            (1.0 - darkness) * float(rng.uniform(0.7, 1.0)),
        )
        return [Region((blob(rng, radius, 0.3, vertices=16),), "dirt", 0.0, 0, factor)]

    # -- drawing -------------------------------------------------------------------------------
    def layout(
        self,
        centre_x_um: float,
        centre_y_um: float,
        shape: tuple[int, int],
        pixel_um: float,
        margin_px: int = 0,
    ) -> TileLayout:
        """Draw the objects of a tile (rows × cols pixels of ``pixel_um`` around the centre)
        as labels on a canvas ``margin_px`` larger on every side."""
        rows, cols = shape
        m = int(margin_px)
        canvas = np.zeros((rows + 2 * m, cols + 2 * m), np.uint16)
        half_w = (cols / 2 + m) * pixel_um
        half_h = (rows / 2 + m) * pixel_um
        objects = self.objects_in(
            centre_x_um - half_w, centre_y_um - half_h, centre_x_um + half_w, centre_y_um + half_h
        )
        scale = float(1 << _FIXED_POINT_BITS)
        col0 = (cols - 1) / 2 + m  # canvas column of the tile centre
        row0 = (rows - 1) / 2 + m
        drawn: list[DrawnRegion] = []
        for obj in objects:
            for region in obj.regions:
                label = len(drawn) + 1
                if label > np.iinfo(np.uint16).max:
                    break
                pts = [
                    np.stack(
                        [
                            (p[:, 0] - centre_x_um) / pixel_um + col0,
                            (p[:, 1] - centre_y_um) / pixel_um + row0,
                        ],
                        axis=1,
                    )
                    for p in region.polygons_um
                ]
                allp = np.concatenate(pts)
                c0 = max(0, math.floor(allp[:, 0].min()) - 1)
                c1 = min(canvas.shape[1], math.ceil(allp[:, 0].max()) + 2)
                r0 = max(0, math.floor(allp[:, 1].min()) - 1)
                r1 = min(canvas.shape[0], math.ceil(allp[:, 1].max()) + 2)
                if c1 <= c0 or r1 <= r0:
                    continue
                for p in pts:  # one call per piece: a single call would XOR overlaps
                    cv2.fillPoly(
                        canvas,
                        [np.round(p * scale).astype(np.int32)],
                        label,
                        lineType=cv2.LINE_8,
                        shift=_FIXED_POINT_BITS,
                    )
                drawn.append(DrawnRegion(label, obj, region, (r0, r1, c0, c1)))
        # Keep the regions that left pixels (a terrace may cover its base only partly).
        kept = [
            d
            for d in drawn
            if np.any(canvas[d.bbox[0] : d.bbox[1], d.bbox[2] : d.bbox[3]] == d.label)
        ]
        return TileLayout(canvas, kept, m)
