"""A scope whose devices live in this process and whose inference runs in-process.

Each frame is turned into the same ``image`` message an acquisition node would publish and
handed to the same processors an inference node runs (:mod:`scopeflow.inference.processors`),
so a job sees identical results on a local and a remote scope. Results are computed when a job
asks for them, once per frame and kind.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, TypeVar

from scopeflow.devices.frames import MoveCounter, frame_message
from scopeflow.devices.limits import GuardedMicroscope, guard
from scopeflow.schemas.codec import Message
from scopeflow.schemas.messages import KIND_OF_MODEL
from scopeflow.scopes.base import ScopeStatus, Shot, check_kinds

T = TypeVar("T")

KEEP_FRAMES = 8  # frames (and their results) a job may still read after taking newer ones
#: The model serving each result kind unless the caller names another.
DEFAULT_MODELS = {"focus": "aenet", "detections": "flake_detector", "denoised": "denoiser"}


class LocalScope:
    """Devices in process (behind the validation layer), inference in process.

    ``models`` maps result kinds to the model serving them (a classical focus metric or a
    shipped model, see :data:`DEFAULT_MODELS`); ``backend`` is the inference backend.
    ``processors`` hands in loaded processors by kind (to share them between scopes).
    ``calibration``: the detector's setup calibration folder; ``materials``: the flake
    materials on the chip and ``oxide`` its SiO₂ thickness (nm, ``LO-HI`` or ``auto``: the
    physics prior; flake detector only).
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
        calibration: str | None = None,
        materials: tuple[str, ...] | None = None,
        oxide: str | None = None,
    ) -> None:
        self.devices: GuardedMicroscope = guard(device)
        self.name = self.devices.name
        self.models = {**DEFAULT_MODELS, **(models or {})}
        self.backend = backend
        self.calibration = calibration
        self.materials = materials
        self.oxide = oxide
        self.series_id = series_id
        self.series_unique_id = f"{self.name}-{uuid.uuid4().hex[:12]}"
        self._processors: dict[str, Any] = dict(processors or {})
        self.inference_seconds = 0.0
        self._moves = MoveCounter()
        self._next_image_id = 0
        self._frames: OrderedDict[int, tuple[Shot, Message]] = OrderedDict()
        self._results: dict[tuple[int, str], Future] = {}
        self._later: set[tuple[int, str]] = set()  # started by compute_later, not yet collected
        self._workers: list[threading.Thread] = []  # compute_later's threads, joined by close()

    def wait_ready(self, kinds: tuple[str, ...], timeout_s: float) -> ScopeStatus:
        """Load the models serving ``kinds`` (nothing to wait for in process)."""
        check_kinds(kinds)
        for kind in kinds:
            self._processor(kind)
        return self.status()

    def _processor(self, kind: str) -> Any:
        if kind not in self._processors:
            from scopeflow.inference.processors import make_processor

            flakes = kind == "detections" and self.models[kind] == "flake_detector"
            self._processors[kind] = make_processor(
                self.models[kind],
                self.backend,
                calibration=self.calibration if flakes else None,
                materials=self.materials if flakes else None,
                oxide=self.oxide if flakes else None,
            )
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
        self._frames[shot.image_id] = (shot, msg)
        while len(self._frames) > KEEP_FRAMES:  # with their results, but not those asked
            old, _ = self._frames.popitem(last=False)  # for later (kept until collected)
            for key in [k for k in self._results if k[0] == old and k not in self._later]:
                del self._results[key]
        return shot

    def frame(self, shot: Shot) -> Message:
        """The ``image`` message of one of the last frames taken (pixels: ``.array()``)."""
        kept = self._frames.get(shot.image_id)
        if kept is None or kept[0] != shot:
            raise ValueError(f"image {shot.image_id} is no longer held by this scope")
        return kept[1]

    def compute_later(self, shot: Shot, kinds: tuple[str, ...]) -> None:
        """Compute ``kinds`` of ``shot`` in a background thread while the job goes on (the
        models release the interpreter while they run, so this uses the second core)."""
        msg = self.frame(shot)
        for kind in kinds:
            key = (shot.image_id, kind)
            if key in self._results:
                continue
            future: Future = Future()
            self._results[key] = future
            self._later.add(key)
            worker = threading.Thread(
                target=self._compute, args=(msg, kind, future), name=f"scope-{kind}", daemon=True
            )
            worker.start()
            self._workers = [w for w in self._workers if w.is_alive()] + [worker]

    def pixels(self, shot: Shot, timeout_s: float = 0.0) -> Any:
        """The last frame's pixels (a read-only view)."""
        return self.frame(shot).array()

    def result(self, shot: Shot, kind: str, timeout_s: float = 0.0) -> Any:
        """The ``kind`` result of one of the last frames, computed in process once per kind
        (waited for when it is being computed in the background)."""
        key = (shot.image_id, kind)
        if key in self._later:  # computed in the background: collected once
            self._later.discard(key)
            return self._results.pop(key).result()
        if key not in self._results:
            future: Future = Future()
            self._results[key] = future
            self._compute(self.frame(shot), kind, future)
        return self._results[key].result()

    def _compute(self, msg: Message, kind: str, future: Future) -> None:
        """Run the processor serving ``kind`` on ``msg`` and settle ``future`` with the result
        (or the exception, which ``result`` raises in the job's thread)."""
        try:
            t0 = time.perf_counter()
            produced = self._processor(kind).process(msg)
            self.inference_seconds += time.perf_counter() - t0
            for header, buffers in produced:
                if KIND_OF_MODEL[type(header)] != kind:
                    continue
                if kind == "denoised":
                    parts = tuple(memoryview(b).cast("B") for b in buffers)
                    future.set_result(Message(kind, header, parts))
                else:
                    future.set_result(header)
                return
            raise ValueError(f"{self.models[kind]} produced no {kind!r} result")
        except BaseException as exc:  # handed to the job's thread, not lost in this one
            future.set_exception(exc)

    def device(self, kind: type[T]) -> T | None:
        return self.devices.device(kind)

    def close(self, join_timeout_s: float = 60.0) -> None:
        """Wait for background computations, then close the devices. A daemon thread still
        inside a model's native code when the interpreter exits is torn down mid-frame, and
        the C++ runtime aborts the process ("exception not rethrown"): a Ctrl-C during a
        flake search must end with exit code 130 and its files written, not a core dump."""
        deadline = time.monotonic() + join_timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = [w for w in self._workers if w.is_alive()]
        self.devices.close()
