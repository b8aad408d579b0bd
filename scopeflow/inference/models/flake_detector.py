"""Flake detector: per-pixel classes on optical chip tiles → flakes with material and layer count.

- **Input.** An RGB tile (H, W, 3), 8- or 16-bit (or float in [0, 1] of full scale). It is
  averaged :data:`DOWNSAMPLE`× down (0.59 µm per pixel at 20× on the default camera) and turned
  into the optical *contrast* against the bare substrate, per channel:
  ``(I − black) / (B − black) − 1``, where ``B`` is a robust smooth fit of the substrate
  (:func:`robust_background`: a degree-4 polynomial in log intensity, refitted without the
  pixels that stand out, so flakes do not pull it). The contrast is what carries the thin-film
  physics (Blake et al. 2007); dividing by the local substrate removes the white balance, the
  exposure and the vignetting, so the model carries over between cameras and oxide thicknesses.
- **Network** (:func:`segnet`, shared with the particle detector): a small U-Net. A stride-2
  stem, four levels of two 3×3 conv + batch norm + ReLU, nearest upsampling with skips, and a
  1×1 head that predicts 2×2 sub-pixels per feature pixel (pixel shuffle), so the output has
  the input's resolution while every conv runs at half of it or less. Softmax over
  :data:`CLASSES`.
- **Instances** (numpy, :class:`FlakeDetector`): the per-pixel argmax, connected components of
  each class (8-connected) larger than :data:`MIN_AREA_PX`, each a :class:`Detection` with its
  full-resolution RLE mask, bbox, centroid, area and score (mean probability of its class over
  its pixels); ``attributes`` hold ``material``, ``layers`` (1, 2, 3 or ``"thick"`` for ≥ 4
  layers and bulk; ``"unresolved"`` for hBN) and ``class``. The decoys, tape residue and dirt,
  are classes of their own and are left out unless asked for.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scopeflow.inference.backends.base import Session
from scopeflow.inference.tiling import tiled
from scopeflow.schemas.results import Detection, RleMask

NAME = "flake_detector"
INPUT_NAMES = ("contrast",)
OUTPUT_NAMES = ("probs",)
DYNAMIC_AXES = {
    "contrast": {0: "batch", 2: "height", 3: "width"},
    "probs": {0: "batch", 2: "height", 3: "width"},
}

CLASSES = (
    "background",
    "graphene_1L",
    "graphene_2L",
    "graphene_3L",
    "graphene_thick",
    "hBN_thin",
    "hBN_medium",
    "hBN_thick",
    "MoS2_1L",
    "MoS2_2L",
    "MoS2_thick",
    "WSe2_1L",
    "WSe2_2L",
    "WSe2_thick",
    "residue",
    "dirt",
)
DECOYS = ("residue", "dirt")  # classes the network knows so as not to call them flakes
#: hBN thickness classes, nm: below 3 nm hBN is invisible on SiO₂ (contrast < 0.02) and not a
#: class; 10–50 nm is what encapsulation wants.
HBN_CLASSES_NM = {"hBN_thin": (3.0, 10.0), "hBN_medium": (10.0, 50.0), "hBN_thick": (50.0, None)}
#: material and layer count each class reports (hBN: its thickness class instead of layers)
CLASS_ATTRIBUTES: dict[str, dict[str, str | int]] = {
    "graphene_1L": {"material": "graphene", "layers": 1},
    "graphene_2L": {"material": "graphene", "layers": 2},
    "graphene_3L": {"material": "graphene", "layers": 3},
    "graphene_thick": {"material": "graphene", "layers": "thick"},
    "hBN_thin": {"material": "hBN", "layers": "3-10nm"},
    "hBN_medium": {"material": "hBN", "layers": "10-50nm"},
    "hBN_thick": {"material": "hBN", "layers": ">50nm"},
    "MoS2_1L": {"material": "MoS2", "layers": 1},
    "MoS2_2L": {"material": "MoS2", "layers": 2},
    "MoS2_thick": {"material": "MoS2", "layers": "thick"},
    "WSe2_1L": {"material": "WSe2", "layers": 1},
    "WSe2_2L": {"material": "WSe2", "layers": 2},
    "WSe2_thick": {"material": "WSe2", "layers": "thick"},
    "residue": {"material": "residue", "layers": "unresolved"},
    "dirt": {"material": "dirt", "layers": "unresolved"},
}
DOWNSAMPLE = 2  # the network sees the tile averaged 2× down (0.59 µm/px at 20×, IMX174)
#: The network's pixel, nm: a frame whose pixel size is known is averaged down by the whole
#: factor closest to this (1 at 10×, 2 at 20×, 5 at 50× on the default camera), so flakes
#: look the same size to the network whatever the magnification.
NETWORK_PIXEL_NM = 586.0
MAX_DOWNSAMPLE = 8
WIDTHS = (16, 32, 48, 64)  # channels per U-Net level
MULTIPLE = 2 ** len(WIDTHS)  # stem stride × three poolings: input sides must be multiples
CONTRAST_CLIP = (-1.0, 4.0)  # beyond: saturated bulk or the dark holder; nothing to resolve
CONTRAST_SCALE = 0.03  # the network sees asinh(contrast / 0.03): 1L graphene −0.08 → −1.7
BLACK_LEVEL = 0.01  # camera offset, fraction of full scale (1 % is the simulator's default)
BACKGROUND_CELL_PX = 16  # substrate fit on a grid of 16×16-pixel means (network resolution)
BACKGROUND_DEGREE = 4  # cos⁴ vignetting and oxide gradients are smooth: degree 4 in log
OFF_CHIP_CONTRAST = -0.6  # the holder (reflectance 0.04) against SiO₂/Si (0.1–0.4), mean of RGB
# … and in every channel below this: an oxide can make the substrate itself dark in one
# channel (red on 300 nm SiO₂ under a warm LED: the holder is then only −0.53 there).
OFF_CHIP_CHANNEL_CONTRAST = -0.4
OFF_CHIP_FRACTION = 0.02  # … as a region touching the frame edge, ≥ 2 % of the frame
MIN_AREA_PX = 25  # least component area, network pixels (100 px, 8.6 µm² at full resolution)
MIN_AREA_UM2 = 8.6  # … the same in µm², when the pixel size is known
MIN_SCORE = 0.6  # least mean class probability (chosen on validation chips, pooled F1)
TILE = 1024  # largest network input side in one pass (a 1920×1200 tile is 960×600)
OVERLAP = 64  # ≥ the U-Net's effective reach: tiled = one pass within 0.02 (tests)
MIN_SIDE_PX = 32
#: TensorRT optimisation profile (min, opt, max): a 1920×1200 tile is 960×608 once padded
TENSORRT_PROFILE = {"contrast": [[1, 3, MULTIPLE, MULTIPLE], [1, 3, 608, 960], [1, 3, TILE, TILE]]}


# -- the network (torch only here) ---------------------------------------------------------------
@functools.cache
def _segnet_class() -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    class SegNet(nn.Module):
        """U-Net with a stride-2 stem and a pixel-shuffle head; softmax class probabilities."""

        def __init__(
            self,
            in_channels: int,
            classes: int,
            widths: tuple[int, ...],
            clip: tuple[float, float],
            scale: float,
        ) -> None:
            super().__init__()
            w = widths
            self.clip = clip
            self.scale = scale
            self.stem = nn.Sequential(*conv(in_channels, w[0], 2), *conv(w[0], w[0]))
            self.down = nn.ModuleList(
                nn.Sequential(*conv(w[i], w[i + 1]), *conv(w[i + 1], w[i + 1]))
                for i in range(len(w) - 1)
            )
            self.up = nn.ModuleList(
                nn.Sequential(*conv(w[i + 1] + w[i], w[i]), *conv(w[i], w[i]))
                for i in reversed(range(len(w) - 1))
            )
            self.head = nn.Conv2d(w[0], classes * 4, 1)
            self.shuffle = nn.PixelShuffle(2)
            # A per-pixel path at full resolution: the colour of the pixel itself, added to
            # the context path's logits (fine contrast steps survive the stride-2 stem).
            self.pixel = nn.Sequential(
                nn.Conv2d(in_channels, 16, 1), nn.ReLU(inplace=True), nn.Conv2d(16, classes, 1)
            )

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            # asinh(c / scale): linear for faint contrast (monolayers, thin hBN: what must be
            # told apart finely), logarithmic for bright bulk flakes, so neither dominates.
            z = torch.clamp(x, self.clip[0], self.clip[1]) * (1.0 / self.scale)
            # asinh spelled out: the ONNX exporter has no Asinh for opset 17.
            x = torch.sign(z) * torch.log(torch.abs(z) + torch.sqrt(z * z + 1.0))
            pixel = self.pixel(x)
            x = self.stem(x)
            skips = [x]
            for down in self.down:
                x = down(F.max_pool2d(x, 2))
                skips.append(x)
            skips.pop()
            for up in self.up:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = up(torch.cat([x, skips.pop()], dim=1))
            return self.shuffle(self.head(x)) + pixel

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Softmax spelled out: ONNX Runtime's Softmax over the channel axis of NCHW
            # transposes the tensor and costs more than the whole decoder.
            z = self.logits(x)
            e = torch.exp(z - z.amax(dim=1, keepdim=True))
            return e / e.sum(dim=1, keepdim=True)

    return SegNet


def segnet(
    in_channels: int,
    classes: int,
    widths: tuple[int, ...] = WIDTHS,
    clip: tuple[float, float] = CONTRAST_CLIP,
    scale: float = CONTRAST_SCALE,
) -> Any:
    """The segmentation U-Net (torch module): (N, in, H, W) → (N, classes, H, W) probabilities;
    ``.logits(x)`` for training. The input is clipped to ``clip`` and compressed as
    asinh(x / ``scale``). H and W must be multiples of ``2 ** len(widths)``."""
    return _segnet_class()(in_channels, classes, tuple(widths), tuple(clip), float(scale))


def build() -> Any:
    """The flake network (torch), untrained."""
    return segnet(3, len(CLASSES))


def example_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random contrast map the size of one 1920×1200 tile at network resolution (float32),
    for export, parity checks and backend timings."""
    return {"contrast": rng.normal(0.0, 0.2, (1, 3, 608, 960)).astype(np.float32)}


# -- preprocessing ---------------------------------------------------------------------------------
def as_unit_float(frame: np.ndarray, channels: int) -> np.ndarray:
    """Validate a frame and return it as float32 in units of full scale.

    ``channels`` 3: (H, W, 3) RGB; 1: (H, W). uint8 and uint16 are divided by their full
    scale; float frames are taken as already in [0, 1] of full scale and must be finite.
    """
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if channels == 3 and not (frame.ndim == 3 and frame.shape[2] == 3):
        raise ValueError(
            f"expected an RGB frame of shape (H, W, 3), got shape {frame.shape}: "
            "pass the colour camera's frame, not a single channel"
        )
    if channels == 1 and frame.ndim != 2:
        raise ValueError(
            f"expected a single-channel frame of shape (H, W), got shape "
            f"{frame.shape}: pass one camera frame"
        )
    if min(frame.shape[:2]) < MIN_SIDE_PX:
        raise ValueError(f"frame {frame.shape[:2]} is smaller than {MIN_SIDE_PX} px on a side")
    if frame.dtype in (np.uint8, np.uint16):
        return frame.astype(np.float32) * np.float32(1.0 / np.iinfo(frame.dtype).max)
    if frame.dtype in (np.float32, np.float64):
        if not np.isfinite(frame).all():
            raise ValueError("frame holds NaN or inf pixels; drop or repair the frame")
        return frame.astype(np.float32, copy=False)
    raise ValueError(f"unsupported pixel type {frame.dtype}: use uint8, uint16 or float")


def _powers(degree: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]


def _scaled(n: int, coords: np.ndarray) -> np.ndarray:
    """Pixel coordinates along an axis of ``n`` pixels mapped to [−1, 1]."""
    return coords / max((n - 1) / 2, 0.5) - 1.0


def _substrate_level(logs: np.ndarray, bin_width: float = 0.05) -> np.ndarray:
    """The log level (per channel) of the bare substrate among cells (n, C): the cells of the
    commonest brightness, all channels together (per-channel modes can come from different
    regions and describe no cell). Where two brightness levels are about as common (≥ half the
    fullest), the brighter: a tile half over the dark holder beyond the chip edge."""
    lum = logs.mean(axis=1)
    edges = np.arange(lum.min(), lum.max() + 2 * bin_width, bin_width)
    counts, edges = np.histogram(lum, edges)
    k = int(np.flatnonzero(counts >= 0.5 * counts.max())[-1])
    near = np.abs(lum - 0.5 * (edges[k] + edges[k + 1])) <= 1.5 * bin_width
    return np.median(logs[near], axis=0)


def robust_background(
    image: np.ndarray,
    *,
    cell: int,
    degree: int,
    iterations: int = 5,
    k_sigma: float = 3.0,
    floor: float = 0.01,
) -> np.ndarray:
    """A smooth fit of the bare background of ``image`` (H, W, C) > 0, same shape.

    The image is averaged into ``cell``-pixel cells; log intensity is fitted per channel with a
    polynomial of ``degree`` in x and y, then refitted on the cells whose residuals in every
    channel stay within ``k_sigma`` robust standard deviations (at least ``floor``, 1 % in
    intensity): objects leave the fit, the smooth substrate stays. The polynomial is evaluated
    at every pixel (separably, as (rows × terms) · coefficients · (terms × columns)).
    """
    h, w, c = image.shape
    powers = _powers(degree)
    # Enough cells for the fit to start (3 per term) even on a small frame, at most a pixel each.
    least = math.ceil(math.sqrt(3 * len(powers)))
    gh = min(h, max(h // cell, degree + 2, least))
    gw = min(w, max(w // cell, degree + 2, least))
    coarse = cv2.resize(image, (gw, gh), interpolation=cv2.INTER_AREA).reshape(gh * gw, c)
    # Cell centres in frame pixels, where INTER_AREA puts them.
    ys = _scaled(h, (np.arange(gh) + 0.5) * h / gh - 0.5)
    xs = _scaled(w, (np.arange(gw) + 0.5) * w / gw - 0.5)
    gx, gy = np.meshgrid(xs, ys)
    design = np.stack([gx.ravel() ** i * gy.ravel() ** j for i, j in powers], axis=1)
    logs = np.log(np.maximum(coarse, 1e-6))
    # Start from the commonest level (the histogram's peak, per channel) rather than from all
    # cells: a chip edge with the dark holder beyond it, or a bulk flake, can cover a third of
    # a tile and would drag a first least-squares fit.
    inliers = np.all(np.abs(logs - _substrate_level(logs)) < 0.3, axis=1)  # ±30 %: vignetting
    # A flat start (the typical level), kept if too few cells ever qualify for a fit.
    coef = np.zeros((len(powers), c))
    coef[powers.index((0, 0))] = np.median(logs, axis=0)
    for _ in range(iterations):
        if inliers.sum() < 3 * len(powers):
            break
        # Normal equations by einsum: LAPACK's lstsq on this small system spends most of its
        # time waking BLAS threads, which on a busy machine costs more than the fit.
        a, v = design[inliers], logs[inliers]
        coef = np.linalg.solve(np.einsum("ni,nj->ij", a, a), np.einsum("ni,nc->ic", a, v))
        resid = logs - np.einsum("ni,ic->nc", design, coef)
        sigma = 1.4826 * np.median(np.abs(resid[inliers]), axis=0)
        inliers = np.all(np.abs(resid) <= np.maximum(k_sigma * sigma, floor), axis=1)
    xp = _scaled(w, np.arange(w, dtype=np.float64))[None, :] ** np.arange(degree + 1)[:, None]
    yp = _scaled(h, np.arange(h, dtype=np.float64))[:, None] ** np.arange(degree + 1)[None, :]
    out = np.empty((h, w, c), np.float32)
    for ch in range(c):
        square = np.zeros((degree + 1, degree + 1))  # [j (y power), i (x power)]
        for (i, j), value in zip(powers, coef[:, ch], strict=True):
            square[j, i] = value
        # einsum rather than @ here too (no BLAS threads), in float32: the log background
        # needs no more than 1e-6 relative precision.
        log_bg = np.einsum("yj,jx->yx", yp.astype(np.float32), (square @ xp).astype(np.float32))
        out[..., ch] = cv2.exp(log_bg)
    return out


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``×``factor`` blocks; odd edges are padded by replication first."""
    if factor == 1:
        return image
    h, w = image.shape[:2]
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    return cv2.resize(image, ((w + pw) // factor, (h + ph) // factor), interpolation=cv2.INTER_AREA)


FLAKE_MATERIALS = ("graphene", "hBN", "MoS2", "WSe2")


def check_materials(materials: tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """The chip's materials, validated (None: any)."""
    if materials is None:
        return None
    out = tuple(dict.fromkeys(str(m).strip() for m in materials if str(m).strip()))
    unknown = [m for m in out if m not in FLAKE_MATERIALS]
    if unknown or not out:
        raise ValueError(
            f"unknown flake materials {unknown or list(materials)}; "
            f"choose from {', '.join(FLAKE_MATERIALS)}"
        )
    return out


def restrict_to_materials(probs: np.ndarray, materials: tuple[str, ...]) -> np.ndarray:
    """Class probabilities (K, h, w) with the classes of materials not on the chip removed and
    the rest renormalised: a user knows what they exfoliated, and thick flakes of different
    materials can share a colour (interference), which no colour model can tell apart."""
    keep = np.array(
        [
            name == "background"
            or name in DECOYS
            or CLASS_ATTRIBUTES[name]["material"] in materials
            for name in CLASSES
        ]
    )
    out = probs * keep[:, None, None].astype(probs.dtype)
    out /= np.maximum(out.sum(axis=0, keepdims=True), 1e-12)
    return out


def downsample_factor(pixel_size_nm: float | None) -> int:
    """The whole factor that brings a frame of ``pixel_size_nm`` closest to the network's
    pixel (:data:`NETWORK_PIXEL_NM`); :data:`DOWNSAMPLE` when the pixel size is unknown."""
    if pixel_size_nm is None or not math.isfinite(pixel_size_nm) or pixel_size_nm <= 0:
        return DOWNSAMPLE
    return int(min(max(round(NETWORK_PIXEL_NM / pixel_size_nm), 1), MAX_DOWNSAMPLE))


def flake_contrast(
    frame: np.ndarray, black_level: float = BLACK_LEVEL, factor: int = DOWNSAMPLE
) -> np.ndarray:
    """The contrast map (3, h, w) float32 at network resolution (frame ``factor``× down)."""
    unit = as_unit_float(frame, 3)
    small = downsample(unit, factor) - np.float32(black_level)
    small = np.maximum(small, np.float32(0.0))
    background = robust_background(
        np.maximum(small, 1e-4), cell=BACKGROUND_CELL_PX, degree=BACKGROUND_DEGREE
    )
    contrast = small / np.maximum(background, np.float32(1e-4)) - np.float32(1.0)
    contrast[off_chip(contrast)] = 0.0  # the holder is not a flake: show it as bare substrate
    return np.ascontiguousarray(contrast.transpose(2, 0, 1))


def off_chip(contrast: np.ndarray) -> np.ndarray:
    """Where the tile looks past the chip edge onto the dark holder: regions darker than
    :data:`OFF_CHIP_CONTRAST` on average (and :data:`OFF_CHIP_CHANNEL_CONTRAST` in every
    channel) that touch the frame edge and cover at least
    :data:`OFF_CHIP_FRACTION` of it (dirt, the only other object that dark, is a few µm),
    grown by 2 pixels to take in the partial pixels along the chip edge."""
    dark = (np.all(contrast < OFF_CHIP_CHANNEL_CONTRAST, axis=2)) & (
        contrast.mean(axis=2) < OFF_CHIP_CONTRAST
    )
    dark = dark.view(np.uint8)
    h, w = dark.shape
    out = np.zeros((h, w), bool)
    if np.count_nonzero(dark) < OFF_CHIP_FRACTION * h * w:
        return out  # too little to be the holder (the usual case: no labelling needed)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        touches = x == 0 or y == 0 or x + bw == w or y + bh == h
        if touches and area >= OFF_CHIP_FRACTION * h * w:
            out |= labels == i
    if out.any():  # and the pixels the chip edge itself cuts
        out = cv2.dilate(out.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool)
    return out


# -- instances -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Component:
    """One connected component at network resolution: class index, bbox (x, y, w, h) and
    its mask inside the bbox, and its score."""

    class_index: int
    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    score: float


def components(
    probs: np.ndarray,
    class_map: np.ndarray,
    classes: tuple[int, ...],
    min_area: int,
    min_score: float,
) -> list[Component]:
    """Connected components (8-connected) of each class in ``classes`` of ``class_map``."""
    found = []
    for k in classes:
        present = class_map == k
        rows, cols = np.flatnonzero(present.any(axis=1)), np.flatnonzero(present.any(axis=0))
        if rows.size == 0:
            continue
        # Label only the box the class occupies: most classes cover a sliver of the frame.
        r0, c0 = int(rows[0]), int(cols[0])
        box = np.ascontiguousarray(present[r0 : rows[-1] + 1, c0 : cols[-1] + 1]).view(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8)
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < min_area:
                continue
            mask = labels[y : y + h, x : x + w] == i
            x, y = x + c0, y + r0
            score = float(probs[k, y : y + h, x : x + w][mask].mean())
            if score >= min_score:
                found.append(Component(k, (x, y, w, h), mask, score))
    return found


#: A component at most this many network pixels from its own edge everywhere (≤ ~2.4 µm
#: wide at 20×) that lies mostly along a stronger flake is that flake's blurred edge.
RIM_HALF_WIDTH_PX = 2
RIM_FRACTION = 0.6


def is_rim(comp: Component, class_map: np.ndarray, contrast: np.ndarray) -> bool:
    """Whether ``comp`` is the blurred edge of a neighbouring, stronger object rather than a
    flake: thin everywhere (distance to its own edge ≤ :data:`RIM_HALF_WIDTH_PX`), at least
    :data:`RIM_FRACTION` of it within 2 pixels of another non-background class, and that
    neighbour's contrast stronger than its own. An edge blurs from the flake's colour to the
    substrate's, so it passes through the colours of thinner classes (a bilayer's edge looks
    like a monolayer); a real thin flake is wider than the blur or stands alone."""
    x, y, w, h = comp.bbox
    own = np.pad(comp.mask.astype(np.uint8), 1)
    if cv2.distanceTransform(own, cv2.DIST_L2, 3).max() > RIM_HALF_WIDTH_PX + 0.5:
        return False
    pad = 3
    hh, ww = class_map.shape
    y0, y1, x0, x1 = max(0, y - pad), min(hh, y + h + pad), max(0, x - pad), min(ww, x + w + pad)
    window = class_map[y0:y1, x0:x1]
    mine = np.zeros(window.shape, bool)
    mine[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = comp.mask
    other = (window != comp.class_index) & (window != 0) & ~mine
    if not other.any():
        return False
    near = cv2.dilate(other.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if (mine & near).sum() < RIM_FRACTION * mine.sum():
        return False
    c = contrast[:, y0:y1, x0:x1]
    strength = np.sqrt((c * c).sum(axis=0))
    ring = cv2.dilate(mine.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return float(np.median(strength[other & ring])) > float(np.median(strength[mine]))


def component_statistics(
    comp: Component, probs: np.ndarray, contrast: np.ndarray
) -> dict[str, float]:
    """Per-flake figures over the component's mask at network resolution: the mean probability
    of each class, the probability it is not a flake, and the contrast per channel (R, G, B)."""
    x, y, w, h = comp.bbox
    p = probs[:, y : y + h, x : x + w][:, comp.mask].mean(axis=1)
    c = contrast[:, y : y + h, x : x + w][:, comp.mask]
    out = {f"p_{name}": round(float(v), 4) for name, v in zip(CLASSES, p, strict=True)}
    not_flake = ("background", *DECOYS)
    out["p_false_positive"] = round(float(sum(p[CLASSES.index(n)] for n in not_flake)), 4)
    for k, channel in enumerate("rgb"):
        out[f"contrast_{channel}"] = round(float(c[k].mean()), 4)
        out[f"contrast_{channel}_std"] = round(float(c[k].std()), 4)
    return out


def rle_from_crop(crop: np.ndarray, row0: int, col0: int, shape: tuple[int, int]) -> RleMask:
    """COCO compressed RLE of a full-frame mask that is zero outside ``crop`` at (row0, col0)."""
    from pycocotools import mask as mask_utils

    h, w = shape
    ch, cw = crop.shape
    strip = np.zeros((h, cw), np.uint8)
    strip[row0 : row0 + ch] = crop
    flat = strip.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    runs[0] += h * col0  # the all-zero columns before the crop
    after = h * (w - col0 - cw)
    if after:
        if len(runs) % 2 == 1:  # the last run is zeros: extend it
            runs[-1] += after
        else:
            runs = np.concatenate((runs, [after]))
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(r) for r in runs]}, h, w)
    return RleMask(size=(int(h), int(w)), counts=rle["counts"].decode("ascii"))


def detection_from_mask(
    mask: np.ndarray,
    row0: int,
    col0: int,
    shape: tuple[int, int],
    category: str,
    score: float,
    attributes: dict[str, float | int | str],
) -> Detection:
    """A :class:`Detection` from a boolean mask crop placed at (row0, col0) in a frame."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    tight = mask[y0:y1, x0:x1]
    return Detection(
        category=category,
        score=float(min(max(score, 0.0), 1.0)),
        bbox_xywh_px=(float(col0 + x0), float(row0 + y0), float(x1 - x0), float(y1 - y0)),
        centroid_xy_px=(float(col0 + cols.mean()), float(row0 + rows.mean())),
        area_px=float(rows.size),
        mask=rle_from_crop(tight.view(np.uint8), int(row0 + y0), int(col0 + x0), shape),
        attributes=attributes,
    )


def upsample_component(
    comp: Component, factor: int, shape: tuple[int, int]
) -> tuple[np.ndarray, int, int]:
    """A component's mask at full resolution (pixel repeat), cropped to the frame."""
    x, y, _, _ = comp.bbox
    big = np.repeat(np.repeat(comp.mask, factor, axis=0), factor, axis=1)
    r0, c0 = y * factor, x * factor
    big = big[: max(shape[0] - r0, 0), : max(shape[1] - c0, 0)]
    return big, r0, c0


# -- the runner -----------------------------------------------------------------------------------
def segment(
    session: Session, contrast: np.ndarray, *, tile: int, overlap: int, multiple: int
) -> np.ndarray:
    """Class probabilities (K, H, W) of a segmentation network (:func:`segnet`: input
    ``contrast``, output ``probs``) for one (C, H, W) input, in overlapping tiles beyond
    ``tile``."""

    def run(x: np.ndarray) -> np.ndarray:
        return session.run({INPUT_NAMES[0]: np.ascontiguousarray(x[None])})[OUTPUT_NAMES[0]][0]

    return tiled(run, contrast, tile=tile, overlap=overlap, multiple=multiple)


class FlakeDetector:
    """Finds flakes in optical chip tiles with a loaded ``flake_detector`` session.

    ``black_level``: the camera offset as a fraction of full scale. ``include_decoys``: also
    report tape residue and dirt (categories ``"residue"``, ``"dirt"``). ``tile``/``overlap``:
    network-resolution tiling of frames larger than ``tile`` (a 1920×1200 tile: one pass).
    """

    def __init__(
        self,
        session: Session,
        *,
        black_level: float = BLACK_LEVEL,
        min_area_px: int = MIN_AREA_PX,
        min_score: float = MIN_SCORE,
        include_decoys: bool = False,
        tile: int = TILE,
        overlap: int = OVERLAP,
        calibration: Any = None,
        materials: tuple[str, ...] | None = None,
        oxide: float | tuple[float, float] | None = None,
    ) -> None:
        self.session = session
        #: the materials on the chip (None: any); classes of others are never reported
        self.materials = check_materials(materials)
        #: a :class:`~scopeflow.inference.models.flake_calibration.FlakeCalibration` or None
        self.calibration = calibration
        #: with ``oxide`` (nm, or a range to estimate within): the physics prior calibrates
        #: the colours from the chip itself (:mod:`~scopeflow.inference.models.flake_physics`)
        self.self_calibration: Any = None
        if oxide is not None:
            if calibration is not None:
                raise ValueError("give a calibration or an oxide thickness, not both")
            from scopeflow.inference.models.flake_physics import SelfCalibration

            self.self_calibration = SelfCalibration(oxide, self.materials)
        self.black_level = float(black_level)
        self.min_area_px = int(min_area_px)
        self.min_score = float(min_score)
        self.include_decoys = bool(include_decoys)
        self.tile = int(tile)
        self.overlap = int(overlap)

    def restart_self_calibration(self) -> None:
        """Forget what the physics prior learned of the last chip (a new series is a new chip,
        perhaps on another oxide)."""
        if self.self_calibration is not None:
            from scopeflow.inference.models.flake_physics import SelfCalibration

            old = self.self_calibration
            self.self_calibration = SelfCalibration(old.oxide, old.materials, old.net_weight)

    def probabilities(self, frame: np.ndarray, pixel_size_nm: float | None = None) -> np.ndarray:
        """Class probabilities (K, h, w) at network resolution (the frame
        :func:`downsample_factor` × down)."""
        factor = downsample_factor(pixel_size_nm)
        contrast = flake_contrast(frame, self.black_level, factor)
        probs = segment(
            self.session, contrast, tile=self.tile, overlap=self.overlap, multiple=MULTIPLE
        )
        return self._adjusted(probs, contrast)[0]

    def _adjusted(self, probs: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, Any]:
        """The network's probabilities with the chip's materials and the calibration applied,
        and that calibration (None: none)."""
        if self.materials is not None:
            probs = restrict_to_materials(probs, self.materials)
        cal = self.calibration
        if self.self_calibration is not None:
            cal = self.self_calibration.update(probs, contrast)
        if cal is not None:
            probs = cal.adjust(probs, contrast)
            if self.materials is not None:
                probs = restrict_to_materials(probs, self.materials)
        return probs, cal

    def min_area_at(self, factor: int, pixel_size_nm: float | None) -> int:
        """The least component area in network pixels: ``min_area_px`` when the pixel size is
        unknown, else :data:`MIN_AREA_UM2` at this pixel (never under 4 network pixels)."""
        if pixel_size_nm is None or self.min_area_px != MIN_AREA_PX:
            return self.min_area_px
        net_um = factor * pixel_size_nm * 1e-3
        return max(4, round(MIN_AREA_UM2 / net_um**2))

    def detect(self, frame: np.ndarray, pixel_size_nm: float | None = None) -> list[Detection]:
        """Flakes (and decoys if asked) in an RGB tile, as wire-ready detections.

        ``pixel_size_nm`` (from the frame's metadata) sets how far the frame is averaged down
        (:func:`downsample_factor`) and the least flake area; without it the tile is taken
        as the default camera's at 20×. Each detection carries, beside material, layers and
        class, the mean probability of every class over its mask (``p_<class>``), the
        probability that it is no flake at all (``p_false_positive``: background, residue or
        dirt), and its optical contrast against the fitted substrate per channel, mean and
        standard deviation over the mask (``contrast_r`` … ``contrast_b_std``)."""
        factor = downsample_factor(pixel_size_nm)
        contrast = flake_contrast(frame, self.black_level, factor)
        probs = segment(
            self.session, contrast, tile=self.tile, overlap=self.overlap, multiple=MULTIPLE
        )
        probs, cal = self._adjusted(probs, contrast)
        calibration_id = cal.id if cal is not None else ""
        oxide = cal.report.get("physics", {}).get("oxide_nm") if cal is not None else None
        class_map = probs.argmax(axis=0).astype(np.uint8)
        wanted = tuple(
            k
            for k, name in enumerate(CLASSES)
            if k > 0 and (self.include_decoys or name not in DECOYS)
        )
        shape = (int(frame.shape[0]), int(frame.shape[1]))
        found = []
        min_area = self.min_area_at(factor, pixel_size_nm)
        for comp in components(probs, class_map, wanted, min_area, self.min_score):
            if is_rim(comp, class_map, contrast):
                continue
            name = CLASSES[comp.class_index]
            attrs = CLASS_ATTRIBUTES[name]
            mask, r0, c0 = upsample_component(comp, factor, shape)
            if not mask.any():
                continue
            found.append(
                detection_from_mask(
                    mask,
                    r0,
                    c0,
                    shape,
                    str(attrs["material"]),
                    comp.score,
                    {
                        "material": attrs["material"],
                        "layers": attrs["layers"],
                        "class": name,
                        "calibration_id": calibration_id,
                        **({"oxide_nm": oxide} if oxide is not None else {}),
                        **component_statistics(comp, probs, contrast),
                    },
                )
            )
        return found
