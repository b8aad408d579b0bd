"""Results published by inference nodes, node status heartbeats, and error messages."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, FiniteFloat

from scopeflow.schemas.base import ClosedModel, Header, Int64, SeriesUid
from scopeflow.schemas.state import MicroscopeState, SimTruth

Signal = Literal["ok", "blank", "saturated"]


class FocusEstimate(Header):
    """A focus-quality estimate for one frame. Higher ``score`` means sharper."""

    series_unique_id: SeriesUid
    image_id: Int64
    command_seq: Int64 = Field(description="Copied from the frame (protocol.md §5.3).")
    evaluator: Annotated[str, Field(min_length=1, max_length=64)]
    score: Annotated[float, Field(ge=0)]
    signal: Signal = Field(description="'ok', or why the frame carries no usable focus signal.")
    monotonic_ns: Int64 = Field(description="Frame's acquisition time (host monotonic), ns.")
    computed_monotonic_ns: Int64 = Field(description="When the estimate was computed, ns.")
    state: MicroscopeState = Field(description="Microscope state when the frame was taken.")
    truth: SimTruth | None = Field(default=None, description="Copied from the frame (simulators).")
    quality_level: Annotated[int, Field(ge=0, le=9)] | None = Field(
        default=None, description="AENet focus quality, 0 (far out) … 9 (in focus). Since 1.1."
    )
    abs_defocus_dof: Annotated[float, Field(ge=0, le=1e4)] | None = Field(
        default=None, description="Estimated |Δz| in depth-of-field units (AENet). Since 1.1."
    )
    aenet_features: tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat] | None = Field(
        default=None,
        description="AENet's frame features for ACNet: log effective defocus, "
        "its uncertainty, blur-ellipse orientation x, y. Since 1.2.",
    )
    sharpness: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="Normalised-variance sharpness of the same frame, sent with "
        "AENet results for the controller's sharpness fit and fallback search. Since 1.2.",
    )
    acnet_correction_dof: Annotated[FiniteFloat, Field(ge=-1e4, le=1e4)] | None = Field(
        default=None,
        description="ACNet's proposed next WD correction, signed, in depth-of-field units, from "
        "this frame and the frames before it on the same field. Since 1.3.",
    )
    acnet_confidence: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="ACNet's confidence in that proposal, 0–1. Since 1.3."
    )


class RleMask(ClosedModel):
    """A binary mask in COCO's compressed RLE (column-major runs, as pycocotools writes)."""

    size: tuple[Annotated[int, Field(ge=1, le=65536)], Annotated[int, Field(ge=1, le=65536)]]
    counts: Annotated[str, Field(min_length=1, max_length=10_000_000)]


class Detection(ClosedModel):
    """One detected object, in pixel coordinates of the frame."""

    category: Annotated[str, Field(min_length=1, max_length=64)]
    score: Annotated[float, Field(ge=0, le=1)]
    bbox_xywh_px: tuple[float, float, float, float]
    centroid_xy_px: tuple[float, float]
    area_px: Annotated[float, Field(ge=0)]
    mask: RleMask | None = None
    attributes: dict[str, float | int | str] = Field(
        default_factory=dict, description="e.g. material, layers (flakes)."
    )


class DetectionsResult(Header):
    """Objects a detector found in one frame. Since 1.1."""

    series_unique_id: SeriesUid
    image_id: Int64
    command_seq: Int64
    model: Annotated[str, Field(min_length=1, max_length=64)]
    monotonic_ns: Int64
    computed_monotonic_ns: Int64
    state: MicroscopeState
    detections: Annotated[list[Detection], Field(max_length=100_000)]
    frame_shape: (
        tuple[Annotated[int, Field(ge=1, le=65536)], Annotated[int, Field(ge=1, le=65536)]] | None
    ) = Field(
        default=None,
        description="(rows, cols) of the frame the pixel coordinates refer to. Since 1.3.",
    )


ResultKind = Literal["focus", "detections", "denoised"]


class NodeStatus(Header):
    """Heartbeat every node publishes about once per second on its output stream.

    Since 1.3 nodes say what they are connected to, so a job can tell that the inference node
    it needs receives this microscope's frames (readiness, protocol.md §5.4): an acquisition
    node names its series, an inference node its model, the result kinds it publishes and the
    series whose frame stream reaches it.
    """

    node: Annotated[str, Field(min_length=1, max_length=64)]
    role: Literal["acquire", "infer", "control"]
    pid: Int64
    uptime_s: Annotated[float, Field(ge=0)]
    monotonic_ns: Int64
    counters: dict[str, Int64]
    series_unique_id: SeriesUid | None = Field(
        default=None, description="acquire: the series it publishes now. Since 1.3."
    )
    model: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="infer: the model it runs. Since 1.3."
    )
    serves: Annotated[list[ResultKind], Field(max_length=8)] | None = Field(
        default=None, description="infer: the result kinds it publishes. Since 1.3."
    )
    frames_from: Annotated[list[SeriesUid], Field(max_length=16)] | None = Field(
        default=None,
        description="infer: the series whose frame stream reached it in the last "
        "FRAMES_FROM_WINDOW_S seconds (their heartbeats or images). Since 1.3.",
    )


#: How long an inference node keeps naming a series it no longer hears from, s.
FRAMES_FROM_WINDOW_S = 5.0


ErrorCode = Literal[
    "bad_json",
    "unknown_kind",
    "unsupported_version",
    "invalid_message",
    "buffer_mismatch",
    "unknown_command",
    "limit",
    "rate_limited",
    "device_error",
    "internal",
]


MAX_REASON = 4096


class ErrorMessage(Header):
    """Answer to a message that could not be carried out."""

    @classmethod
    def about(cls, code: ErrorCode, reason: str, seq: int | None = None) -> ErrorMessage:
        """An error message whose reason is cut to the allowed length (reasons quote input)."""
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 1] + "…"
        if code not in get_args(ErrorCode):
            code = "internal"
        return cls(code=code, reason=reason or code, seq=seq)

    code: ErrorCode
    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON)]
    seq: Int64 | None = Field(default=None, description="seq of the failed command, if known.")
