"""Jobs by name, through the ``scopeflow.jobs`` entry-point group.

A lab package adds a job without editing scopeflow::

    [project.entry-points."scopeflow.jobs"]
    my-job = "mylab_jobs.my_job:MyJob"

where ``MyJob`` follows :class:`~scopeflow.jobs.base.Job`. scopeflow's own jobs are registered
the same way in its pyproject.toml.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from scopeflow.errors import UsageError

GROUP = "scopeflow.jobs"


def jobs() -> dict[str, Any]:
    """Registered job classes by name (a job that cannot be imported is left out)."""
    found = {}
    for ep in entry_points(group=GROUP):
        try:
            found[ep.name] = ep.load()
        except ImportError:
            continue
    return dict(sorted(found.items()))


def job_class(name: str) -> Any:
    """The job registered as ``name``; a UsageError naming the known ones otherwise."""
    found = jobs()
    if name not in found:
        raise UsageError(f"no job named {name!r}; registered: {', '.join(found) or 'none'}")
    return found[name]


def summary(job: Any) -> str:
    """The first line of a job's docstring."""
    return (job.__doc__ or "").strip().splitlines()[0] if job.__doc__ else ""
