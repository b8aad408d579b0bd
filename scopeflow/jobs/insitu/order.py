"""Results of N workers back in frame order, and the frames whose result never came.

Workers sharing the every-frame stream finish frames out of order (one is busy, the other
free). :class:`InOrder` holds each result until every earlier ``image_id`` has one, then hands
them on in order. A frame whose result has not come ``gap_timeout_s`` after a later one did
(its worker was killed with it queued, or overran) is handed on as *missing* and counted —
reported, never silently skipped; its result, should it still come, is counted as late and
dropped (the consumer has moved past it).

The wait adapts to the workers: slow workers with deep queues finish a frame seconds after a
later one, and a fixed wait would give up on frames that were merely queued. Each gap that
closes teaches the wait (``SPREAD_FACTOR`` × the longest it took), and so does each late
result (``SPREAD_FACTOR`` × how long after its gap opened it came), up to
``max_gap_timeout_s``; a killed worker's frames are still reported, only later.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

T = TypeVar("T")

GAP_TIMEOUT_S = 2.0  # the wait before the workers have shown how far apart they finish
MAX_GAP_TIMEOUT_S = 30.0  # never wait longer: a killed worker's frames are reported by then
SPREAD_FACTOR = 3.0  # wait this many times the longest a closed gap took
GIVEN_UP_KEPT = 10_000  # missing ids remembered, to learn from their late results


class InOrder(Generic[T]):
    """In-order release of results keyed by ``image_id`` (one series)."""

    def __init__(
        self,
        first_id: int = 0,
        gap_timeout_s: float = GAP_TIMEOUT_S,
        max_gap_timeout_s: float = MAX_GAP_TIMEOUT_S,
    ) -> None:
        self.next_id = int(first_id)
        self.gap_timeout_s = float(gap_timeout_s)  # the current wait; grows, see the module
        self.max_gap_timeout_s = max(float(max_gap_timeout_s), self.gap_timeout_s)
        self._held: dict[int, tuple[float, T]] = {}
        self._given_up: dict[int, float] = {}  # missing id → when its gap opened (recent ones)
        self.missing: list[int] = []  # ids given up on, in order
        self.late = 0  # results that came after their id was given up on (dropped)
        self.duplicates = 0  # a second result for an id (dropped)

    def add(self, image_id: int, item: T, now: float | None = None) -> None:
        """A result for ``image_id`` arrived."""
        now = time.monotonic() if now is None else now
        if image_id < self.next_id:
            if image_id in self._given_up:
                self.late += 1  # given up on too soon: wait as long as it took, and more
                self._wait_at_least(SPREAD_FACTOR * (now - self._given_up.pop(image_id)))
            elif image_id in self.missing:  # given up on long ago: late, nothing to learn
                self.late += 1
            else:
                self.duplicates += 1
            return
        if image_id in self._held:
            self.duplicates += 1
            return
        if image_id == self.next_id and self._held:  # a gap closes: how long did it take?
            waited = now - min(t for t, _ in self._held.values())
            self._wait_at_least(SPREAD_FACTOR * waited)
        self._held[image_id] = (now, item)

    def _wait_at_least(self, seconds: float) -> None:
        self.gap_timeout_s = min(self.max_gap_timeout_s, max(self.gap_timeout_s, seconds))

    def ready(self, now: float | None = None) -> list[tuple[int, T | None]]:
        """The results now releasable, in ``image_id`` order; ``None`` for a missing one."""
        now = time.monotonic() if now is None else now
        out: list[tuple[int, T | None]] = []
        while self._held:
            if self.next_id in self._held:
                out.append((self.next_id, self._held.pop(self.next_id)[1]))
                self.next_id += 1
                continue
            # A gap: give up on it once a later result has waited gap_timeout_s.
            oldest_later = min(t for t, _ in self._held.values())
            if now - oldest_later < self.gap_timeout_s:
                break
            self.missing.append(self.next_id)
            self._given_up[self.next_id] = oldest_later
            while len(self._given_up) > GIVEN_UP_KEPT:  # bounded over any series
                del self._given_up[next(iter(self._given_up))]
            out.append((self.next_id, None))
            self.next_id += 1
        return out

    def flush(self) -> list[tuple[int, T | None]]:
        """Everything held, in order, gaps reported missing (the series ended)."""
        return self.ready(now=float("inf"))

    @property
    def held(self) -> int:
        """Results waiting for an earlier one."""
        return len(self._held)
