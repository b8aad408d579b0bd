"""Commands to a microscope's command server and the replies that carry the resulting state."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from scopeflow.schemas.base import Header, Int64, SeriesUid
from scopeflow.schemas.state import BeamShiftUm, FocusUm, Limits, MicroscopeState, StageUm

Seq = Annotated[int, Field(ge=1, le=2**63 - 1)]


class _Command(Header):
    seq: Seq = Field(description="Client-chosen, increasing; echoed in the reply.")


class SetWD(_Command):
    """Move the focus actuator (SEM working distance, optical Z) to ``wd_um``."""

    command: Literal["set_wd"] = "set_wd"
    wd_um: FocusUm
    wait: bool = Field(default=True, description="Reply only once the actuator has settled.")


class MoveStage(_Command):
    """Move the stage to absolute coordinates."""

    command: Literal["move_stage"] = "move_stage"
    x_um: StageUm
    y_um: StageUm
    wait: bool = True


class SetBeamShift(_Command):
    """Shift the imaged field electronically (beam / image shift) to absolute (x, y) µm in
    stage coordinates, without moving the stage. Since 1.4; older servers answer
    ``unknown_command``."""

    command: Literal["set_beam_shift"] = "set_beam_shift"
    x_um: BeamShiftUm
    y_um: BeamShiftUm


class Acquire(_Command):
    """Acquire one frame; it is published on the frame stream, the reply names its image_id."""

    command: Literal["acquire"] = "acquire"


class GetState(_Command):
    """Read state and limits without changing anything."""

    command: Literal["get_state"] = "get_state"


Command = Annotated[
    SetWD | MoveStage | SetBeamShift | Acquire | GetState, Field(discriminator="command")
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
COMMAND_NAMES = ("set_wd", "move_stage", "set_beam_shift", "acquire", "get_state")


class Reply(Header):
    """Success reply to a command, carrying the state after it was carried out."""

    seq: Seq
    command: Literal["set_wd", "move_stage", "set_beam_shift", "acquire", "get_state"]
    state: MicroscopeState
    limits: Limits
    command_seq: Int64 = Field(
        description="Server's count of state-changing commands carried out so far; frames "
        "taken after this reply carry a command_seq at least this high."
    )
    image_id: Int64 | None = Field(default=None, description="For acquire: the frame's image_id.")
    series_unique_id: SeriesUid = Field(
        description="The server's current series; command_seq counts within it. For acquire, "
        "the series of the published frame.",
    )
    frame_subscribers: Int64 | None = Field(
        default=None, description="Subscribers on the node's frame stream (readiness check)."
    )
