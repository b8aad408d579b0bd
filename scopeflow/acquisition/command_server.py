"""Carries out validated commands against a ``Microscope`` and builds the replies.

Transport-free: the acquisition node feeds it decoded commands and sends what it returns. Limits
are enforced by the microscope's validating front (``MicroscopeBase``); this layer adds a rate
limit and turns every failure into a typed error with a reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from scopeflow.acquisition.microscope import Frame, Microscope
from scopeflow.errors import DeviceError, RateLimitError, ScopeflowError
from scopeflow.schemas.commands import Acquire, Command, GetState, MoveStage, Reply, SetWD

log = logging.getLogger(__name__)


class TokenBucket:
    """At most ``rate_per_s`` events per second on average, bursts up to ``rate_per_s``."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.clock = clock
        self._tokens = rate_per_s
        self._last = clock()

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class CommandServer:
    """Executes commands; ``publish_frame`` sends an acquired frame and returns its image_id."""

    def __init__(
        self,
        microscope: Microscope,
        publish_frame: Callable[[Frame], int],
        *,
        max_commands_per_s: float = 1000.0,
        frame_subscribers: Callable[[], int] = lambda: 0,
    ) -> None:
        self.microscope = microscope
        self.publish_frame = publish_frame
        self.frame_subscribers = frame_subscribers
        self._bucket = TokenBucket(max_commands_per_s)
        # seq of the last state-changing command carried out; frames carry it as command_seq.
        self.last_move_seq = 0

    def execute(self, cmd: Command) -> Reply:
        """Carry out ``cmd``; raise a ScopeflowError (with its wire code) when it cannot be."""
        if not self._bucket.take():
            raise RateLimitError(
                f"more than {self._bucket.rate:g} commands/s; slow the client down"
            )
        image_id: int | None = None
        try:
            if isinstance(cmd, SetWD):
                self.microscope.set_wd(cmd.wd_um, wait=cmd.wait)
                self.last_move_seq = cmd.seq
            elif isinstance(cmd, MoveStage):
                self.microscope.move_stage(cmd.x_um, cmd.y_um, wait=cmd.wait)
                self.last_move_seq = cmd.seq
            elif isinstance(cmd, Acquire):
                image_id = self.publish_frame(self.microscope.acquire())
            elif not isinstance(cmd, GetState):  # pragma: no cover - the schema is closed
                raise DeviceError(f"command {cmd.command!r} has no handler")
        except ScopeflowError:
            raise
        except Exception as exc:  # a device fault must not kill the node
            log.exception("microscope failed on %s", cmd.command)
            raise DeviceError(f"{cmd.command} failed in the microscope: {exc}") from exc
        return Reply(
            seq=cmd.seq,
            command=cmd.command,
            state=self.microscope.state(),
            limits=self.microscope.limits(),
            image_id=image_id,
            frame_subscribers=self.frame_subscribers(),
        )
