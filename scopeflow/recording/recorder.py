"""The recorder node: every frame of the lossless stream into an OME-Zarr v0.5 dataset.

It connects a PULL socket to an acquisition node's lossless PUSH endpoint and writes each
series to its own dataset (:class:`~scopeflow.recording.ome_zarr.OmeZarrWriter`): the first to
``out``, later ones beside it as ``NAME-2.ome.zarr``, ``NAME-3.ome.zarr``, …. What it cannot
record it says, in the dataset and in its counters, never silently:

- frames that never reached it (gaps in ``image_id``): ``frames_lost`` and the lost ranges in
  ``attributes.scopeflow.lost_image_ids``;
- frames the series sent but the recording lacks at its end (``series_end.images``);
- a series whose ``series_start`` it did not see (it joined late): ``series_start_seen: false``.

The recorder never slows the camera by itself: the acquisition node's lossless sender holds
frames for a slow or absent recorder up to its buffer and counts overruns past it
(``docs/recording.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from scopeflow.recording.ome_zarr import OmeZarrWriter, frame_meta_from_header
from scopeflow.runtime import POLL_MS, NodeRuntime
from scopeflow.schemas.codec import Message
from scopeflow.schemas.series import ImageHeader, SeriesEnd, SeriesStart
from scopeflow.transport import endpoints
from scopeflow.transport.streams import LosslessReceiver

log = logging.getLogger(__name__)

MAX_LOST_RANGES = 1000  # lost image-id ranges listed in a dataset (the total is always counted)


@dataclass(frozen=True)
class RecordConfig:
    """Where the recorder reads and writes."""

    lossless_endpoint: str
    out: Path
    capacity: int = 256  # frames queued in the socket before the sender's buffer takes over
    frames_per_chunk: int | None = None
    name: str = "record"


class _Series:
    """One series being recorded: its writer and what it lacks."""

    def __init__(self, writer: OmeZarrWriter, uid: str, start_seen: bool) -> None:
        self.writer = writer
        self.uid = uid
        self.start_seen = start_seen
        self.next_id: int | None = None
        self.failed = False  # the writer failed: the rest of the series is counted, not written
        self.lost = 0
        self.lost_ranges: list[list[int]] = []

    def note_gap(self, image_id: int) -> None:
        """``image_id`` arrived (or, from ``series_end``, is the count): ids skipped before it
        are lost."""
        if self.next_id is not None and image_id > self.next_id:
            self.lost += image_id - self.next_id
            if len(self.lost_ranges) < MAX_LOST_RANGES:
                self.lost_ranges.append([self.next_id, image_id - 1])
        self.next_id = image_id + 1 if self.next_id is None else max(self.next_id, image_id + 1)

    def report(self) -> dict[str, Any]:
        return {
            "series_start_seen": self.start_seen,
            "frames_lost": self.lost,
            "lost_image_ids": self.lost_ranges,
        }


class RecorderNode:
    """Records the lossless stream until :meth:`stop`; see the module doc."""

    def __init__(
        self, config: RecordConfig, ctx: zmq.Context | None = None, metrics_port: int | None = None
    ) -> None:
        self.config = config
        self.out = Path(config.out)
        if self.out.exists():
            raise FileExistsError(f"{self.out} exists: record to a new path (nothing overwritten)")
        self.rt = NodeRuntime(config.name, "record", ctx, metrics_port)
        pull = self.rt.socket(zmq.PULL)
        self.receiver = LosslessReceiver(pull, self.rt.metrics, capacity=config.capacity)
        endpoints.connect(pull, config.lossless_endpoint)
        self.datasets: list[Path] = []  # every dataset started, in order
        self._series: _Series | None = None
        self._starts: dict[str, SeriesStart] = {}

    @property
    def metrics(self):
        return self.rt.metrics

    def stop(self) -> None:
        self.rt.stop()

    def run(self) -> None:
        """Record until stopped; the open dataset is then closed as ``stopped``."""
        try:
            while not self.rt.stopping:
                msg = self.receiver.poll(POLL_MS)
                if msg is not None:
                    self.handle(msg)
        finally:
            self._close("stopped")
            self.rt.close()

    # -- messages -----------------------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        """One message of the lossless stream."""
        header = msg.header
        if isinstance(header, SeriesStart):
            self._starts = {header.series_unique_id: header}  # only the newest is wanted
            if self._series is not None and self._series.uid != header.series_unique_id:
                self._close("incomplete", reason="a new series began before this one ended")
        elif isinstance(header, ImageHeader) and msg.kind == "image":
            self._image(header, msg)
        elif isinstance(header, SeriesEnd):
            series = self._series
            if series is not None and series.uid == header.series_unique_id:
                # Frames after the last one received never showed as a gap: count them too.
                before = series.lost
                series.note_gap(header.images)
                if series.lost > before:
                    self.rt.metrics.inc("frames_lost", series.lost - before)
                recorded = series.writer.appended
                self._close(
                    "complete" if recorded == header.images else "incomplete",
                    images_sent=header.images,
                    end_reason=header.reason,
                )

    def _image(self, header: ImageHeader, msg: Message) -> None:
        series = self._series
        if series is None or series.uid != header.series_unique_id:
            if series is not None:
                self._close("incomplete", reason="frames of another series arrived")
            series = self._series = self._open(header)
        if series.failed:
            self.rt.metrics.inc("frames_not_recorded")
            return
        series.note_gap(header.image_id)
        try:
            series.writer.append(msg.array(), frame_meta_from_header(header))
        except Exception as exc:  # the disk failed: say so once, count the rest, keep serving
            log.error("recording %s failed: %s", series.writer.path, exc)
            self.rt.metrics.inc("recording_errors")
            self.rt.metrics.inc("frames_not_recorded")
            series.failed = True
            series.writer.fail(exc)
            return
        self.rt.metrics.inc("frames_recorded")

    def _open(self, header: ImageHeader) -> _Series:
        start = self._starts.get(header.series_unique_id)
        path = self._next_path()
        attributes: dict[str, Any] = {
            "series_id": header.series_id,
            "series_unique_id": header.series_unique_id,
            "recorder": self.rt.name,
        }
        if start is not None:
            attributes.update(
                source=start.source,
                start_time_ns=start.start_time_ns,
                start_state=start.state.model_dump(mode="json", exclude_none=True),
            )
        writer = OmeZarrWriter(
            path,
            frame_shape=tuple(header.shape),
            dtype=header.dtype,
            pixel_size_nm=header.state.pixel_size_nm,
            frames_per_chunk=self.config.frames_per_chunk,
            attributes=attributes,
        )
        self.datasets.append(path)
        log.info("recording series %s to %s", header.series_unique_id, path)
        return _Series(writer, header.series_unique_id, start is not None)

    def _next_path(self) -> Path:
        if not self.datasets:
            return self.out
        name = self.out.name
        stem, suffix = (name[: -len(".ome.zarr")], ".ome.zarr") if name.endswith(".ome.zarr") else (
            self.out.stem, self.out.suffix)  # fmt: skip
        n = len(self.datasets) + 1
        while (path := self.out.with_name(f"{stem}-{n}{suffix}")).exists():
            n += 1
        return path

    def _close(self, status: str, **attributes: Any) -> None:
        series, self._series = self._series, None
        if series is None:
            return
        w = series.writer
        if series.failed:
            return  # its dataset already says why it ended
        try:
            w.close(status, **series.report(), **attributes)
        except Exception:
            log.exception("recording %s failed", w.path)
            self.rt.metrics.inc("recording_errors")
            return
        log.info(
            "recorded %d frames to %s (%s%s)",
            w.committed,
            w.path,
            status,
            f", {series.lost} lost before the recorder" if series.lost else "",
        )
