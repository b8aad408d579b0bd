"""A crash-safe, appending OME-Zarr v0.5 writer for a stream of frames (tensorstore, zarr v3).

Layout of ``NAME.ome.zarr`` (an OME-Zarr v0.5 image, readable by any zarr v3 reader):

- ``zarr.json``: the group, with ``attributes.ome`` (multiscales: axes t, y, x [, c], one level,
  pixel size and frame interval as scale) and ``attributes.scopeflow`` (the series: source,
  start state, status, frames, lost image ids, overruns);
- ``0/``: the frames, (t, y, x[, c]), chunks of :attr:`OmeZarrWriter.frames_per_chunk` frames,
  Blosc-LZ4 with bit shuffle (lossless);
- ``frames/ids``: int64 (t, 4) — image_id, start_time_ns, stop_time_ns, monotonic_ns;
- ``frames/values``: float64 (t, F) — wd_um, stage_x_um, stage_y_um, dose_e_per_px,
  exposure_s, pixel_size_nm (NaN where the microscope did not say).

Why the shape only grows after the data: a chunk is written to a handle that assumes the
array's metadata (it never writes ``zarr.json``), and the arrays' recorded shape is raised
(``resize_metadata_only``) once every chunk up to there is on disk — per-frame tables first,
frames last. A kill at any moment therefore leaves a dataset whose ``zarr.json`` covers
complete chunks only: readable, frame for frame, up to the last complete chunk. tensorstore
writes each file through a temporary and a rename, so no file is ever half written.

Why tensorstore: ``scopeflow bench recorder`` (2026-12-07, this 2-core VM) measured this writer
at 1 310 fps for 512² uint16 frames (486 at 1024²) against 720 (197) for zarr-python 3 with the
same codec and chunks and 622 (428) for ome-writers 0.3.2, whose only working chunking for an
unbounded time axis is one frame per chunk.
The OME metadata is built with yaozarrs' v0.5 models (the library ome-writers uses).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts
from yaozarrs import DimSpec, v05

log = logging.getLogger(__name__)

#: per-frame numbers recorded beside the frames (``frames/values`` columns)
VALUE_FIELDS = ("wd_um", "stage_x_um", "stage_y_um", "dose_e_per_px", "exposure_s",
                "pixel_size_nm")  # fmt: skip
#: per-frame integers (``frames/ids`` columns)
ID_FIELDS = ("image_id", "start_time_ns", "stop_time_ns", "monotonic_ns")
CHUNK_BYTES = 8 << 20  # target bytes per frame chunk: few files, little lost on a kill
GROUP_EVERY_S = 1.0  # how often the group's attributes follow the recording
MAX_PENDING_CHUNKS = 32  # chunks in flight before append waits (disk slower than the camera)
_BIG = 2**40  # the frame axis of the write handle (it never writes the metadata)
DTYPES = {"uint8": "uint8", "uint16": "uint16", "float32": "float32"}


@dataclass(frozen=True)
class FrameMeta:
    """What is recorded of one frame beside its pixels."""

    image_id: int
    start_time_ns: int
    stop_time_ns: int
    monotonic_ns: int
    values: tuple[float, ...]  # VALUE_FIELDS, NaN when unknown


def _codecs(dtype: np.dtype) -> list[dict[str, Any]]:
    return [
        {"name": "bytes", "configuration": {"endian": "little"}},
        {
            "name": "blosc",
            "configuration": {
                "cname": "lz4",
                "clevel": 1,
                "shuffle": "bitshuffle",
                "typesize": int(dtype.itemsize),
                "blocksize": 0,
            },
        },
    ]


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a small JSON document through a temporary file and a rename (atomic)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.partial")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False))
    os.replace(tmp, path)


class _Array:
    """One zarr v3 array written chunk by chunk, its recorded shape raised only after."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: str, rows: int, names):
        meta = {
            "shape": [0, *row_shape],
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": [rows, *row_shape]},
            },
            "data_type": dtype,
            "codecs": _codecs(np.dtype(dtype)),
            "fill_value": 0,
            "dimension_names": list(names),
        }
        store = {"driver": "file", "path": str(path)}
        self.meta = ts.open({"driver": "zarr3", "kvstore": store, "metadata": meta},
                            create=True).result()  # fmt: skip
        big = {**meta, "shape": [_BIG, *row_shape]}
        self.data = ts.open(
            {"driver": "zarr3", "kvstore": store, "metadata": big},
            open=True,
            create=True,
            assume_metadata=True,  # writes chunks only: zarr.json stays as recorded
        ).result()
        self.row_shape = row_shape

    def write(self, start: int, block: np.ndarray) -> Any:
        return self.data[start : start + len(block)].write(block)

    def commit(self, rows: int) -> None:
        self.meta.resize(exclusive_max=[rows, *self.row_shape], resize_metadata_only=True).result()


class OmeZarrWriter:
    """Appends frames of one series to ``path`` (an OME-Zarr v0.5 image), crash-safely.

    ``append`` copies the frame into the current chunk and returns; full chunks are written
    in the background (tensorstore's threads). With :data:`MAX_PENDING_CHUNKS` chunks in
    flight it waits for the oldest (the disk is slower than the camera: the caller's queue
    then fills, and its policy decides). ``close`` writes the last, partial chunk and marks
    the dataset complete; without it the dataset ends at the last complete chunk.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        frame_shape: tuple[int, ...],
        dtype: str,
        pixel_size_nm: float | None = None,
        frames_per_chunk: int | None = None,
        attributes: dict[str, Any] | None = None,
        max_pending_chunks: int = MAX_PENDING_CHUNKS,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"cannot record {dtype} frames (one of {', '.join(DTYPES)})")
        if len(frame_shape) not in (2, 3):
            raise ValueError(f"frames must be (y, x) or (y, x, c), got {frame_shape}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists: give a new path (nothing overwritten)")
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.dtype = np.dtype(dtype)
        frame_bytes = self.dtype.itemsize * math.prod(self.frame_shape)
        self.frames_per_chunk = int(frames_per_chunk or max(1, CHUNK_BYTES // frame_bytes))
        self.pixel_size_nm = pixel_size_nm
        self.attributes = dict(attributes or {})
        self.max_pending = int(max_pending_chunks)
        self.path.mkdir(parents=True)
        (self.path / "frames").mkdir()
        _write_json(self.path / "frames" / "zarr.json",
                    {"zarr_format": 3, "node_type": "group", "attributes": {}})  # fmt: skip
        k = self.frames_per_chunk
        names = ("t", "y", "x", "c")[: 1 + len(self.frame_shape)]
        self._frames = _Array(self.path / "0", self.frame_shape, dtype, k, names)
        self._ids = _Array(self.path / "frames" / "ids", (len(ID_FIELDS),), "int64", k,
                           ("t", "field"))  # fmt: skip
        self._values = _Array(self.path / "frames" / "values", (len(VALUE_FIELDS),), "float64",
                              k, ("t", "field"))  # fmt: skip
        self._block = np.empty((k, *self.frame_shape), self.dtype)
        self._id_block = np.zeros((k, len(ID_FIELDS)), np.int64)
        self._value_block = np.full((k, len(VALUE_FIELDS)), np.nan)
        self._fill = 0  # frames in the current chunk
        self.appended = 0  # frames handed to append
        self.committed = 0  # frames the dataset's zarr.json covers
        self._pending: deque[tuple[int, list[Any]]] = deque()  # (end frame, futures)
        self._first_ns: int | None = None
        self._last_ns: int | None = None
        self.status = "recording"
        self.error: str | None = None
        self.write_wait_s = 0.0  # time append spent waiting for the disk
        self._write_group()

    # -- frames -----------------------------------------------------------------------------------
    def append(self, pixels: np.ndarray, meta: FrameMeta) -> None:
        """Add one frame (copied; the caller may reuse ``pixels``)."""
        if pixels.shape != self.frame_shape or pixels.dtype != self.dtype:
            raise ValueError(
                f"frame {meta.image_id} is {pixels.dtype}{list(pixels.shape)}, the recording "
                f"{self.dtype}{list(self.frame_shape)}"
            )
        i = self._fill
        self._block[i] = pixels
        self._id_block[i] = (meta.image_id, meta.start_time_ns, meta.stop_time_ns,
                             meta.monotonic_ns)  # fmt: skip
        self._value_block[i] = meta.values
        self._first_ns = meta.start_time_ns if self._first_ns is None else self._first_ns
        self._last_ns = meta.start_time_ns
        self._fill += 1
        self.appended += 1
        if self._fill == self.frames_per_chunk:
            self._submit()
        self._commit_done(wait=False)

    def _submit(self) -> None:
        """Write the current chunk (all of it, or its first ``_fill`` frames) in the
        background."""
        n = self._fill
        if n == 0:
            return
        start = self.appended - n
        # The filled blocks go to tensorstore as they are (it writes them in its threads);
        # the next chunk fills fresh ones: no copy of the pixels beyond the one into the block.
        futures = [
            self._values.write(start, self._value_block[:n]),
            self._ids.write(start, self._id_block[:n]),
            self._frames.write(start, self._block[:n]),
        ]
        self._block = np.empty_like(self._block)
        self._id_block = np.zeros_like(self._id_block)
        self._value_block = np.full_like(self._value_block, np.nan)
        self._pending.append((start + n, futures))
        self._fill = 0
        if len(self._pending) > self.max_pending:
            t0 = time.perf_counter()
            self._commit_done(wait=True, until=len(self._pending) - self.max_pending)
            self.write_wait_s += time.perf_counter() - t0

    def _commit_done(self, *, wait: bool, until: int = 0) -> None:
        """Raise the recorded shape over every chunk written (in order); with ``wait``, wait
        until at most ``until`` chunks are still in flight."""
        end = None
        while self._pending:
            stop, futures = self._pending[0]
            must_wait = wait and len(self._pending) > until
            if not must_wait and not all(f.done() for f in futures):
                break
            for f in futures:
                f.result()  # raises the write's error (disk full, …)
            self._pending.popleft()
            end = stop
        if end is not None:
            # Tables first, frames last: the frames' shape never covers a frame whose
            # metadata is not on disk.
            self._values.commit(end)
            self._ids.commit(end)
            self._frames.commit(end)
            self.committed = end
            if time.monotonic() - self._group_written > GROUP_EVERY_S:
                self._write_group()  # the frame count and interval, for a reader meanwhile

    # -- metadata ---------------------------------------------------------------------------------
    def _frame_interval_s(self) -> float:
        if self._first_ns is None or self._last_ns is None or self.appended < 2:
            return 1.0
        return max((self._last_ns - self._first_ns) / 1e9 / (self.appended - 1), 1e-9)

    def _write_group(self) -> None:
        px = self.pixel_size_nm if self.pixel_size_nm and self.pixel_size_nm > 0 else 1.0
        unit = "nanometer" if self.pixel_size_nm else None
        dims = [
            DimSpec(name="t", scale=self._frame_interval_s(), unit="second", type="time"),
            DimSpec(name="y", scale=px, unit=unit, type="space"),
            DimSpec(name="x", scale=px, unit=unit, type="space"),
        ]
        if len(self.frame_shape) == 3:
            dims.append(DimSpec(name="c", type="channel"))
        image = v05.Image(multiscales=[v05.Multiscale.from_dims(dims, name=self.path.name)])
        scopeflow = {
            **self.attributes,
            "status": self.status,
            "frames": self.committed,
            "frames_per_chunk": self.frames_per_chunk,
            "frame_fields": {"frames/ids": list(ID_FIELDS), "frames/values": list(VALUE_FIELDS)},
        }
        if self.error:
            scopeflow["error"] = self.error
        self._group_written = time.monotonic()
        _write_json(
            self.path / "zarr.json",
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {
                    "ome": image.model_dump(mode="json", exclude_none=True),
                    "scopeflow": _json_safe(scopeflow),
                },
            },
        )

    def update_attributes(self, **attributes: Any) -> None:
        """Merge ``attributes`` into ``attributes.scopeflow`` (written at once)."""
        self.attributes.update(attributes)
        self._write_group()

    def fail(self, exc: BaseException) -> None:
        """Record that writing failed (the dataset keeps what was committed)."""
        self.status, self.error = "error", f"{type(exc).__name__}: {exc}"
        try:
            self._write_group()
        except OSError:
            log.exception("cannot even write %s's attributes", self.path)

    def close(self, status: str = "complete", **attributes: Any) -> None:
        """Write the last, partial chunk, wait for every write, and record ``status``
        (``complete``, ``stopped``, ``error``) with ``attributes``."""
        self.attributes.update(attributes)
        try:
            self._submit()
            self._commit_done(wait=True)
            self.status = status
        except Exception as exc:  # the disk failed: say so in the dataset, then raise
            self.status, self.error = "error", f"{type(exc).__name__}: {exc}"
            self._write_group()
            raise
        self._write_group()


def frame_meta_from_header(header: Any) -> FrameMeta:
    """The recorded metadata of one frame from its protocol ``ImageHeader``."""
    s = header.state
    values = (s.wd_um, s.stage_x_um, s.stage_y_um, s.dose_e_per_px, s.exposure_s,
              s.pixel_size_nm)  # fmt: skip
    return FrameMeta(
        int(header.image_id),
        int(header.start_time_ns),
        int(header.stop_time_ns),
        int(header.monotonic_ns),
        tuple(float("nan") if v is None else float(v) for v in values),
    )


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
