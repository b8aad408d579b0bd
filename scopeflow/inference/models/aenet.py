"""AENet: focus quality 0–9 and |Δz| in depth-of-field units from one SEM or optical frame.

After Lee et al., Sci Rep 2021 (a CNN on patches, aggregated over the frame), reworked so the
score does not depend on magnification, brightness or contrast:

- **Units.** The defocus is measured in depth-of-field (DoF) units, ``u = |Δz| / DoF``. With
  DoF = pixel / α (DESIGN §5) the blur disk spans ``2u`` pixels at any magnification and α, so
  a network that measures blur in pixels measures ``u``.
- **Levels.** 9 for ``u ≤ 0.5``, 0 for ``u > 30``, and eight log-spaced bands in between (edges
  ``0.5 · 60^(k/8)``: 0.5, 0.83, 1.39, 2.33, 3.87, 6.45, 10.8, 18.0, 30 DoF). The continuous score
  is ``9 − 8·log(u/0.5)/log(60)`` clipped to [0, 9]; the level is its floor. See
  :func:`score_from_dof`.
- **Input.** The frame (RGB → luminance) is cut into a grid of 64×64 patches at two scales: full
  resolution (the ``MAX_PATCHES`` with the highest standard deviation — the ones with structure)
  and the frame averaged 4× down (up to ``MAX_COARSE_PATCHES``), where a blur too wide for a
  full-resolution patch spans a quarter of the pixels. One network with shared weights reads
  both: blur looks the same at any scale, so it measures blur in its patch's own pixels, and the
  runner multiplies a coarse patch's estimate by 4. Each patch is normalised on its own (minus
  mean, over std), which is what makes the result independent of gain and offset.
- **Network** (per patch): five conv layers with batch norm (4×4/2, then 3×3/2 ×3, 3×3/1),
  global average pooling, and three heads: ``log_u`` (log of the effective defocus
  ``sqrt(u² + U0²)`` in the patch's pixels, U0 = 0.25 DoF, the blur floor below which frames
  look alike), ``log_scale`` (log of the Laplace scale of that estimate: the patch's own
  uncertainty, which is large for a flat patch, for a fine patch far out of focus and for a coarse
  patch near focus) and ``orientation`` (the blur ellipse as a doubled-angle vector — the
  astigmatism cue for the sign of Δz that ACNet uses).
- **Aggregation** (numpy, outside the graph): the weighted mean over all patches of ``log_u``
  (at frame scale) and of ``orientation``, with weights ``exp(−2·log_scale)`` (inverse
  variance). Training fits this aggregate too, so a frame's sharp patches learn to outweigh its
  smooth ones (a blurred frame cannot hold sharp detail; a sharp one can hold smooth regions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scopeflow.inference.backends.base import Session
from scopeflow.inference.evaluators import signal_check

NAME = "aenet"
INPUT_NAMES = ("patches",)
OUTPUT_NAMES = ("log_u", "log_scale", "orientation")
DYNAMIC_AXES = {
    "patches": {0: "n"},
    "log_u": {0: "n"},
    "log_scale": {0: "n"},
    "orientation": {0: "n"},
}

PATCH = 64  # pixels per side of a patch
COARSE_FACTOR = 4  # the second scale: the frame averaged 4 × 4 pixels down
MAX_PATCHES = 16  # full-resolution patches per frame (the most structured): bounds the cost
MAX_COARSE_PATCHES = 4
U0_DOF = 0.25  # blur floor: the network estimates sqrt(u² + U0²)
LEVEL_MIN_DOF = 0.5  # level 9 up to here
LEVEL_MAX_DOF = 30.0  # level 0 beyond here
LEVEL_EDGES_DOF = tuple(
    LEVEL_MIN_DOF * (LEVEL_MAX_DOF / LEVEL_MIN_DOF) ** (k / 8) for k in range(9)
)
WIDTHS = (24, 32, 48, 64, 64)  # channels of the conv layers
# Frame-level features handed to ACNet, in this order.
FEATURE_NAMES = ("log_u", "log_u_sigma", "orientation_x", "orientation_y")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 weights for RGB frames
#: TensorRT optimisation profile (min, opt, max) of the patch batch: one frame's patches at most
_FRAME_PATCHES = MAX_PATCHES + MAX_COARSE_PATCHES
TENSORRT_PROFILE = {
    "patches": [
        [1, 1, PATCH, PATCH],
        [_FRAME_PATCHES, 1, PATCH, PATCH],
        [_FRAME_PATCHES, 1, PATCH, PATCH],
    ]
}


# -- level mapping ------------------------------------------------------------------------------
def score_from_dof(u: np.ndarray | float) -> np.ndarray | float:
    """Continuous focus score in [0, 9] for |Δz| = ``u`` DoF (9 in focus, log scale)."""
    u_arr = np.maximum(np.asarray(u, np.float64), 1e-9)
    x = 9.0 - 8.0 * np.log(u_arr / LEVEL_MIN_DOF) / math.log(LEVEL_MAX_DOF / LEVEL_MIN_DOF)
    out = np.clip(x, 0.0, 9.0)
    return float(out) if np.ndim(out) == 0 else out


def level_from_score(score: np.ndarray | float) -> np.ndarray | int:
    """Integer level 0–9 from a score (its floor)."""
    out = np.clip(np.floor(np.asarray(score, np.float64)), 0, 9).astype(np.int64)
    return int(out) if np.ndim(out) == 0 else out


def level_from_dof(u: np.ndarray | float) -> np.ndarray | int:
    """Level 0–9 for |Δz| = ``u`` DoF: 9 for u ≤ 0.5, 0 for u > 30, log-spaced bands between."""
    u_arr = np.asarray(u, np.float64)
    exceeded = (u_arr[..., None] > np.asarray(LEVEL_EDGES_DOF)).sum(axis=-1)
    out = 9 - exceeded
    return int(out) if np.ndim(out) == 0 else out


def log_u_target(u: np.ndarray | float) -> np.ndarray:
    """Training target of the ``log_u`` head for |Δz| = ``u`` DoF."""
    u_arr = np.asarray(u, np.float64)
    return np.log(np.sqrt(u_arr * u_arr + U0_DOF * U0_DOF)).astype(np.float32)


def dof_from_log_u(log_u: np.ndarray | float) -> np.ndarray | float:
    """|Δz| in DoF from the effective-defocus estimate (inverse of :func:`log_u_target`)."""
    eff2 = np.exp(2.0 * np.asarray(log_u, np.float64)) - U0_DOF * U0_DOF
    out = np.sqrt(np.maximum(eff2, 0.0))
    return float(out) if np.ndim(out) == 0 else out


def orientation_target(
    along_px: float, across_px: float, angle_deg: float, sigma_px: float = 0.5
) -> np.ndarray:
    """Training target of the ``orientation`` head: the blur ellipse as a doubled-angle vector.

    Anisotropy (v∥ − v⊥)/(v∥ + v⊥) of the PSF's second moments (disk d²/16 plus the probe's σ²)
    times (cos 2φ, sin 2φ), φ the astigmatism axis from the image x axis towards +y (rows).
    """
    v_along = along_px * along_px / 16.0 + sigma_px * sigma_px
    v_across = across_px * across_px / 16.0 + sigma_px * sigma_px
    a = (v_along - v_across) / (v_along + v_across)
    phi = math.radians(2.0 * angle_deg)
    return np.array([a * math.cos(phi), a * math.sin(phi)], np.float32)


# -- preprocessing ------------------------------------------------------------------------------
def to_luminance(frame: np.ndarray) -> np.ndarray:
    """A validated (H, W) float32 frame from (H, W) or (H, W, 3) integer or float pixels."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if not (np.issubdtype(frame.dtype, np.integer) or np.issubdtype(frame.dtype, np.floating)):
        raise ValueError(f"frame dtype must be integer or float, got {frame.dtype}")
    if frame.ndim == 3:
        if frame.shape[2] != 3:
            raise ValueError(
                f"frame must be (H, W) or (H, W, 3); got {frame.shape[2]} channels "
                f"(shape {frame.shape}): pass RGB or a single channel"
            )
        lum = frame.astype(np.float32) @ _LUMA
    elif frame.ndim == 2:
        lum = frame.astype(np.float32)
    else:
        raise ValueError(f"frame must be (H, W) or (H, W, 3); got shape {frame.shape}")
    h, w = lum.shape
    if h < PATCH or w < PATCH:
        raise ValueError(
            f"frame {h}×{w} is smaller than one {PATCH}×{PATCH} patch; "
            f"AENet needs at least {PATCH} pixels per side"
        )
    if not np.isfinite(lum).all():
        raise ValueError("frame holds NaN or inf pixels; AENet needs finite values")
    return lum


def _normalise(x: np.ndarray, eps: float) -> np.ndarray:
    """Per-patch (…, P, P): minus mean, over std (floored at ``eps``)."""
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    return (x - mean) / np.maximum(std, eps)


def _grid(image: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` highest-std patches of a centred non-overlapping grid, and their corners.

    Ranking by std does not change under gain or offset.
    """
    p = PATCH
    h, w = image.shape
    ny, nx = h // p, w // p
    if ny == 0 or nx == 0 or count == 0:
        return np.zeros((0, p, p), np.float32), np.zeros((0, 2), np.int64)
    y0, x0 = (h - ny * p) // 2, (w - nx * p) // 2
    grid = image[y0 : y0 + ny * p, x0 : x0 + nx * p].reshape(ny, p, nx, p).swapaxes(1, 2)
    grid = grid.reshape(ny * nx, p, p)
    keep = np.sort(np.argsort(-grid.std(axis=(1, 2)), kind="stable")[:count])
    corners = np.stack([y0 + (keep // nx) * p, x0 + (keep % nx) * p], axis=1)
    return grid[keep], corners


def extract_patches(
    lum: np.ndarray, max_patches: int = MAX_PATCHES, max_coarse: int = MAX_COARSE_PATCHES
) -> tuple[np.ndarray, np.ndarray]:
    """Network input from a luminance frame: ((N, 1, P, P) float32, (N,) scale of each patch).

    Scale 1: full-resolution patches; scale ``COARSE_FACTOR``: patches of the frame averaged
    that many pixels down (none when the frame is under 4 × 64 pixels on a side).
    """
    f = COARSE_FACTOR
    fine, _ = _grid(lum, max_patches)
    h, w = lum.shape
    hc, wc = h // f, w // f
    if min(hc, wc) >= PATCH:
        coarse_frame = cv2.resize(lum[: hc * f, : wc * f], (wc, hc), interpolation=cv2.INTER_AREA)
        coarse, _ = _grid(coarse_frame, max_coarse)
    else:
        coarse = np.zeros((0, PATCH, PATCH), np.float32)
    # The std floor scales with the frame, so a flat patch stays flat under any gain.
    eps = 1e-3 * float(lum.std()) + 1e-30
    patches = _normalise(np.concatenate([fine, coarse]), eps)[:, None]
    scales = np.concatenate([np.ones(len(fine)), np.full(len(coarse), float(f))])
    return patches.astype(np.float32), scales


# -- model --------------------------------------------------------------------------------------
def build() -> Any:
    """The torch module: (N, 1, 64, 64) → log_u (N,), log_scale (N,), orientation (N, 2)."""
    import torch
    from torch import nn

    class AENetModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c_in = 1
            for i, c_out in enumerate(WIDTHS):
                if i == 0:
                    # 4×4 at stride 2: overlapping windows keep every pixel pair, so the finest
                    # blur (1–2 px, the top octave) stays visible at a quarter of the cost.
                    conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)
                else:  # 32² → 16² → 8² → 4², then one layer at 4²
                    conv = nn.Conv2d(c_in, c_out, 3, 2 if i < len(WIDTHS) - 1 else 1, 1, bias=False)
                layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(c_in, 4)

        def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feat = self.body(patches).mean(dim=(2, 3))
            out = self.head(feat)
            return out[:, 0], out[:, 1], torch.tanh(out[:, 2:4])

    return AENetModule()


def example_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of normalised random patches."""
    n = MAX_PATCHES + MAX_COARSE_PATCHES
    x = rng.standard_normal((n, 1, PATCH, PATCH)).astype(np.float32)
    return {"patches": x}


# -- runner -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AENetResult:
    """AENet's reading of one frame.

    ``score``: focus quality in [0, 9] (9 in focus; log scale in |Δz|, see the module doc).
    ``level``: its integer band 0–9. ``abs_defocus_dof``: estimated |Δz| in depth-of-field
    units. ``features``: the frame-level vector ACNet consumes, named by ``FEATURE_NAMES``
    (log effective defocus, its uncertainty, blur-ellipse orientation x/y as a doubled-angle
    vector in image axes — x right, y down). ``signal_ok``: False for a blank or saturated frame
    (see :func:`scopeflow.inference.evaluators.signal_check`), whose score means nothing.
    """

    score: float
    level: int
    abs_defocus_dof: float
    features: np.ndarray
    signal_ok: bool


def to_frame_scale(log_u: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per-patch ``log_u`` (in the patch's pixels) as log effective defocus of the frame."""
    u = np.asarray(dof_from_log_u(log_u.astype(np.float64))) * scales
    return np.log(np.sqrt(u * u + U0_DOF * U0_DOF))


def aggregate(
    log_u: np.ndarray, log_scale: np.ndarray, orientation: np.ndarray, scales: np.ndarray
) -> np.ndarray:
    """Frame features (``FEATURE_NAMES``) from per-patch outputs and the patches' scales."""
    frame_log_u = to_frame_scale(log_u, scales)
    ls = np.clip(log_scale.astype(np.float64), -6.0, 6.0)
    w = np.exp(-2.0 * ls)
    w /= w.sum()
    centre = float(np.sum(w * frame_log_u))
    # Uncertainty of the frame estimate: the patches' weighted spread and their own scale,
    # over √(effective number of patches).
    spread = math.sqrt(float(np.sum(w * (frame_log_u - centre) ** 2)))
    n_eff = 1.0 / float(np.sum(w * w))
    sigma = math.hypot(spread, math.exp(float(np.sum(w * ls)))) / math.sqrt(n_eff)
    orient = (w[:, None] * orientation).sum(axis=0)
    return np.array([centre, sigma, orient[0], orient[1]], np.float32)


class AENet:
    """Runs AENet on frames through any backend session (``backends.load("aenet", ...)``)."""

    def __init__(self, session: Session, max_patches: int = MAX_PATCHES) -> None:
        self.session = session
        self.max_patches = max_patches

    def evaluate(self, frame: np.ndarray) -> AENetResult:
        """Score one frame: (H, W) or (H, W, 3), uint8/uint16/float, at least 64×64 pixels.

        Raises ValueError naming the problem for a wrong shape, channel count, dtype, non-finite
        pixels or a frame smaller than a patch.
        """
        lum = to_luminance(frame)
        patches, scales = extract_patches(lum, self.max_patches)
        out = self.session.run({"patches": patches})
        features = aggregate(out["log_u"], out["log_scale"], out["orientation"], scales)
        u = float(dof_from_log_u(features[0]))
        score = float(score_from_dof(u))
        ok = signal_check(frame if frame.ndim == 2 else lum) == "ok"
        return AENetResult(
            score=score,
            level=int(level_from_score(score)),
            abs_defocus_dof=u,
            features=features,
            signal_ok=ok,
        )
