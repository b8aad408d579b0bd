"""Carries out validated commands against a microscope and builds the replies.

Transport-free: the acquisition node feeds it decoded commands and sends what it returns. The
microscope is served through :func:`scopeflow.devices.limits.guard`, so every move is checked
before the adapter is touched; a rate limit guards against runaway clients; every failure
becomes a typed error with a reason, and nothing an adapter raises can take the node down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from scopeflow.devices.frames import MoveCounter
from scopeflow.devices.limits import guard
from scopeflow.devices.protocols import BeamShift, Frame, Microscope
from scopeflow.errors import DeviceError, RateLimitError, ScopeflowError
from scopeflow.schemas.commands import (
    Acquire,
    Command,
    GetState,
    MoveStage,
    Reply,
    SetBeamShift,
    SetWD,
)

log = logging.getLogger(__name__)


class TokenBucket:
    """At most ``rate_per_s`` events per second on average, bursts up to max(1, rate)."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0:
            raise ValueError("the rate must be positive")
        self.rate = rate_per_s
        self.capacity = max(1.0, rate_per_s)
        self.clock = clock
        self._tokens = self.capacity
        self._last = clock()

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class CommandServer:
    """Executes commands; ``publish_frame`` sends an acquired frame and returns its image_id.

    ``command_seq`` counts the state-changing commands (``set_wd``, ``move_stage``,
    ``set_beam_shift``) carried out;
    frames are stamped with it so consumers can tell frames taken before a move from those after.
    """

    def __init__(
        self,
        microscope: Microscope,
        publish_frame: Callable[[Frame], int],
        *,
        series_unique_id: str,
        max_commands_per_s: float = 1000.0,
        frame_subscribers: Callable[[], int] = lambda: 0,
    ) -> None:
        self.microscope = guard(microscope)
        self.publish_frame = publish_frame
        self.series_unique_id = series_unique_id
        self.frame_subscribers = frame_subscribers
        self._bucket = TokenBucket(max_commands_per_s)
        self._moves = MoveCounter()

    @property
    def command_seq(self) -> int:
        return self._moves.count

    def execute(self, cmd: Command) -> Reply:
        """Carry out ``cmd``; raise a ScopeflowError (with its wire code) when it cannot be."""
        if not self._bucket.take():
            raise RateLimitError(
                f"more than {self._bucket.rate:g} commands/s; slow the client down"
            )
        image_id: int | None = None
        try:
            if isinstance(cmd, SetWD):
                self._moves.run(lambda: self.microscope.set_wd(cmd.wd_um, wait=cmd.wait))
            elif isinstance(cmd, MoveStage):
                self._moves.run(
                    lambda: self.microscope.move_stage(cmd.x_um, cmd.y_um, wait=cmd.wait)
                )
            elif isinstance(cmd, SetBeamShift):
                shift = self.microscope.device(BeamShift)
                if shift is None:
                    raise DeviceError(f"{self.microscope.name} has no beam shift")
                self._moves.run(lambda: shift.set_beam_shift(cmd.x_um, cmd.y_um))
            elif isinstance(cmd, Acquire):
                image_id = self.publish_frame(self.microscope.acquire())
            elif not isinstance(cmd, GetState):  # pragma: no cover - the schema is closed
                raise DeviceError(f"command {cmd.command!r} has no handler")
            return Reply(
                seq=cmd.seq,
                command=cmd.command,
                state=self.microscope.state(),
                limits=self.microscope.limits(),
                command_seq=self.command_seq,
                image_id=image_id,
                series_unique_id=self.series_unique_id,
                frame_subscribers=self.frame_subscribers(),
            )
        except ScopeflowError:
            raise
        except Exception as exc:  # a device fault must not kill the node
            log.exception("microscope failed on %s", cmd.command)
            raise DeviceError(f"{cmd.command} failed in the microscope: {exc}") from exc
