"""A scope whose devices live in this process and whose inference runs in-process.

Each frame is turned into the same ``image`` message an acquisition node would publish and
handed to the same processors an inference node runs (:mod:`scopeflow.inference.processors`),
so a job sees identical results on a local and a remote scope. Results are computed when a job
asks for them, once per frame and kind.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

from scopeflow.devices.frames import MoveCounter, frame_message
from scopeflow.devices.limits import GuardedMicroscope, guard
from scopeflow.schemas.codec import Message
from scopeflow.schemas.messages import KIND_OF_MODEL
from scopeflow.scopes.base import ScopeStatus, Shot, check_kinds

T = TypeVar("T")

#: The model serving each result kind unless the caller names another.
DEFAULT_MODELS = {"focus": "aenet", "detections": "flake_detector", "denoised": "denoiser"}


class LocalScope:
    """Devices in process (behind the validation layer), inference in process.

    ``models`` maps result kinds to the model serving them (a classical focus metric or a
    shipped model, see :data:`DEFAULT_MODELS`); ``backend`` is the inference backend.
    ``processors`` hands in loaded processors by kind (to share them between scopes).
    ``inference_seconds`` adds up the time spent computing results.
    """

    def __init__(
        self,
        device: Any,
        *,
        models: dict[str, str] | None = None,
        backend: str = "auto",
        series_id: int = 0,
        processors: dict[str, Any] | None = None,
    ) -> None:
        self.devices: GuardedMicroscope = guard(device)
        self.name = self.devices.name
        self.models = {**DEFAULT_MODELS, **(models or {})}
        self.backend = backend
        self.series_id = series_id
        self.series_unique_id = f"{self.name}-{uuid.uuid4().hex[:12]}"
        self._processors: dict[str, Any] = dict(processors or {})
        self.inference_seconds = 0.0
        self._moves = MoveCounter()
        self._next_image_id = 0
        self._frame: tuple[Shot, Message] | None = None
        self._results: dict[str, Any] = {}

    def wait_ready(self, kinds: tuple[str, ...], timeout_s: float) -> ScopeStatus:
        """Load the models serving ``kinds`` (nothing to wait for in process)."""
        check_kinds(kinds)
        for kind in kinds:
            self._processor(kind)
        return self.status()

    def _processor(self, kind: str) -> Any:
        if kind not in self._processors:
            from scopeflow.inference.processors import make_processor

            self._processors[kind] = make_processor(self.models[kind], self.backend)
        return self._processors[kind]

    def status(self) -> ScopeStatus:
        return ScopeStatus(
            self.devices.state(), self.devices.limits(), self._moves.count, self.series_unique_id
        )

    def set_focus(self, wd_um: float) -> ScopeStatus:
        self._moves.run(lambda: self.devices.set_wd(wd_um))
        return self.status()

    def move_stage(self, x_um: float, y_um: float) -> ScopeStatus:
        self._moves.run(lambda: self.devices.move_stage(x_um, y_um))
        return self.status()

    def snap(self) -> Shot:
        frame = self.devices.acquire()
        shot = Shot(self._next_image_id, self.series_unique_id, self._moves.count)
        msg = frame_message(
            frame,
            series_id=self.series_id,
            series_unique_id=self.series_unique_id,
            image_id=shot.image_id,
            command_seq=shot.command_seq,
        )
        self._next_image_id += 1
        self._frame = (shot, msg)
        self._results = {}
        return shot

    def frame(self, shot: Shot) -> Message:
        """The ``image`` message of the last frame taken (pixels: ``.array()``)."""
        if self._frame is None or self._frame[0] != shot:
            raise ValueError(f"image {shot.image_id} is not the last frame this scope took")
        return self._frame[1]

    def pixels(self, shot: Shot, timeout_s: float = 0.0) -> Any:
        """The last frame's pixels (a read-only view)."""
        return self.frame(shot).array()

    def result(self, shot: Shot, kind: str, timeout_s: float = 0.0) -> Any:
        """The ``kind`` result of the last frame, computed in process (once per kind)."""
        msg = self.frame(shot)
        if kind not in self._results:
            t0 = time.perf_counter()
            produced_results = self._processor(kind).process(msg)
            self.inference_seconds += time.perf_counter() - t0
            for header, buffers in produced_results:
                produced = KIND_OF_MODEL[type(header)]
                if produced == "denoised":
                    parts = tuple(memoryview(b).cast("B") for b in buffers)
                    self._results[produced] = Message(produced, header, parts)
                else:
                    self._results[produced] = header
        if kind not in self._results:
            raise ValueError(f"{self.models[kind]} produced no {kind!r} result")
        return self._results[kind]

    def device(self, kind: type[T]) -> T | None:
        return self.devices.device(kind)

    def close(self) -> None:
        self.devices.close()
