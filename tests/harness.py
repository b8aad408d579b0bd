"""Run real nodes in threads of the test process, wired over real ipc sockets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq

from scopeflow.acquisition.microscope import Microscope
from scopeflow.acquisition.node import AcquireConfig, AcquireNode
from scopeflow.inference.node import InferConfig, InferNode


@dataclass
class Pipeline:
    ctx: zmq.Context
    acquire: AcquireNode
    infer: InferNode | None
    frames: str
    commands: str
    results: str


@contextmanager
def running(node) -> Iterator[threading.Thread]:
    """Run ``node`` in a thread; stop it and require a clean exit within 5 s."""
    thread = threading.Thread(target=node.run, name=type(node).__name__)
    thread.start()
    try:
        yield thread
    finally:
        node.stop()
        thread.join(5.0)
        assert not thread.is_alive(), f"{type(node).__name__} did not shut down"


@contextmanager
def pipeline(
    ipc_dir: Path, microscope: Microscope, *, evaluator: str = "normalized_variance",
    with_infer: bool = True, metrics_port: int | None = None, **acquire_options,
) -> Iterator[Pipeline]:
    """An acquisition node (and an inference node) on ipc endpoints in ``ipc_dir``."""
    ctx = zmq.Context()
    frames, commands, results = (f"ipc://{ipc_dir}/{n}" for n in ("f", "c", "r"))
    acq = AcquireNode(microscope, AcquireConfig(
        frames_endpoint=frames, commands_endpoint=commands, **acquire_options),
        ctx=ctx, metrics_port=metrics_port)
    inf = InferNode(InferConfig(frames_endpoint=frames, results_endpoint=results,
                                model=evaluator), ctx=ctx) if with_infer else None
    try:
        with running(acq):
            if inf is None:
                yield Pipeline(ctx, acq, None, frames, commands, results)
            else:
                with running(inf):
                    yield Pipeline(ctx, acq, inf, frames, commands, results)
    finally:
        ctx.term()
