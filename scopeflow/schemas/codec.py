"""Encode and decode multipart messages ``[kind, header-json, buffer...]``.

Decoding validates everything the protocol promises before any consumer sees the message: known
kind, JSON object, supported major version, closed schema, buffer count, and buffer length equal
to shape × dtype. Any failure raises :class:`~scopeflow.errors.ProtocolError` with a stable code
and a reason. Pixel buffers are never copied: decoding returns a read-only view of the received
frame, encoding hands the array itself to ZeroMQ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from scopeflow.errors import ProtocolError
from scopeflow.schemas.base import PROTOCOL_MAJOR, PROTOCOL_VERSION, major_of
from scopeflow.schemas.commands import COMMAND_NAMES
from scopeflow.schemas.messages import KIND_OF_MODEL, KINDS
from scopeflow.schemas.series import DTYPE_ITEMSIZE, ImageHeader

MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Message:
    """A decoded, validated message."""

    kind: str
    header: Any
    buffers: tuple[memoryview, ...] = ()

    def array(self) -> np.ndarray:
        """The image pixels as a read-only, zero-copy numpy view (image messages only)."""
        if not isinstance(self.header, ImageHeader):
            raise TypeError(f"a {self.kind!r} message carries no image")
        return image_view(self.header, self.buffers[0])


def image_view(header: ImageHeader, buffer: memoryview) -> np.ndarray:
    """View ``buffer`` as the array ``header`` describes (little-endian, C order), no copy."""
    dtype = np.dtype(header.dtype).newbyteorder("<")
    arr = np.frombuffer(buffer, dtype=dtype).reshape(header.shape)
    arr.flags.writeable = False
    return arr


def encode(header: BaseModel, buffers: Sequence[Any] = (), *, kind: str | None = None) -> list[Any]:
    """Multipart parts for ``header`` (its kind inferred from its type unless given)."""
    if kind is None:
        kind = KIND_OF_MODEL.get(type(header))
    if kind not in KINDS:
        raise ValueError(f"no message kind for {type(header).__name__}")
    if KINDS[kind].buffers != len(buffers):
        raise ValueError(f"{kind!r} carries {KINDS[kind].buffers} buffers, got {len(buffers)}")
    body = header.model_dump_json(exclude_none=True).encode()
    return [kind.encode("ascii"), body, *buffers]


def frame_buffer(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as a C-contiguous little-endian array suitable for zero-copy sending."""
    if pixels.dtype.name not in DTYPE_ITEMSIZE:
        allowed = sorted(DTYPE_ITEMSIZE)
        raise ValueError(f"dtype {pixels.dtype} is not allowed on the wire: {allowed}")
    if pixels.dtype.byteorder == ">":
        pixels = pixels.astype(pixels.dtype.newbyteorder("<"))
    return np.ascontiguousarray(pixels)


def decode(parts: Sequence[Any]) -> Message:
    """Validate and decode received parts (bytes, memoryviews or ``zmq.Frame``)."""
    if len(parts) < 2:
        raise ProtocolError(
            f"a message has at least 2 parts (kind, header), got {len(parts)}",
            code="invalid_message",
        )
    kind = _as_bytes(parts[0]).decode("ascii", errors="replace")
    spec = KINDS.get(kind)
    if spec is None:
        raise ProtocolError(
            f"unknown message kind {kind[:40]!r}; known: {', '.join(KINDS)}", code="unknown_kind"
        )
    raw = _as_bytes(parts[1])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    header = _validate_header(spec.adapter, raw, kind)
    buffers = tuple(_as_view(p) for p in parts[2:])
    if len(buffers) != spec.buffers:
        raise ProtocolError(
            f"{kind!r} carries {spec.buffers} buffer part(s), got {len(buffers)}",
            code="buffer_mismatch",
        )
    if isinstance(header, ImageHeader) and buffers[0].nbytes != header.nbytes:
        raise ProtocolError(
            f"buffer has {buffers[0].nbytes} bytes but shape {list(header.shape)} × "
            f"{header.dtype} needs {header.nbytes}",
            code="buffer_mismatch",
        )
    return Message(kind, header, buffers)


def parse_header_json(raw: bytes) -> dict[str, Any]:
    """The header as a dict: strict UTF-8 JSON object without duplicate keys, else ProtocolError."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"header is not valid UTF-8 JSON: {exc}", code="bad_json") from None
    except RecursionError:
        raise ProtocolError("header JSON is nested too deeply", code="bad_json") from None
    if not isinstance(obj, dict):
        raise ProtocolError("header must be a JSON object", code="bad_json")
    return obj


def _validate_header(adapter: Any, raw: bytes, kind: str) -> Any:
    obj = parse_header_json(raw)
    version = obj.get("protocol_version")
    if not isinstance(version, str) or major_of(version) is None:
        raise ProtocolError(
            f"header needs protocol_version 'MAJOR.MINOR', got {version!r}",
            code="unsupported_version",
        )
    if major_of(version) != PROTOCOL_MAJOR:
        raise ProtocolError(
            f"protocol version {version} is not supported; this node speaks {PROTOCOL_VERSION} "
            f"(any {PROTOCOL_MAJOR}.x)",
            code="unsupported_version",
        )
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        raise _from_validation(exc, kind) from None
    except (ValueError, RecursionError) as exc:  # the validator's own parser gave up
        raise ProtocolError(f"invalid {kind} header: {exc}", code="invalid_message") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return obj


def _from_validation(exc: ValidationError, kind: str) -> ProtocolError:
    errors = exc.errors(include_url=False)
    if kind == "command" and any(
        e["type"] in ("union_tag_invalid", "union_tag_not_found") for e in errors
    ):
        got = next((e.get("input") for e in errors), None)
        tag = got.get("command") if isinstance(got, dict) else None
        shown_tag = repr(tag)[:80]
        return ProtocolError(
            f"unknown command {shown_tag}; known: {', '.join(COMMAND_NAMES)}",
            code="unknown_command",
        )
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<header>'}: {e['msg']}" for e in errors[:5]
    )
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return ProtocolError(f"invalid {kind} header: {shown}{more}", code="invalid_message")


def _as_bytes(part: Any) -> bytes:
    if isinstance(part, bytes):
        return part
    if hasattr(part, "bytes"):  # zmq.Frame
        return part.bytes
    return bytes(part)


def _as_view(part: Any) -> memoryview:
    if hasattr(part, "buffer"):  # zmq.Frame: its buffer, no copy
        return part.buffer
    return memoryview(part)
