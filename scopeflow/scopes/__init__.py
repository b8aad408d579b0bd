"""Scopes: what a job talks to (devices plus result streams), local or remote."""

from __future__ import annotations

from typing import Any

from scopeflow.scopes.base import RESULT_KINDS, Scope, ScopeStatus, Shot

__all__ = ["RESULT_KINDS", "Scope", "ScopeStatus", "Shot", "open_scope"]


def open_scope(
    spec: str,
    *,
    results_endpoint: str = "tcp://127.0.0.1:5552",
    models: dict[str, str] | None = None,
    backend: str = "auto",
    timeout_s: float = 5.0,
    curve: Any = None,
    frames_endpoint: str | None = None,
    calibration: str | None = None,
    materials: tuple[str, ...] | None = None,
    oxide: str | None = None,
) -> Scope:
    """The scope ``spec`` names: ``remote:ENDPOINT`` is a remote scope (results from
    ``results_endpoint``, frames from ``frames_endpoint`` when given); any other registered
    adapter (``sim:sem``, ``mmcore:sim``…) a local scope with in-process inference by ``models``
    on ``backend`` (the detector calibrated by ``calibration`` when given; a remote scope's
    inference node takes its own ``--calibration``)."""
    from scopeflow.devices.registry import open_device, split_spec

    name, arg = split_spec(spec)
    if name == "remote":
        from scopeflow.scopes.remote import RemoteScope

        if calibration is not None or materials is not None or oxide is not None:
            raise ValueError(
                "--calibration, --materials and --oxide-nm apply to a local scope; give a "
                "remote scope's inference node its own: scopeflow node infer --model "
                "flake_detector --materials graphene,hBN --oxide-nm auto"
            )
        return RemoteScope(
            arg, results_endpoint, timeout_s=timeout_s, curve=curve, frames_endpoint=frames_endpoint
        )
    from scopeflow.scopes.local import LocalScope

    return LocalScope(
        open_device(spec),
        models=models,
        backend=backend,
        calibration=calibration,
        materials=materials,
        oxide=oxide,
    )
