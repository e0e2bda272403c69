"""Turn a job's `source` argument into bytes, enforcing input roots and size limits.

A source is an absolute path string, `{"path": ...}`, or `{"data_b64": ..., "filename": ...}`
for bytes sent inline. Paths are resolved with symlinks followed, so a link inside an input
root that points outside it is refused like the outside path itself.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from worker.errors import (
    InputNotFoundError,
    InputTooLargeError,
    InvalidArgumentsError,
    PathNotAllowedError,
)
from worker.settings import Settings, get_settings


@dataclass(frozen=True)
class SourceBytes:
    data: bytes
    name: str  # for display: the file name, never a full path from inline input
    path: Path | None  # the resolved path, None for inline data


def load_source(source: object, settings: Settings | None = None) -> SourceBytes:
    """Bytes and display name of `source`; typed errors for anything not allowed."""
    settings = settings or get_settings()
    if isinstance(source, str):
        return _load_path(source, settings)
    if isinstance(source, dict):
        keys = set(source)
        if keys == {"path"}:
            return _load_path(source["path"], settings)
        if "data_b64" in keys and keys <= {"data_b64", "filename"}:
            return _load_inline(source["data_b64"], source.get("filename"), settings)
        raise InvalidArgumentsError(
            "source dict must be {'path': ...} or {'data_b64': ..., 'filename': ...},"
            f" got keys {sorted(keys)}"
        )
    raise InvalidArgumentsError(f"source must be a path string or a dict, got {type(source).__name__}")


def resolve_path(raw: object, settings: Settings) -> Path:
    """The real path of `raw`, which must lie inside one of settings.input_roots."""
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise InvalidArgumentsError("source path must be a non-empty string")
    path = Path(raw)
    if not path.is_absolute():
        raise PathNotAllowedError(f"source path must be absolute, got {raw!r}")
    real = path.resolve(strict=False)  # follows every symlink that exists
    roots = [Path(r).resolve(strict=False) for r in settings.input_roots]
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise PathNotAllowedError(f"{raw!r} is outside the input roots (INPUT_ROOTS)")
    return real


def _load_path(raw: object, settings: Settings) -> SourceBytes:
    real = resolve_path(raw, settings)
    limit = settings.max_pdf_bytes
    try:
        # fstat on the open file, not stat on the name: no check-then-use race.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputNotFoundError(f"{raw!r} does not exist") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{raw!r} is not a regular file") from None
    except PermissionError:
        raise InputNotFoundError(f"{raw!r} is not readable") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputNotFoundError(f"{raw!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise InputTooLargeError(
                f"{real.name} is {st.st_size} bytes, over the limit of {limit} (MAX_PDF_BYTES)")
        data = f.read(limit + 1)  # the file may grow while we read
    if len(data) > limit:
        raise InputTooLargeError(f"{real.name} is over the limit of {limit} bytes (MAX_PDF_BYTES)")
    return SourceBytes(data=data, name=real.name, path=real)


def _load_inline(data_b64: object, filename: object, settings: Settings) -> SourceBytes:
    if not isinstance(data_b64, str):
        raise InvalidArgumentsError("data_b64 must be a base64 string")
    if any(ch.isspace() for ch in data_b64[:100]):  # base64.encodebytes() wraps lines
        data_b64 = "".join(data_b64.split())
    if filename is not None and not isinstance(filename, str):
        raise InvalidArgumentsError("filename must be a string")
    limit = min(settings.max_inline_bytes, settings.max_pdf_bytes)
    # Refuse before decoding: base64 carries 3 bytes per 4 characters.
    if (len(data_b64) // 4) * 3 - 2 > limit:
        raise InputTooLargeError(f"inline data is over the limit of {limit} bytes (MAX_INLINE_BYTES)")
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentsError(f"data_b64 is not valid base64: {exc}") from None
    if len(data) > limit:
        raise InputTooLargeError(
            f"inline data is {len(data)} bytes, over the limit of {limit} (MAX_INLINE_BYTES)")
    name = Path(filename).name if filename else "inline.pdf"
    return SourceBytes(data=data, name=name[:255] or "inline.pdf", path=None)
