"""A protocol-1.2 microscope written independently of scopeflow's acquisition node, from
docs/protocol.md: a ROUTER answering get_state/set_wd/acquire with 1.2 replies and an XPUB
publishing 1.2 image headers. Its heartbeats name no series (1.2 had no such field), so a job
must fall back to the 1.2 readiness rule with it."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import zmq

LIMITS = {
    "wd_min_um": 1000.0, "wd_max_um": 9000.0, "stage_x_min_um": -100.0,
    "stage_x_max_um": 100.0, "stage_y_min_um": -100.0, "stage_y_max_um": 100.0,
}  # fmt: skip


class LegacyMicroscope:
    """Serves a simulated SEM (any object with acquire/set_wd/state) the 1.2 way."""

    def __init__(self, ctx: zmq.Context, sim, frames: str, commands: str) -> None:
        self.sim = sim
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind(commands)
        self.xpub = ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.xpub.bind(frames)
        self.subscribers = 0
        self.command_seq = 0
        self.image_id = 0
        self.series = "legacy-0001"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="legacy-microscope")

    def __enter__(self) -> LegacyMicroscope:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(5)
        self.router.close()
        self.xpub.close()

    def _header(self, **fields) -> bytes:
        return json.dumps({"protocol_version": "1.2", **fields}).encode()

    def _state(self) -> dict:
        return json.loads(self.sim.state().model_dump_json(exclude_none=True))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        next_beat = 0.0
        while not self._stop.is_set():
            events = dict(poller.poll(20))
            if self.xpub in events:
                event = self.xpub.recv()
                if b"image".startswith(event[1:]):
                    self.subscribers += 1 if event[:1] == b"\x01" else -1
            if self.router in events:
                ident, _kind, header = self.router.recv_multipart()
                self._answer(ident, json.loads(header))
            if time.monotonic() >= next_beat:  # a 1.2 heartbeat: no series
                next_beat = time.monotonic() + 1.0
                beat = self._header(node="legacy", role="acquire", pid=1, uptime_s=1.0,
                                    monotonic_ns=time.monotonic_ns(), counters={})  # fmt: skip
                self.xpub.send_multipart([b"status", beat])

    def _answer(self, ident: bytes, cmd: dict) -> None:
        image_id = None
        if cmd["command"] == "set_wd":
            self.sim.set_wd(cmd["wd_um"])
            self.command_seq += 1
        elif cmd["command"] == "acquire":
            frame = self.sim.acquire()
            pixels = np.ascontiguousarray(frame.pixels)
            head = self._header(
                series_id=0, series_unique_id=self.series, image_id=self.image_id,
                shape=list(pixels.shape), dtype=pixels.dtype.name,
                start_time_ns=frame.start_time_ns, stop_time_ns=frame.stop_time_ns,
                monotonic_ns=frame.monotonic_ns, command_seq=self.command_seq,
                state=json.loads(frame.state.model_dump_json(exclude_none=True)),
            )  # fmt: skip
            self.xpub.send_multipart([b"image", head, pixels])
            image_id = self.image_id
            self.image_id += 1
        reply = {
            "seq": cmd["seq"], "command": cmd["command"], "state": self._state(),
            "limits": LIMITS, "command_seq": self.command_seq,
            "series_unique_id": self.series, "frame_subscribers": max(0, self.subscribers),
        }  # fmt: skip
        if image_id is not None:
            reply["image_id"] = image_id
        self.router.send_multipart([ident, b"reply", self._header(**reply)])
