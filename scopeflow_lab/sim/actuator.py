"""The simulators' one actuator model: a focus drive or a stage axis.

A first-order approach to the goal that is declared settled (and snaps to the goal) after the
move time, ``settle_s`` plus travel at ``speed_um_per_s`` when a speed is given; within e⁻⁵
(0.7 %) of the step by then. Backlash on reversals: exact when approached from below,
``backlash_um`` high when approached from above (a play operator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scopeflow.errors import DeviceError

SETTLE_TIME_CONSTANTS = 5.0


@dataclass
class Actuator:
    """One simulated axis; times are the simulator's clock, seconds."""

    settle_s: float
    backlash_um: float
    speed_um_per_s: float | None
    start_um: float  # actual position when the last command arrived
    goal_um: float  # where it goes (the command, shifted by backlash)
    target_um: float  # the last command
    commanded_at: float
    duration_s: float = 0.0

    @classmethod
    def at_rest(
        cls,
        position_um: float,
        t: float,
        *,
        settle_s: float,
        backlash_um: float = 0.0,
        speed_um_per_s: float | None = None,
    ) -> Actuator:
        """An axis standing settled at ``position_um`` at time ``t``."""
        return cls(settle_s, backlash_um, speed_um_per_s, position_um, position_um, position_um, t)

    @property
    def settled_at(self) -> float:
        return self.commanded_at + self.duration_s

    def position(self, t: float) -> tuple[float, bool]:
        """(actual position, settled) at time t."""
        if t >= self.settled_at:  # the same comparison the simulators' wait loops make
            return self.goal_um, True
        decay = math.exp(-SETTLE_TIME_CONSTANTS * (t - self.commanded_at) / self.duration_s)
        return self.goal_um + (self.start_um - self.goal_um) * decay, False

    def command(self, target_um: float, t: float) -> None:
        self.start_um, _ = self.position(t)
        self.goal_um = min(max(self.goal_um, target_um), target_um + self.backlash_um)
        self.target_um = target_um
        self.commanded_at = t
        travel = abs(self.goal_um - self.start_um)
        speed = self.speed_um_per_s
        self.duration_s = self.settle_s + (travel / speed if speed else 0.0)


def wait_settled(
    actuators: Iterable[Actuator], clock: Callable[[], float], sleep: Callable[[float], None]
) -> None:
    """Sleep until every actuator has settled; a DeviceError when the clock does not advance
    while sleeping (a fake clock without a matching fake sleep)."""
    axes = tuple(actuators)
    for _ in range(1000):
        remaining = max(a.settled_at for a in axes) - clock()
        if remaining <= 0:
            return
        sleep(remaining)
    raise DeviceError(
        "the actuators never settled: the clock does not advance while sleeping; inject a "
        "sleep() that advances the injected clock"
    )
