"""Turn a job's `source` argument into bytes, enforcing input roots and size limits.

A source is an absolute path string, `{"path": ...}`, or `{"data_b64": ..., "filename": ...}`
for bytes sent inline. A path is opened once, beneath its input root: `openat2` with
RESOLVE_BENEATH where the kernel has it, else (and for absolute symlinks, which
RESOLVE_BENEATH refuses) a walk that opens one component at a time with O_NOFOLLOW and
follows each symlink itself, inside the roots only. Symlinks that stay inside the roots work;
one that leads outside is refused like the outside path itself. Then the bytes are read from
that descriptor, so swapping a file for a symlink meanwhile cannot lead the read outside.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import errno
import os
import platform
import stat
from dataclasses import dataclass
from pathlib import Path

from worker.errors import (
    InputNotFoundError,
    InputReadError,
    InputTooLargeError,
    InvalidArgumentsError,
    PathNotAllowedError,
    UnstorableInputError,
)
from worker.settings import Settings, get_settings
from worker.store import check_storable, storable_text


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
            f"source dict must be {{'path': ...}} or {{'data_b64': ..., 'filename': ...}}, got keys {sorted(keys)}"
        )
    raise InvalidArgumentsError(f"source must be a path string or a dict, got {type(source).__name__}")


# -- opening beneath a root -------------------------------------------------------------------
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's own limit
use_openat2 = _SYS_OPENAT2 is not None  # False: always walk (set once openat2 turns out missing)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(rel)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return int(fd)


Roots = list[tuple[str, str]]  # (as configured, real path)


def _roots(settings: Settings) -> Roots:
    return [(os.path.abspath(r), os.path.realpath(r)) for r in settings.input_roots]


def _beneath(path: str, roots: Roots) -> tuple[str, str] | None:
    """(real root, path relative to it) for a path that names something under a root, lexically."""
    for configured, real in roots:
        for base in (real, configured):
            if path == base:
                return real, ""
            prefix = base.rstrip("/") + "/"
            if path.startswith(prefix):
                return real, path[len(prefix) :]
    return None


def open_beneath(raw: str, settings: Settings) -> int:
    """A read-only descriptor of the regular-file candidate `raw`, opened without leaving the roots.

    Raises PathNotAllowedError when `raw` leads outside them (symlinks included) and OSError
    for anything else; the caller makes those typed.
    """
    roots = _roots(settings)
    # A path named through a symlink outside the roots (/data -> /srv/in) starts from its real
    # path; which root it is in is all that is taken from it, the open below checks everything.
    start = _beneath(raw, roots) or _beneath(os.path.realpath(raw), roots)
    if start is None:
        roots_shown = ":".join(str(r) for r in settings.input_roots)
        raise PathNotAllowedError(
            f"{raw!r} is outside the input roots INPUT_ROOTS={roots_shown}: put the file under one of them, or"
            " add its directory to INPUT_ROOTS (colon-separated) in the worker's environment"
        )
    root, rel = start
    global use_openat2
    if use_openat2 and rel:
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            return _openat2(root_fd, rel, _FILE_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EPERM):  # an old kernel, or a seccomp filter refusing it
                use_openat2 = False
            elif exc.errno not in (errno.EXDEV, errno.EAGAIN, errno.ELOOP):
                raise
            # EXDEV: an absolute symlink or a way out; the walk tells them apart
        finally:
            os.close(root_fd)
    return _walk(root, rel, roots)


def _walk(root: str, rel: str, roots: Roots) -> int:
    """Open `rel` beneath `root` one component at a time, following symlinks ourselves."""
    stack = [os.open(root, _DIR_FLAGS)]  # directories walked so far; stack[0] is the root
    parts = rel.split("/")
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    raise PathNotAllowedError("the path climbs out of its input root (INPUT_ROOTS)")
                os.close(stack.pop())
                continue
            final = all(p in ("", ".") for p in parts)
            try:
                fd = os.open(name, (_FILE_FLAGS if final else _DIR_FLAGS) | os.O_NOFOLLOW, dir_fd=stack[-1])
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:  # a symlink (O_NOFOLLOW refused it), or really not a directory
                    target = os.readlink(name, dir_fd=stack[-1])
                except OSError:
                    raise exc from None
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                if target.startswith("/"):
                    found = _beneath(target, roots)
                    if found is None:
                        raise PathNotAllowedError("a symlink leads outside the input roots (INPUT_ROOTS)") from None
                    while stack:
                        os.close(stack.pop())
                    stack.append(os.open(found[0], _DIR_FLAGS))
                    target = found[1]
                parts = target.split("/") + parts
                continue
            if final:
                return fd
            stack.append(fd)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    finally:
        for fd in stack:
            os.close(fd)


def _typed(exc: OSError, raw: str) -> Exception:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return InputNotFoundError(f"{raw!r} does not exist")
    if exc.errno == errno.EISDIR:
        return InputNotFoundError(f"{raw!r} is not a regular file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InputNotFoundError(f"{raw!r} is not readable")
    if exc.errno == errno.EXDEV:
        return PathNotAllowedError(f"{raw!r} is outside the input roots (INPUT_ROOTS)")
    if exc.errno == errno.ELOOP:
        return InputNotFoundError(f"{raw!r}: too many levels of symbolic links")
    return InputReadError(f"{raw!r} cannot be read: {exc.strerror or type(exc).__name__}")


def _load_path(raw: object, settings: Settings) -> SourceBytes:
    if not isinstance(raw, str) or not raw:
        raise InvalidArgumentsError("source path must be a non-empty string")
    if "\x00" in raw:
        raise UnstorableInputError("source path holds a NUL character (U+0000), which no file name can hold")
    try:  # a file name that is not UTF-8 comes as U+DC80..U+DCFF (Python's surrogateescape): fine
        os.fsencode(raw)
    except UnicodeEncodeError as exc:
        raise UnstorableInputError(
            f"source path holds a lone surrogate (U+{ord(raw[exc.start]):04X}), which no file name can hold"
        ) from None
    if not os.path.isabs(raw):
        raise PathNotAllowedError(f"source path must be absolute, got {raw!r}")
    limit = settings.max_pdf_bytes
    try:
        fd = open_beneath(raw, settings)
    except OSError as exc:
        raise _typed(exc, raw) from None
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())  # the opened file, not the name: no check-then-use race
            if not stat.S_ISREG(st.st_mode):
                raise InputNotFoundError(f"{raw!r} is not a regular file")
            real = Path(_fd_path(f.fileno()) or raw)
            if st.st_size > limit:
                raise InputTooLargeError(
                    f"{real.name} is {st.st_size} bytes, over the limit of {limit} (MAX_PDF_BYTES)"
                )
            data = _read_at_most(f, limit + 1)  # the file may grow while we read
    except OSError as exc:
        raise _typed(exc, raw) from None
    if len(data) > limit:
        raise InputTooLargeError(f"{real.name} is over the limit of {limit} bytes (MAX_PDF_BYTES)")
    # The display name is stored: bytes of a file name that are not UTF-8 show as U+FFFD.
    return SourceBytes(data=data, name=storable_text(real.name), path=real)


def _fd_path(fd: int) -> str | None:
    """The path the kernel has for an open descriptor (for the display name), if it can say."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return path if path.startswith("/") and not path.endswith(" (deleted)") else None


def _read_at_most(f, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _load_inline(data_b64: object, filename: object, settings: Settings) -> SourceBytes:
    if not isinstance(data_b64, str):
        raise InvalidArgumentsError("data_b64 must be a base64 string")
    if any(ch.isspace() for ch in data_b64[:100]):  # base64.encodebytes() wraps lines
        data_b64 = "".join(data_b64.split())
    if filename is not None and not isinstance(filename, str):
        raise InvalidArgumentsError("filename must be a string")
    check_storable("filename", filename)  # it is stored as the document's name
    limit = min(settings.max_inline_bytes, settings.max_pdf_bytes)
    # Refuse before decoding: base64 carries 3 bytes per 4 characters.
    if (len(data_b64) // 4) * 3 - 2 > limit:
        raise InputTooLargeError(f"inline data is over the limit of {limit} bytes (MAX_INLINE_BYTES)")
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentsError(f"data_b64 is not valid base64: {exc}") from None
    if len(data) > limit:
        raise InputTooLargeError(f"inline data is {len(data)} bytes, over the limit of {limit} (MAX_INLINE_BYTES)")
    name = Path(filename).name if filename else "inline.pdf"
    return SourceBytes(data=data, name=name[:255] or "inline.pdf", path=None)
