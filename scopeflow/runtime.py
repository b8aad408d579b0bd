"""What every node shares: its ZeroMQ context, a stop flag, counters and a heartbeat.

A node runs in a thread (inproc tests, the in-process demo) or as a process's main loop (the CLI);
the same class serves both. ``stop()`` is safe to call from another thread or a signal handler;
the node's loop notices within its poll interval and closes its sockets before returning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Literal

import zmq

from scopeflow.metrics import NodeMetrics
from scopeflow.schemas.results import NodeStatus

log = logging.getLogger(__name__)

POLL_MS = 50  # upper bound on how long a node takes to notice stop()
HEARTBEAT_S = 1.0


class NodeRuntime:
    """Context, stop flag, metrics and heartbeat of one node."""

    def __init__(
        self,
        name: str,
        role: Literal["acquire", "infer", "control", "record"],
        ctx: zmq.Context | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.name = name
        self.role = role
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else zmq.Context()
        self.metrics = NodeMetrics(name)
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._next_beat = 0.0
        self._sockets: list[zmq.Socket] = []
        if metrics_port is not None:
            self.metrics.serve(metrics_port)

    def socket(self, kind: int, *, linger_ms: int = 0) -> zmq.Socket:
        """A socket owned by this node and closed by :meth:`close`."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, linger_ms)
        self._sockets.append(sock)
        return sock

    def stop(self) -> None:
        """Ask the node to finish; returns at once."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def beat_now(self) -> None:
        """Make the next heartbeat due at once (something a reader waits for has changed)."""
        self._next_beat = 0.0

    def heartbeat_due(self, **about: Any) -> NodeStatus | None:
        """A status message when one is due (about once per second), else None; ``about``
        holds what the node says of its connections (NodeStatus fields since 1.3)."""
        now = time.monotonic()
        if now < self._next_beat:
            return None
        self._next_beat = now + HEARTBEAT_S
        return NodeStatus(
            node=self.name,
            role=self.role,
            pid=os.getpid(),
            uptime_s=now - self._started,
            monotonic_ns=time.monotonic_ns(),
            counters=self.metrics.snapshot(),
            **about,
        )

    def close(self) -> None:
        """Close every socket of this node, and the context if the node created it."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._own_ctx:
            self.ctx.term()
        log.debug("node %s closed", self.name)
