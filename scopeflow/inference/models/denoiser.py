"""Denoiser: a small U-Net for SEM fast scans and low-dose in-situ TEM frames, with its runner.

- **Network.** Space-to-depth by 2 (the frame becomes four half-resolution sub-images, as in
  FFDNet: the costly convolutions run on a quarter of the pixels), a 3-level U-Net (two 3×3
  conv + ReLU per level, 16/32/64 channels, max-pool down, 2×2 transposed conv up, skip
  concatenation), a 3×3 conv back to four channels, depth-to-space, and a residual: the network
  predicts ``clean − noisy``. The input side must be a multiple of ``MULTIPLE`` (2 · 2²) = 8;
  the runner reflect-pads to it and crops back.
- **Input.** Two channels: the normalised frame, and a constant plane holding the frame's
  noise level (FFDNet's noise map, reduced to one number): ``log10(σ / scale)`` + 1.5, with σ
  the robust estimate of :func:`noise_level` (the MAD of the finest diagonal Haar detail —
  the same estimate the benchmark gives BM3D and non-local means). Told how noisy the frame
  is, the network need not guess it from content, and leaves clean (high-dose) frames alone.
- **Normalisation** (the frame alone; no dose or detector gain is needed). ``lo`` and ``hi``
  are the 0.5th and 99.5th percentiles of the frame (of a strided subsample of at most
  ~65 k pixels, so it costs about a millisecond at any size); the network sees
  ``(frame − lo) / (hi − lo)`` and its output is mapped back with the same ``lo`` and scale,
  so the result is in the input's DN scale (float32). Integer inputs are clipped to their
  dtype's range on the way out, like the detector that produced them. The statistics are taken
  once per frame, before tiling, so every tile shares them. The Poisson law ties the noise to
  the signal above the detector offset, which the frame alone does not reveal; the network
  learns how the noise varies with brightness from the simulators' range of gains, offsets and
  doses, and the noise-level channel anchors its overall size.
- **Tiling.** Frames whose sides (after padding to the multiple) are both at most ``tile``
  (default 1024, the largest input of the TensorRT profile) go through in one pass; larger
  ones in overlapping tiles of ``tile`` pixels blended over ``overlap`` pixels (default 96).
  :func:`scopeflow.inference.tiling.tiled` gives zero weight to the outer half of the
  overlap, where a tile's artificial edge is within the network's ~48-pixel reach. Tiles start
  on a grid that need not be aligned to ``MULTIPLE``, and the network is only approximately
  shift-invariant, so tiled and untiled results agree to a small fraction of the noise, not
  bit for bit (see ``tests/test_models_denoise.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scopeflow.inference.backends.base import Session
from scopeflow.inference.tiling import tiled

NAME = "denoiser"
INPUT_NAMES = ("image",)
OUTPUT_NAMES = ("denoised",)
DYNAMIC_AXES = {
    "image": {0: "batch", 2: "height", 3: "width"},
    "denoised": {0: "batch", 2: "height", 3: "width"},
}

CHANNELS = (16, 32, 64)  # per U-Net level; multiples of 16 suit ONNX Runtime's blocked kernels
SHUFFLE = 2  # space-to-depth factor at the input
MULTIPLE = SHUFFLE * 2 ** (len(CHANNELS) - 1)  # input sides must be multiples of this
PERCENTILES = (0.5, 99.5)  # robust low/high levels of a frame, for the normalisation
STATS_PIXELS = 65_536  # percentiles and noise level come from about this many pixels
NOISE_OFFSET = 1.5  # the noise channel is log10(σ / scale) + this: about −1 … +1.3 in use
NOISE_FLOOR = 1e-4  # relative σ below this counts as this (noise-free, flat or synthetic)
TILE = 1024  # one pass up to 1024 × 1024: the largest input of the TensorRT profile
OVERLAP = 96  # twice the receptive-field radius (~48 px): the zero-weight edge zone covers it
_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def build(channels: tuple[int, ...] = CHANNELS) -> Any:
    """The torch module: (N, 2, H, W) [normalised frame, noise plane] → (N, 1, H, W)."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    class DenoiserNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sub = SHUFFLE * SHUFFLE
            self.unshuffle = nn.PixelUnshuffle(SHUFFLE)
            self.shuffle = nn.PixelShuffle(SHUFFLE)
            self.pool = nn.MaxPool2d(2)
            self.down = nn.ModuleList()
            prev = 2 * sub  # both input channels, space-to-depth
            for ch in channels[:-1]:
                self.down.append(block(prev, ch))
                prev = ch
            self.bottom = block(prev, channels[-1])
            self.ups = nn.ModuleList()
            self.up = nn.ModuleList()
            prev = channels[-1]
            for ch in reversed(channels[:-1]):
                self.ups.append(nn.ConvTranspose2d(prev, ch, 2, stride=2))
                self.up.append(block(2 * ch, ch))
                prev = ch
            self.head = nn.Conv2d(prev, sub, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.unshuffle(x)
            skips = []
            for level in self.down:
                z = level(z)
                skips.append(z)
                z = self.pool(z)
            z = self.bottom(z)
            for upsample, level, skip in zip(self.ups, self.up, reversed(skips), strict=True):
                z = level(torch.cat([upsample(z), skip], dim=1))
            # Residual: the network predicts the correction to the frame (channel 0).
            return x[:, :1] + self.shuffle(self.head(z))

    return DenoiserNet()


def example_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A normalised noisy frame with its noise plane at the size the runtime is tuned for
    (1, 2, 512, 512), for export, parity checks and the backend timing."""
    image = np.empty((1, 2, 512, 512), np.float32)
    image[0, 0] = rng.uniform(-0.1, 1.1, (512, 512))
    image[0, 1] = noise_channel(0.1)
    return {"image": image}


# -- normalisation ------------------------------------------------------------------------------
def frame_levels(frame: np.ndarray) -> tuple[float, float]:
    """(lo, scale) of a frame: its low percentile and the spread up to its high percentile.

    A flat frame (no spread) gets scale 1, so normalising never divides by zero.
    """
    step = max(1, int(np.ceil(np.sqrt(frame.size / STATS_PIXELS))))
    sample = np.asarray(frame[::step, ::step], np.float32)
    lo, hi = np.percentile(sample, PERCENTILES)
    scale = float(hi - lo)
    if not scale > 0.0:
        scale = 1.0
    return float(lo), scale


def normalise(frame: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Float32 ``(frame − lo) / scale`` and the (lo, scale) that invert it."""
    lo, scale = frame_levels(frame)
    x = np.asarray(frame, np.float32) - np.float32(lo)
    x *= np.float32(1.0 / scale)
    return x, lo, scale


def noise_level(frame: np.ndarray) -> float:
    """Robust noise σ of a frame in its DN: median |finest diagonal Haar detail| / 0.6745
    (Donoho's estimator; edges barely move the median). Frames above ``STATS_PIXELS`` use an
    evenly strided subset of the 2×2 blocks."""
    h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    step = max(1, int(np.ceil(np.sqrt((h * w) / STATS_PIXELS))))
    rows = np.arange(0, h, 2)[::step]
    cols = np.arange(0, w, 2)[::step]
    x = np.asarray(frame, np.float32)
    a, b = x[np.ix_(rows, cols)], x[np.ix_(rows, cols + 1)]
    c, d = x[np.ix_(rows + 1, cols)], x[np.ix_(rows + 1, cols + 1)]
    detail = (a - b - c + d) * np.float32(0.5)
    return float(np.median(np.abs(detail)) / 0.6745)


def noise_channel(relative_sigma: float) -> float:
    """The value of the noise plane for a noise σ relative to the normalisation scale."""
    return float(np.log10(max(relative_sigma, NOISE_FLOOR)) + NOISE_OFFSET)


def network_input(frame: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(2, H, W) float32 network input of a checked frame, and the (lo, scale) to invert."""
    x, lo, scale = normalise(frame)
    planes = np.empty((2, *x.shape), np.float32)
    planes[0] = x
    planes[1] = noise_channel(noise_level(frame) / scale)
    return planes, lo, scale


def check_frame(frame: np.ndarray) -> None:
    """ValueError, saying what is wrong, for anything but a finite (H, W) uint8/uint16/float32
    frame."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"the denoiser takes a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3:
        raise ValueError(
            f"the denoiser takes single-channel (H, W) frames; got shape "
            f"{frame.shape} ({frame.shape[-1]} channels): convert to grey first"
        )
    if frame.ndim != 2:
        raise ValueError(
            f"the denoiser takes (H, W) frames; got {frame.ndim} dimensions (shape {frame.shape})"
        )
    if frame.size == 0:
        raise ValueError(f"the frame is empty (shape {frame.shape})")
    if frame.dtype not in _DTYPES:
        raise ValueError(f"the denoiser takes uint8, uint16 or float32 frames, got {frame.dtype}")
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        raise ValueError("the frame holds NaN or inf pixels")


# -- runner -------------------------------------------------------------------------------------
class Denoiser:
    """Denoises frames with a loaded ``denoiser`` session (any backend).

    ``tile``/``overlap``: frames with a side longer than ``tile`` (after padding to a multiple
    of :data:`MULTIPLE`) go through in overlapping tiles of that size; others in one pass.
    """

    def __init__(self, session: Session, tile: int = TILE, overlap: int = OVERLAP) -> None:
        if tile % MULTIPLE or tile < 2 * MULTIPLE:
            raise ValueError(
                f"tile must be a multiple of {MULTIPLE} and at least {2 * MULTIPLE}, got {tile}"
            )
        if not 0 <= 4 * overlap <= tile:
            raise ValueError(
                f"overlap must be ≥ 0 and at most a quarter of the tile, got "
                f"{overlap} for tile {tile}"
            )
        self.session = session
        self.tile = tile
        self.overlap = overlap

    def denoise(self, frame: np.ndarray) -> np.ndarray:
        """The denoised frame: float32, same shape, in the input's DN scale."""
        check_frame(frame)
        planes, lo, scale = network_input(frame)
        out = tiled(self._run, planes, tile=self.tile, overlap=self.overlap, multiple=MULTIPLE)
        y = out[0]
        y *= np.float32(scale)
        y += np.float32(lo)
        if frame.dtype.kind == "u":  # an integer detector cannot leave its range
            np.clip(y, 0.0, float(np.iinfo(frame.dtype).max), out=y)
        return np.ascontiguousarray(y, np.float32)

    def _run(self, tile: np.ndarray) -> np.ndarray:
        """(2, h, w) network input → (1, h, w) denoised, through the session."""
        batch = np.ascontiguousarray(tile[None], np.float32)
        result = self.session.run({INPUT_NAMES[0]: batch})
        return result[OUTPUT_NAMES[0]][0]
