"""Series start / image / series end headers, after DECTRIS Stream v2's message names.

An image message is ``[b"image", header-json, pixel-buffer]``; the buffer is the C-ordered,
little-endian array described by ``shape`` and ``dtype``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from scopeflow.schemas.base import Header, Int64, SeriesUid
from scopeflow.schemas.state import MicroscopeState, SimTruth

# dtypes a frame may have on the wire; all little-endian.
FrameDtype = Literal["uint8", "uint16", "uint32", "float32"]
DTYPE_ITEMSIZE: dict[str, int] = {"uint8": 1, "uint16": 2, "uint32": 4, "float32": 4}
MAX_DIM = 65536


class SeriesStart(Header):
    """Announces a series; sent once before its first image."""

    series_id: Int64
    series_unique_id: SeriesUid
    source: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="Adapter that produces the series, e.g. 'simulated-sem'."
    )
    start_time_ns: Int64 = Field(description="Wall clock (UTC epoch) at series start, ns.")
    state: MicroscopeState


class ImageHeader(Header):
    """Header of one frame; the pixels follow as the next message part."""

    series_id: Int64
    series_unique_id: SeriesUid
    image_id: Int64 = Field(description="0-based, increments by one per acquired frame.")
    shape: tuple[int, ...] = Field(description="[height, width] or [height, width, channels].")
    dtype: FrameDtype
    start_time_ns: Int64 = Field(description="Wall clock (UTC epoch) at exposure/scan start, ns.")
    stop_time_ns: Int64 = Field(description="Wall clock (UTC epoch) at exposure/scan end, ns.")
    monotonic_ns: Int64 = Field(description="Host monotonic clock at acquisition end, ns.")
    command_seq: Int64 = Field(
        description="The server's count of state-changing commands (set_wd, move_stage) "
        "carried out before this frame; see docs/protocol.md §5.3."
    )
    state: MicroscopeState
    truth: SimTruth | None = None
    channel_order: Literal["RGB", "BGR"] | None = Field(
        default=None,
        description="Order of the colour channels of a (H, W, 3) frame; None means RGB (the "
        "rule before 1.3). Since 1.3.",
    )

    @field_validator("shape")
    @classmethod
    def _shape_ok(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) not in (2, 3):
            raise ValueError("shape must have 2 or 3 dimensions")
        if any(not 1 <= d <= MAX_DIM for d in shape):
            raise ValueError(f"every dimension must be in [1, {MAX_DIM}]")
        if len(shape) == 3 and shape[2] > 4:
            raise ValueError("at most 4 channels")
        return shape

    @model_validator(mode="after")
    def _times_ordered(self) -> ImageHeader:
        if self.stop_time_ns < self.start_time_ns:
            raise ValueError("stop_time_ns must not precede start_time_ns")
        return self

    @property
    def nbytes(self) -> int:
        """Length the pixel buffer must have."""
        n = DTYPE_ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


class SeriesEnd(Header):
    """Closes a series; ``images`` counts every image the series sent."""

    series_id: Int64
    series_unique_id: SeriesUid
    images: Int64
    stop_time_ns: Int64
    reason: Literal["completed", "stopped", "error"] = "completed"


class DenoisedHeader(ImageHeader):
    """A denoised frame: the source frame's header (its ids, times and state) plus the model
    that produced it; the buffer holds the denoised pixels. Since 1.1."""

    model: Annotated[str, Field(min_length=1, max_length=64)]
