"""Detection benchmark: the flake and particle detectors on held-out simulated data, beside
their classical baselines run in the same process on the same frames.

**Matching** (both detectors): predicted and true masks at full resolution, one-to-one, greedy
by IoU (highest first), a pair counting when IoU ≥ 0.5 and the classes agree. A true flake
instance is the union of one flake's regions that fall in the same class (:func:`flake_truths`).
True objects smaller than a size floor (:data:`FLAKE_MIN_TRUTH_PX`,
:data:`PARTICLE_MIN_TRUTH_PX`: slivers cut by the frame edge, specks below what either method
resolves) are *ignored*: not counted as missed, and a detection matching one is not counted as
false. The rule is the same for the models and the baselines and was fixed before any result
was seen.

**Flakes.** Held-out chips (seeds from ``TEST_SEED``, the default chip: its own mix of
materials and thicknesses) on the training oxides 285 and 90 nm, and on 300 nm oxide, which no
training tile had (``heldout_substrate``). Per class precision / recall / F1; ``f1``: all four
graphene classes pooled (micro-average); ``layer_accuracy``: over graphene flakes matched
class-agnostically (any graphene prediction to any graphene truth), the share whose layer class
(1, 2, 3, thick) is right. ``megapixels_per_s``: end-to-end :meth:`FlakeDetector.detect` on
ONNX Runtime for full 1920×1200 tiles (preprocessing, network, instances, RLE), median.

**Flake baseline: contrast-GMM** (after 2DMatGMM, Uslu et al. 2024). Per-pixel contrast
against the background colour — the same fitted substrate and the same 2× averaging as the
detector, so both see identical inputs — then one scikit-learn ``GaussianMixture`` per class
(background included) fitted on the training tiles' contrast vectors (eroded truth masks).
Pixels are classified by posterior (class likelihood × training prior); a pixel whose best
flake class has a log-likelihood below a rejection threshold is background. Connected
components and the size/score floors are the detector's own. Rejection threshold, pre-smoothing
and size floor are tuned on training tiles for the best pooled graphene F1: a fair setup.

**Particles.** Held-out videos (seeds from ``TEST_SEED`` of the particle trainer; the default
cell, 1024², at 500–5000 e⁻/px), and a held-out material (``heldout``): particles with a
mean free path of 100 nm, lighter than any in training (20–80 nm), so about half the contrast.
**Otsu baseline**: the detector's own background
normalisation, Gaussian smoothing, ``cv2.threshold`` with ``THRESH_OTSU`` (particles are dark),
connected components, a size floor; smoothing and size floor tuned on training scenes.

The sections are in :mod:`.models_detect_flakes` and :mod:`.models_detect_particles`, the
matching and network timing they share in :mod:`.models_detect_common`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scopeflow_lab.bench.models_detect_flakes import flake_section
from scopeflow_lab.bench.models_detect_particles import particle_section


def run(
    quick: bool = False, progress: Callable[[str], None] = print, weights_dir: Path | None = None
) -> dict[str, Any]:
    """``flake_detector`` and ``particle_detector`` sections of ``scopeflow bench models``."""
    return {
        "flake_detector": flake_section(quick, progress, weights_dir),
        "particle_detector": particle_section(quick, progress, weights_dir),
    }
