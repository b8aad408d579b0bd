"""A camera frame as a protocol ``image`` message: header and zero-copy pixel buffer.

One place builds the header from a :class:`~scopeflow.devices.protocols.Frame`, for the
acquisition node (which publishes it) and for local scopes (which hand it to in-process
inference), so both see identical messages.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scopeflow.devices.protocols import Frame
from scopeflow.errors import LimitError
from scopeflow.schemas.codec import Message, frame_buffer
from scopeflow.schemas.series import ImageHeader


def frame_header(
    frame: Frame, *, series_id: int, series_unique_id: str, image_id: int, command_seq: int
) -> tuple[ImageHeader, np.ndarray]:
    """The ``image`` header of ``frame`` and its pixels ready to send (C order, little-endian)."""
    pixels = frame_buffer(frame.pixels)
    header = ImageHeader(
        series_id=series_id,
        series_unique_id=series_unique_id,
        image_id=image_id,
        shape=pixels.shape,
        dtype=pixels.dtype.name,
        start_time_ns=frame.start_time_ns,
        stop_time_ns=frame.stop_time_ns,
        monotonic_ns=frame.monotonic_ns,
        command_seq=command_seq,
        state=frame.state,
        truth=frame.truth,
        channel_order=frame.channel_order,
    )
    return header, pixels


def frame_message(frame: Frame, **ids: int | str) -> Message:
    """``frame`` as a decoded ``image`` message, as a consumer of the frame stream sees it."""
    header, pixels = frame_header(frame, **ids)  # type: ignore[arg-type]
    return Message("image", header, (memoryview(pixels).cast("B"),))


class MoveCounter:
    """Counts state-changing commands (focus and stage moves): the ``command_seq`` that frames
    are stamped with, so consumers can tell frames taken before a move from those after."""

    def __init__(self) -> None:
        self.count = 0

    def run(self, move: Callable[[], object]) -> None:
        """Run a move. Once the device has been asked to move, frames after it must not pass
        for frames before it, so the count advances even when the move fails; only a refusal
        before anything moved (LimitError) leaves it."""
        try:
            move()
        except LimitError:
            raise
        except BaseException:
            self.count += 1
            raise
        self.count += 1
