"""ACNet: the next signed WD correction, with a confidence, from AENet's readings of recent frames.

Input: the last ``K`` observations, newest first, each a frame's AENet features and the WD it was
taken at relative to the current WD, packed into one fixed-size vector (``INPUT_SIZE``):

``[axis_known] + K × [valid, offset_dof / OFFSET_SCALE, log_u, log_u_sigma, o_par, o_perp]``

- ``valid``: 1 for a real observation, 0 for an empty slot (all its other entries are 0).
- ``offset_dof``: WD of that frame minus the current WD, in DoF units (0 for the current frame).
- ``log_u``, ``log_u_sigma``: AENet's log effective defocus and its uncertainty.
- ``o_par``, ``o_perp``: the blur-ellipse orientation (AENet's doubled-angle vector) rotated into
  a reference frame. With the astigmatism axis known (``axis_known`` = 1; a property of the column
  that a controller can calibrate once), the reference is that axis: ``o_par`` > 0 means the blur
  is long along the axis, i.e. WD above focus (Δz > 0) — the single-frame sign cue. Unknown axis
  (``axis_known`` = 0): the reference is the current frame's own orientation, so only the
  *change* of orientation between frames (a 90° turn means focus was crossed) carries the sign.

Two frames at different WD resolve the sign without astigmatism: |Δz| and |Δz + step| from
AENet, with the step known. Output (per row): ``correction`` — the move to apply from the current
WD, in DoF (new WD = WD + correction · DoF); ``confidence`` — the predicted probability that
|Δz| after the move is ≤ 0.5 DoF; ``p_positive`` — the probability that the current Δz > 0
(WD above focus), whose distance from ½ says how sure the sign is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scopeflow.inference.backends.base import Session
from scopeflow.inference.models.aenet import AENetResult

NAME = "acnet"
INPUT_NAMES = ("observations",)
OUTPUT_NAMES = ("correction", "confidence", "p_positive")
DYNAMIC_AXES = {
    "observations": {0: "n"},
    "correction": {0: "n"},
    "confidence": {0: "n"},
    "p_positive": {0: "n"},
}

K = 3  # observations used: the current frame and the two before it
SLOT = 6  # values per observation
INPUT_SIZE = 1 + K * SLOT
OFFSET_SCALE = 10.0  # offsets enter in units of 10 DoF
MAG_FLOOR_DOF = 0.25  # the magnitude head predicts log(|Δz| + MAG_FLOOR_DOF)
HIDDEN = 96
#: TensorRT optimisation profile (min, opt, max): one proposal per call, batches for evaluation
TENSORRT_PROFILE = {"observations": [[1, INPUT_SIZE], [1, INPUT_SIZE], [512, INPUT_SIZE]]}


@dataclass(frozen=True)
class Observation:
    """One frame as ACNet sees it: AENet's reading and where the frame was taken.

    ``wd_offset_dof``: that frame's WD minus the *current* WD, in depth-of-field units of the
    current magnification (0 for the current frame; +5 for a frame taken 5 DoF further away).
    """

    result: AENetResult
    wd_offset_dof: float


@dataclass(frozen=True)
class Proposal:
    """ACNet's advice.

    ``correction_dof``: the signed WD move from the current WD, in DoF (new WD = WD +
    correction_dof × DoF). ``confidence``: predicted probability that after the move the specimen
    is within 0.5 DoF of focus. ``sign_confidence``: how sure the direction is, 0.5 (a guess) to 1.
    A proposal with no usable current frame is (0, 0, 0.5).
    """

    correction_dof: float
    confidence: float
    sign_confidence: float


def encode(
    observations: Sequence[Observation], astigmatism_axis_deg: float | None = None
) -> np.ndarray:
    """The (INPUT_SIZE,) float32 input for ``observations`` (oldest first, current last).

    Observations whose frame had no signal are left out; only the newest ``K`` are used.
    """
    usable = [o for o in observations if o.result.signal_ok][-K:][::-1]  # newest first
    x = np.zeros(INPUT_SIZE, np.float32)
    if not usable:
        return x
    if astigmatism_axis_deg is not None:
        x[0] = 1.0
        ref = math.radians(2.0 * astigmatism_axis_deg)
    else:
        o = usable[0].result.features
        ref = math.atan2(float(o[3]), float(o[2]))
    c, s = math.cos(ref), math.sin(ref)
    for k, obs in enumerate(usable):
        f = obs.result.features
        ox, oy = float(f[2]), float(f[3])
        base = 1 + k * SLOT
        x[base : base + SLOT] = (
            1.0,
            obs.wd_offset_dof / OFFSET_SCALE,
            f[0],
            f[1],
            c * ox + s * oy,
            -s * ox + c * oy,
        )
    return x


def _check(observations: Sequence[Observation], astigmatism_axis_deg: float | None) -> None:
    if len(observations) == 0:
        raise ValueError("ACNet needs at least one observation (the current frame)")
    for i, obs in enumerate(observations):
        if not isinstance(obs, Observation):
            raise ValueError(f"observation {i} is a {type(obs).__name__}, not an Observation")
        if not math.isfinite(obs.wd_offset_dof):
            raise ValueError(f"observation {i} has a non-finite WD offset {obs.wd_offset_dof}")
        if not np.isfinite(obs.result.features).all():
            raise ValueError(f"observation {i} has non-finite AENet features")
    if abs(observations[-1].wd_offset_dof) > 1e-6:
        raise ValueError(
            "the last observation must be the current frame (WD offset 0); got "
            f"{observations[-1].wd_offset_dof} DoF"
        )
    if astigmatism_axis_deg is not None and not math.isfinite(astigmatism_axis_deg):
        raise ValueError(f"astigmatism_axis_deg must be finite or None, got {astigmatism_axis_deg}")


class ACNet:
    """Runs ACNet through any backend session (``backends.load("acnet", ...)``)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def propose(
        self, observations: Sequence[Observation], astigmatism_axis_deg: float | None = None
    ) -> Proposal:
        """The next WD correction from ``observations`` (oldest first; the last is the current
        frame, WD offset 0). ``astigmatism_axis_deg``: the column's astigmatism axis when known
        (from the image x axis towards +y), which lets one frame give the sign."""
        _check(observations, astigmatism_axis_deg)
        if not observations[-1].result.signal_ok:
            return Proposal(0.0, 0.0, 0.5)
        x = encode(observations, astigmatism_axis_deg)[None]
        out = self.session.run({"observations": x})
        p = float(out["p_positive"][0])
        return Proposal(
            correction_dof=float(out["correction"][0]),
            confidence=float(out["confidence"][0]),
            sign_confidence=max(p, 1.0 - p),
        )


def build() -> Any:
    """The torch module: (N, INPUT_SIZE) → correction (N,), confidence (N,), p_positive (N,)."""
    import torch
    from torch import nn

    class ACNetModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Linear(INPUT_SIZE, HIDDEN),
                nn.ReLU(),
                nn.Linear(HIDDEN, HIDDEN),
                nn.ReLU(),
                nn.Linear(HIDDEN, HIDDEN),
                nn.ReLU(),
            )
            self.head = nn.Linear(HIDDEN, 3)

        def raw(self, x: torch.Tensor) -> torch.Tensor:
            """(log(|Δz| + floor), sign logit, confidence logit) — what training fits."""
            return self.head(self.body(x))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.raw(x)
            magnitude = torch.relu(torch.exp(out[:, 0]) - MAG_FLOOR_DOF)
            # Δz > 0 means WD above focus: the correction moves down, and vice versa.
            correction = torch.where(out[:, 1] >= 0, -magnitude, magnitude)
            return correction, torch.sigmoid(out[:, 2]), torch.sigmoid(out[:, 1])

    return ACNetModule()


def example_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A small batch of plausible encoded observation vectors."""
    x = rng.standard_normal((4, INPUT_SIZE)).astype(np.float32) * 0.5
    x[:, 0] = (rng.random(4) < 0.5).astype(np.float32)
    for k in range(K):
        x[:, 1 + k * SLOT] = 1.0 if k == 0 else (rng.random(4) < 0.5).astype(np.float32)
    return {"observations": x}
