"""What a job talks to: a microscope's devices plus the result streams it reads.

A :class:`Scope` moves focus and stage (through the validation layer), takes frames and hands
back typed results of each frame: ``focus`` (:class:`~scopeflow.schemas.results.FocusEstimate`),
``detections`` (:class:`~scopeflow.schemas.results.DetectionsResult`) and ``denoised`` (the
decoded message; ``.array()`` gives the pixels). Two implementations share this interface:
:class:`~scopeflow.scopes.local.LocalScope` (devices in this process, inference in-process) and
:class:`~scopeflow.scopes.remote.RemoteScope` (devices behind the wire protocol, results from
inference nodes). Job code never knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, get_args

from scopeflow.schemas.state import Limits, MicroscopeState

ResultKind = Literal["focus", "detections", "denoised"]
RESULT_KINDS: tuple[str, ...] = get_args(ResultKind)
T = TypeVar("T")


@dataclass(frozen=True)
class ScopeStatus:
    """State and limits, with the counters that tell fresh frames from stale ones.

    ``command_seq`` counts the moves carried out so far in series ``series_unique_id``; a frame
    taken after this status carries at least this count.
    """

    state: MicroscopeState
    limits: Limits
    command_seq: int
    series_unique_id: str


@dataclass(frozen=True)
class Shot:
    """A frame a scope took: its id in the series and the moves carried out before it."""

    image_id: int
    series_unique_id: str
    command_seq: int


class Scope(Protocol):
    """Devices and result streams, local or remote."""

    name: str

    def wait_ready(self, kinds: tuple[str, ...], timeout_s: float) -> ScopeStatus:
        """Block until results of ``kinds`` can flow; PeerTimeout past ``timeout_s``."""

    def status(self) -> ScopeStatus:
        """Current state, limits and counters."""

    def set_focus(self, wd_um: float) -> ScopeStatus:
        """Move the focus drive (validated) and wait until it has settled."""

    def move_stage(self, x_um: float, y_um: float) -> ScopeStatus:
        """Move the XY stage (validated) and wait until it has settled."""

    def snap(self) -> Shot:
        """Take one frame at the current state."""

    def result(self, shot: Shot, kind: str, timeout_s: float) -> Any:
        """The ``kind`` result of ``shot`` (or of a newer frame taken after the same moves)."""

    def compute_later(self, shot: Shot, kinds: tuple[str, ...]) -> None:
        """Start computing the ``kinds`` results of ``shot`` without waiting for them (a remote
        scope's inference nodes do so anyway); ``result`` collects them."""

    def pixels(self, shot: Shot, timeout_s: float) -> Any:
        """The frame of ``shot`` as a numpy array, or None where this scope cannot see frames."""

    def device(self, kind: type[T]) -> T | None:
        """An optional device (Stigmator, BeamShift, Illumination), guarded, or None."""

    def close(self) -> None:
        """Release devices and sockets."""


def check_kinds(kinds: tuple[str, ...]) -> None:
    """Raise ValueError for a result kind no scope serves."""
    unknown = [k for k in kinds if k not in RESULT_KINDS]
    if unknown:
        raise ValueError(f"unknown result kind(s) {unknown}; known: {', '.join(RESULT_KINDS)}")
