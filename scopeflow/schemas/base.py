"""Base model and versioning shared by every wire message.

All headers are *closed*: unknown fields are errors, numbers must be finite, and strings are not
coerced into numbers. The protocol version travels in every header as ``"MAJOR.MINOR"``; a reader
accepts any minor of its own major and rejects other majors with a clear reason.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = "1.4"
PROTOCOL_MAJOR = int(PROTOCOL_VERSION.split(".")[0])

_VERSION_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})")
VersionStr = Annotated[str, Field(pattern=r"^[0-9]{1,3}\.[0-9]{1,3}$", description="MAJOR.MINOR")]
# Integers that fit a signed 64-bit field in any language.
Int64 = Annotated[int, Field(ge=0, le=2**63 - 1)]
SeriesUid = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class ClosedModel(BaseModel):
    """A strict, immutable model: no extra fields, no NaN/inf, no str→number coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Header(ClosedModel):
    """Fields every message header carries."""

    protocol_version: VersionStr = PROTOCOL_VERSION


def major_of(version: str) -> int | None:
    """The major number of a ``MAJOR.MINOR`` string, or None when it is not of that form."""
    match = _VERSION_RE.fullmatch(version)
    return int(match.group(1)) if match else None


def minor_of(version: str) -> int:
    """The minor number of a ``MAJOR.MINOR`` string (0 when it is not of that form)."""
    match = _VERSION_RE.fullmatch(version)
    return int(match.group(2)) if match else 0
