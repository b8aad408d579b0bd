"""Shared fixtures: short ipc paths, free tcp endpoints, and a leak check on threads."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A short temporary folder for ipc:// socket files (paths are limited to 107 chars)."""
    with tempfile.TemporaryDirectory(prefix="sf-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (a node or socket poller not shut down)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.is_alive() and not t.daemon
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
