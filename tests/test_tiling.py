"""Tiled inference: overlapping tiles blend to the untiled result, with no seams."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from scopeflow.inference.tiling import pad_to_multiple, tiled


def local_filter(x: np.ndarray) -> np.ndarray:
    """A stand-in for a convolutional network: a 7×7 smoothing plus a pointwise nonlinearity
    (receptive field 3 px), per channel."""
    out = np.stack([cv2.GaussianBlur(c, (7, 7), 1.5, borderType=cv2.BORDER_REFLECT) for c in x])
    return np.tanh(out)


@pytest.mark.parametrize(("h", "w"), [(300, 420), (257, 129), (64, 1000)])
def test_tiled_equals_untiled(h, w):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (2, h, w)).astype(np.float32)
    # The untiled reference is one pass over the same padded frame, as a model would run it.
    whole = tiled(local_filter, image, tile=4096, overlap=0, multiple=8)
    parts = tiled(local_filter, image, tile=96, overlap=16, multiple=8)
    assert parts.shape == whole.shape
    # Half the overlap (8) exceeds the receptive field (3): the tiles reproduce the whole.
    np.testing.assert_allclose(parts, whole, atol=1e-5)


def test_no_seams_where_tiles_meet():
    image = np.tile(np.linspace(0, 1, 512, dtype=np.float32), (1, 512, 1))
    out = tiled(local_filter, image, tile=128, overlap=24)
    # A smooth ramp stays smooth: no jump anywhere along a row larger than the ramp's own step.
    steps = np.abs(np.diff(out[0, 256]))
    assert steps.max() < 3 * np.median(steps)


def test_small_frames_take_one_pass_and_odd_sizes_are_cropped_back():
    calls = []

    def fn(x):
        calls.append(x.shape)
        return x * 2

    image = np.ones((1, 50, 70), np.float32)
    out = tiled(fn, image, tile=128, overlap=8, multiple=16)
    assert calls == [(1, 64, 80)] and out.shape == (1, 50, 70)
    assert np.all(out == 2)


def test_pad_to_multiple_and_bad_arguments():
    padded, pads = pad_to_multiple(np.zeros((1, 30, 33), np.float32), 8)
    assert padded.shape == (1, 32, 40) and pads == (2, 7)
    with pytest.raises(ValueError, match="overlap"):
        tiled(lambda x: x, np.zeros((1, 8, 8), np.float32), tile=16, overlap=5)
    with pytest.raises(ValueError, match="C, H, W"):
        tiled(lambda x: x, np.zeros((8, 8), np.float32), tile=16, overlap=2)
