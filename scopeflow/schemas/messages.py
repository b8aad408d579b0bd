"""Every message kind of the protocol, declared once: its header schema and its buffer count.

Adding a kind (detections, denoised frames) means adding one line here and a section in
``docs/protocol.md``; readers of the same major version skip kinds they do not subscribe to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from scopeflow.schemas.commands import (
    COMMAND_ADAPTER,
    Acquire,
    GetState,
    MoveStage,
    Reply,
    SetBeamShift,
    SetWD,
)
from scopeflow.schemas.results import DetectionsResult, ErrorMessage, FocusEstimate, NodeStatus
from scopeflow.schemas.series import DenoisedHeader, ImageHeader, SeriesEnd, SeriesStart


@dataclass(frozen=True)
class MessageKind:
    """A message kind: the ASCII name sent as part 0, its header schema, its buffer parts."""

    name: str
    adapter: TypeAdapter[Any]
    buffers: int
    channel: str


KINDS: dict[str, MessageKind] = {
    k.name: k
    for k in (
        MessageKind("series_start", TypeAdapter(SeriesStart), 0, "frames"),
        MessageKind("image", TypeAdapter(ImageHeader), 1, "frames"),
        MessageKind("series_end", TypeAdapter(SeriesEnd), 0, "frames"),
        MessageKind("command", COMMAND_ADAPTER, 0, "commands"),
        MessageKind("reply", TypeAdapter(Reply), 0, "commands"),
        MessageKind("error", TypeAdapter(ErrorMessage), 0, "commands"),
        MessageKind("focus", TypeAdapter(FocusEstimate), 0, "results"),
        MessageKind("detections", TypeAdapter(DetectionsResult), 0, "results"),
        MessageKind("denoised", TypeAdapter(DenoisedHeader), 1, "results"),
        MessageKind("status", TypeAdapter(NodeStatus), 0, "any"),
    )
}

KIND_OF_MODEL: dict[type, str] = {
    SeriesStart: "series_start",
    ImageHeader: "image",
    SeriesEnd: "series_end",
    SetWD: "command",
    MoveStage: "command",
    SetBeamShift: "command",
    Acquire: "command",
    GetState: "command",
    Reply: "reply",
    ErrorMessage: "error",
    FocusEstimate: "focus",
    DetectionsResult: "detections",
    DenoisedHeader: "denoised",
    NodeStatus: "status",
}
