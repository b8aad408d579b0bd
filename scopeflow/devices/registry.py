"""Device adapters by name: ``NAME:ARGUMENT`` specs resolved through entry points.

An adapter package registers a factory in the ``scopeflow.devices`` entry-point group::

    [project.entry-points."scopeflow.devices"]
    mylab = "mylab_scope.adapter:open_device"

and ``open_device("mylab:ARGUMENT")`` calls ``open_device("ARGUMENT")`` of that module, which
returns the adapter (an object implementing some of the device protocols). scopeflow's own
adapters (``sim``, ``mmcore``, ``remote``) are registered the same way in its pyproject.toml, so
a lab's adapter plugs in without editing scopeflow. Callers get the adapter behind
:func:`~scopeflow.devices.limits.guard`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from scopeflow.devices.limits import GuardedMicroscope, guard
from scopeflow.errors import UsageError

GROUP = "scopeflow.devices"

AdapterFactory = Callable[[str], Any]


def adapters() -> dict[str, EntryPoint]:
    """The registered adapter factories by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def split_spec(spec: str) -> tuple[str, str]:
    """``NAME:ARGUMENT`` → (NAME, ARGUMENT); the argument may itself hold colons."""
    name, sep, arg = spec.partition(":")
    if not sep or not name:
        raise UsageError(
            f"scope {spec!r} is not NAME:ARGUMENT (e.g. sim:sem, mmcore:sim, "
            "remote:tcp://127.0.0.1:5551)"
        )
    return name, arg


def factory(name: str) -> AdapterFactory:
    """The factory registered as ``name``; a UsageError naming the known ones otherwise."""
    found = adapters()
    if name not in found:
        known = ", ".join(sorted(found)) or "none (is scopeflow installed?)"
        raise UsageError(f"no device adapter named {name!r}; registered: {known}")
    try:
        return found[name].load()
    except ImportError as exc:
        raise UsageError(
            f"the {name!r} adapter cannot be imported ({exc}); install its extra, "
            f"e.g. pip install 'scopeflow[{name}]'"
        ) from exc


def open_device(spec: str) -> GuardedMicroscope:
    """The adapter ``spec`` names, opened and behind the validation layer."""
    name, arg = split_spec(spec)
    return guard(factory(name)(arg))
