"""Test doubles for time: simulators take an injectable clock and sleep."""

from __future__ import annotations


class FakeClock:
    """A clock that only moves when told to (or when the simulator sleeps on it)."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.t += seconds
