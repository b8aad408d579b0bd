"""``scopeflow doctor``: versions, usable inference backends and the hardware, in one report."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _packages() -> list[Check]:
    import zmq

    checks = [
        Check("python", True, platform.python_version()),
        Check("scopeflow", True, _version("scopeflow") or "source tree"),
        Check(
            "pyzmq",
            True,
            f"{zmq.__version__} (libzmq {zmq.zmq_version()}, "
            f"CURVE {'yes' if zmq.has('curve') else 'no'})",
        ),
    ]
    for dist in ("numpy", "opencv-python-headless", "pydantic", "prometheus-client", "matplotlib"):
        v = _version(dist)
        checks.append(Check(dist, v is not None, v or "missing: pip install -e ."))
    return checks


def _backends() -> list[Check]:
    from scopeflow.inference.backends import backend_status
    from scopeflow.inference.models.registry import MODEL_NAMES, shipped_models

    checks = [Check(f"backend {name}", ok, why) for name, (ok, why) in backend_status().items()]
    shipped = shipped_models()
    missing = [m for m in MODEL_NAMES if m not in shipped]
    detail = ", ".join(shipped) or "none"
    if missing:
        detail += f" (not shipped: {', '.join(missing)})"
    checks.append(Check("models", not missing, detail))
    return checks


def _gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def _hardware() -> list[Check]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # not Linux: keep the platform's name
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    checks = [Check("cpu", True, f"{cpu}, {os.cpu_count()} logical cores")]
    with contextlib.suppress(ValueError, OSError):  # sysconf names are not on every system
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        checks.append(Check("memory", True, f"{pages * size / 2**30:.1f} GiB"))
    gpus = _gpu_names()
    checks.append(
        Check(
            "gpu",
            bool(gpus),
            ", ".join(gpus)
            if gpus
            else "none found (nvidia-smi absent or no device); CPU backends are used",
        )
    )
    return checks


def report() -> list[Check]:
    """Everything the doctor checks."""
    return _packages() + _backends() + _hardware()


def main(as_json: bool = False) -> int:
    """Print the report; exit status 0 when the default (CPU) path is usable."""
    checks = report()
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{'ok ' if c.ok else '-- '} {c.name:<{width}}  {c.detail}")
    required = {"numpy", "pyzmq", "pydantic", "opencv-python-headless", "backend onnxruntime"}
    return 0 if all(c.ok for c in checks if c.name in required) else 1
