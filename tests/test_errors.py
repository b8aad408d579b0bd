"""Failures a user can cause: each a ScopeflowError with a one-line reason and its own exit
status, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import zmq

from scopeflow.errors import (
    DeviceError,
    EndpointError,
    LimitError,
    ModelUnavailable,
    OverrunError,
    PeerTimeout,
    ProtocolError,
    ScopeflowError,
    UsageError,
)
from scopeflow.inference.backends import BackendUnavailable
from scopeflow.transport import endpoints

SF = [sys.executable, "-m", "scopeflow"]


def _sf(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SF, *args], capture_output=True, text=True, timeout=timeout)


def test_every_error_class_has_its_own_exit_status():
    classes = [
        UsageError, PeerTimeout, LimitError, DeviceError, ProtocolError, EndpointError,
        ModelUnavailable, OverrunError,
    ]  # fmt: skip
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and 1 not in codes and 0 not in codes
    assert issubclass(BackendUnavailable, ModelUnavailable)
    assert issubclass(BackendUnavailable, ScopeflowError)


def test_a_port_in_use_is_a_one_line_endpoint_error():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        res = _sf("node", "acquire", "--frame-size", "64", "--frames", f"tcp://127.0.0.1:{port}")
    finally:
        holder.close()
    assert res.returncode == EndpointError.exit_code, res.stderr
    assert "cannot bind" in res.stderr and "another process" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_missing_curve_key_file_is_a_one_line_endpoint_error(tmp_path):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    try:
        keys = endpoints.CurveServerKeys(tmp_path / "nope.key_secret", tmp_path)
        with pytest.raises(EndpointError, match="cannot read the CURVE key file"):
            endpoints.bind(sock, "tcp://127.0.0.1:*", loopback_only=True, curve=keys)
    finally:
        sock.close()
        ctx.term()


def test_an_ipc_endpoint_in_a_missing_folder_is_created(tmp_path):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    try:
        bound = endpoints.bind(sock, f"ipc://{tmp_path}/new/deeper/frames")
        assert (tmp_path / "new" / "deeper").is_dir() and bound.endswith("/frames")
    finally:
        sock.close()
        ctx.term()


def test_an_unavailable_backend_ends_the_job_with_its_own_status(tmp_path):
    res = _sf("run", "autofocus", "--scope", "sim:sem", "--backend", "tensorrt", "--out",
              str(tmp_path))  # fmt: skip
    assert res.returncode == ModelUnavailable.exit_code == 8, res.stderr
    doc = json.loads((tmp_path / "outcome.json").read_text())
    assert doc["reason"] == "model_unavailable" and "tensorrt" in doc["message"]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("flag", ["--focus-model", "--backend"])
def test_an_unknown_model_or_backend_is_a_usage_error(tmp_path, flag):
    res = _sf("run", "autofocus", "--scope", "sim:sem", flag, "nosuch", "--out", str(tmp_path))
    assert res.returncode == 2 and "nosuch" in res.stderr and "Traceback" not in res.stderr
