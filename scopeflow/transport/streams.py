"""Sending and receiving protocol messages with an explicit delivery policy.

- :class:`LatestReceiver` (policy *latest*): drains its socket and hands over only the newest
  data message, counting every frame it did not process (drained or dropped upstream, from gaps
  in ``image_id``). ZMQ_CONFLATE is not used: it breaks multipart messages.
- :class:`LosslessSender` / :class:`LosslessReceiver` (policy *lossless*): PUSH/PULL with a
  bounded queue. A full queue blocks the sender up to a timeout (backpressure); past it the send
  fails with :class:`~scopeflow.errors.OverrunError` and is counted — never a quiet loss. The
  receiver counts gaps in ``image_id`` as lost frames.
- :class:`BufferedLosslessSender` (policy *lossless, never slow the camera*): what an
  acquisition node uses. It never blocks: frames a slow or absent consumer cannot take yet wait
  in a bounded buffer (bytes); past it a frame is not delivered and counted as an overrun.
  Series messages (``series_start``/``series_end``) are always kept, so a consumer that
  connects late still gets the series from its start.

Pixel buffers travel zero-copy: :func:`send` hands numpy arrays to ZeroMQ without copying, so the
caller must not modify an array after sending it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from pydantic import BaseModel

from scopeflow.errors import OverrunError, ProtocolError
from scopeflow.metrics import NodeMetrics
from scopeflow.schemas.codec import Message, decode, encode

log = logging.getLogger(__name__)

# Socket options per policy. Small high-water marks keep a 'latest' consumer close to real time;
# a lossless queue is as deep as the configured capacity.
LATEST_HWM = 2
DRAIN_LIMIT = 10_000


def send(sock: zmq.Socket, header: BaseModel, buffers: Sequence[Any] = (), flags: int = 0) -> None:
    """Encode ``header`` (+ buffers) and send it as one multipart message, zero-copy."""
    sock.send_multipart(encode(header, buffers), flags=flags, copy=False)


def recv(sock: zmq.Socket, flags: int = 0) -> Message:
    """Receive and validate one message (raises ProtocolError, zmq.Again)."""
    return decode(sock.recv_multipart(flags=flags, copy=False))


def _decode_or_count(parts: list[Any], metrics: NodeMetrics) -> Message | None:
    """Decode, or count and log the rejection and return None: one bad message never stops a
    consumer, whatever it holds."""
    try:
        return decode(parts)
    except ProtocolError as exc:
        code, reason = exc.code, exc.reason
    except Exception as exc:  # a decoder fault must not take the node down either
        code, reason = "internal", f"decoder failed: {exc!r}"
        log.exception("decoder failed on a message")
    metrics.inc("messages_rejected", code=code)
    log.warning("rejected message (%s): %s", code, reason)
    return None


class _GapCounter:
    """Tracks image_id continuity per series; returns how many ids were skipped."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def gap(self, header: Any) -> int:
        series = getattr(header, "series_unique_id", None)
        image_id = getattr(header, "image_id", None)
        if series is None or image_id is None:
            return 0
        last = self._last.get(series)
        self._last[series] = image_id
        if last is None or image_id <= last:
            return 0
        return image_id - last - 1


class LatestReceiver:
    """Policy *latest*: hand over the newest data message and count what was skipped.

    Messages whose kind is not in ``data_kinds`` (status heartbeats, series start/end) are passed
    to ``on_other`` in arrival order instead of being dropped. Malformed messages are rejected,
    counted under ``messages_rejected{code}`` and logged; the receiver keeps going.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        metrics: NodeMetrics,
        *,
        data_kinds: Sequence[str] = ("image",),
        on_other: Callable[[Message], None] | None = None,
    ) -> None:
        self.sock = sock
        self.metrics = metrics
        self.data_kinds = tuple(data_kinds)
        self.on_other = on_other
        self._gaps: dict[str, _GapCounter] = {}  # per data kind
        self._last_kind = ""

    def poll(self, timeout_ms: int) -> Message | None:
        """Wait up to ``timeout_ms`` for data; return the newest data message or None."""
        newest = self.poll_each(timeout_ms)
        return newest[self._last_kind] if newest else None

    def poll_each(self, timeout_ms: int) -> dict[str, Message]:
        """Wait up to ``timeout_ms`` for data; return the newest message of each data kind
        that arrived (empty when none did)."""
        newest: dict[str, Message] = {}
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return newest
        for _ in range(DRAIN_LIMIT):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = _decode_or_count(parts, self.metrics)
            if msg is None:
                continue
            if msg.kind in self.data_kinds:
                self.metrics.inc("frames_received")
                skipped = self._gaps.setdefault(msg.kind, _GapCounter()).gap(msg.header)
                if skipped:
                    self.metrics.inc("frames_skipped", skipped)
                if msg.kind in newest:
                    self.metrics.inc("frames_skipped")
                newest[msg.kind] = msg
                self._last_kind = msg.kind
            elif self.on_other is not None:
                self.on_other(msg)
        return newest


class LosslessSender:
    """Policy *lossless*, sending side: bounded queue, backpressure, overruns raise and count."""

    def __init__(
        self, sock: zmq.Socket, metrics: NodeMetrics, *, capacity: int = 64, timeout_s: float = 1.0
    ) -> None:
        if sock.type != zmq.PUSH:
            raise ValueError("a lossless sender needs a PUSH socket")
        sock.setsockopt(zmq.SNDHWM, capacity)
        self.sock = sock
        self.metrics = metrics
        self.timeout_ms = max(0, int(timeout_s * 1000))

    def send(self, header: BaseModel, buffers: Sequence[Any] = ()) -> None:
        """Send, waiting up to the timeout for queue space; raise OverrunError past it."""
        if not self.sock.poll(self.timeout_ms, zmq.POLLOUT):
            self._overrun(header)
        try:
            send(self.sock, header, buffers, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._overrun(header)

    def _overrun(self, header: BaseModel) -> None:
        self.metrics.inc("overruns")
        what = f"image {getattr(header, 'image_id', '?')}"
        raise OverrunError(
            f"lossless stream full for {self.timeout_ms} ms: {what} not delivered; the consumer "
            "is too slow or gone (raise capacity or timeout, or add workers)"
        )


class BufferedLosslessSender:
    """Policy *lossless* for a camera: never blocks; buffers, then counts overruns.

    ``capacity``: messages ZeroMQ queues per consumer; ``buffer_bytes``: pixel bytes held
    beyond that for a slow or absent consumer. A frame that would exceed it is not delivered
    (``overruns``; the consumer sees the gap in ``image_id`` and counts it as lost). Call
    :meth:`flush` often (the node's loop does): it hands buffered messages on as the consumer
    takes them.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        metrics: NodeMetrics,
        *,
        capacity: int = 64,
        buffer_bytes: int = 512 << 20,
    ) -> None:
        if sock.type != zmq.PUSH:
            raise ValueError("a lossless sender needs a PUSH socket")
        sock.setsockopt(zmq.SNDHWM, capacity)
        self.sock = sock
        self.metrics = metrics
        self.buffer_bytes = int(buffer_bytes)
        self._queue: deque[tuple[BaseModel, tuple[Any, ...], int]] = deque()
        self.buffered_bytes = 0
        self.overruns = 0
        self._streak = 0  # overruns since the last one was logged
        self._logged = 0.0

    @property
    def pending(self) -> int:
        """Messages waiting in the buffer."""
        return len(self._queue)

    def send(self, header: BaseModel, buffers: Sequence[Any] = ()) -> bool:
        """Send now, or buffer; False when the frame was not delivered (an overrun)."""
        self.flush()
        buffers = tuple(buffers)
        if not self._queue:
            try:
                send(self.sock, header, buffers, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass  # the consumer's queue is full (or there is none): buffer it below
        nbytes = sum(memoryview(b).nbytes for b in buffers)
        if buffers and self.buffered_bytes + nbytes > self.buffer_bytes:
            self._overrun(header)
            return False
        self._queue.append((header, buffers, nbytes))
        self.buffered_bytes += nbytes
        return True

    def flush(self) -> int:
        """Hand buffered messages on while the consumer takes them; returns how many wait."""
        while self._queue:
            header, buffers, nbytes = self._queue[0]
            try:
                send(self.sock, header, buffers, flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            self._queue.popleft()
            self.buffered_bytes -= nbytes
        return len(self._queue)

    def drain(self, timeout_s: float) -> int:
        """Flush for up to ``timeout_s`` (a node's shutdown); returns how many messages were
        left undelivered (frames among them are counted as overruns)."""
        deadline = time.monotonic() + timeout_s
        while self.flush() and time.monotonic() < deadline:
            self.sock.poll(20, zmq.POLLOUT)
        left = len(self._queue)
        frames = sum(1 for _, buffers, _ in self._queue if buffers)
        if frames:
            self.overruns += frames
            self.metrics.inc("overruns", frames)
        self._queue.clear()
        self.buffered_bytes = 0
        return left

    def _overrun(self, header: BaseModel) -> None:
        self.overruns += 1
        self._streak += 1
        self.metrics.inc("overruns")
        now = time.monotonic()
        if now - self._logged >= 1.0:  # one line a second, however fast frames are lost
            log.error(
                "lossless consumer too slow or absent: %d frame(s) not delivered (last: image "
                "%s; %d buffered, %.0f MiB)",
                self._streak,
                getattr(header, "image_id", "?"),
                len(self._queue),
                self.buffered_bytes / 2**20,
            )
            self._streak, self._logged = 0, now


class LosslessReceiver:
    """Policy *lossless*, receiving side: in order, every message, gaps counted as lost."""

    def __init__(
        self,
        sock: zmq.Socket,
        metrics: NodeMetrics,
        *,
        capacity: int = 64,
        count_gaps: bool = True,
    ) -> None:
        """``count_gaps=False`` for one of N workers sharing a stream round-robin, where gaps
        are the other workers' frames, not losses."""
        if sock.type != zmq.PULL:
            raise ValueError("a lossless receiver needs a PULL socket")
        sock.setsockopt(zmq.RCVHWM, capacity)
        self.sock = sock
        self.metrics = metrics
        self._gaps = _GapCounter() if count_gaps else None

    def poll(self, timeout_ms: int) -> Message | None:
        """Next message in order, or None after ``timeout_ms``. Malformed ones are counted."""
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            msg = _decode_or_count(self.sock.recv_multipart(copy=False), self.metrics)
            if msg is None:
                continue
            if msg.kind == "image":
                self.metrics.inc("frames_received")
                lost = self._gaps.gap(msg.header) if self._gaps is not None else 0
                if lost:
                    self.metrics.inc("frames_lost", lost)
                    log.error(
                        "lossless stream lost %d frame(s) before image %d",
                        lost,
                        msg.header.image_id,
                    )
            return msg
        return None
