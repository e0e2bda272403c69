"""Text that came from a job or from Redis, made fit for an output: logs, sd_notify, metric
labels, the terminal, health bodies.

Anyone who can write to Redis chooses job ids, function names, worker names and dates. Such
a value may be any JSON type, bytes that are not UTF-8, a surrogate, a newline that forges a
log line or an sd_notify assignment, a terminal escape, or 100 KB. `safe_text` turns all of
these into one printable line of bounded length; `function_label` turns a function name
into a metric label from a bounded set.
"""

from __future__ import annotations

import reprlib

UNREGISTERED = "<unregistered>"  # the one metric label of every function name not registered

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MIN_LIMIT = 16  # room for the truncation marker and a little text


def _escape_char(ch: str, backslash: bool = True, from_bytes: bool = False) -> str:
    """One character as `repr` writes it inside quotes (quotes themselves left alone)."""
    if ch in _ESCAPES and (backslash or ch != "\\"):
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if from_bytes and 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str, backslash: bool = True) -> str:
    """`text` with every non-printable character (control characters, line and paragraph
    separators, surrogates, bidi controls...) escaped as `repr` does, and backslashes too
    unless `backslash` is False (readable tracebacks, where ambiguity does not matter); not bounded."""
    if text.isprintable() and (not backslash or "\\" not in text):
        return text
    return "".join(_escape_char(ch, backslash) for ch in text)


def cut(text: str, limit: int) -> str:
    """`text` (already printable) in at most `limit` characters: its head and its tail, with a
    visible marker of what was left out in between."""
    if len(text) <= limit:
        return text
    marker = f"...[{len(text) - limit} chars left out]..."
    keep = max(limit - len(marker), 0)
    return text[: keep - keep // 4] + marker + (text[-(keep // 4) :] if keep // 4 else "")


def _bounded_repr(value: object, limit: int) -> str:
    """repr() of a non-text value, at most about `limit` characters, whatever it holds."""
    r = reprlib.Repr()
    r.maxlevel = 3
    r.maxstring = r.maxother = r.maxlong = max(limit, _MIN_LIMIT)
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    try:
        return r.repr(value)
    except Exception:  # a __repr__ that raises, an int too long to print...
        return f"<{type(value).__name__}>"


def safe_text(value: object, limit: int = 200) -> str:
    """`value` as one printable line of at most `limit` characters (at least 16).

    Strings and bytes are escaped as `repr` escapes them (without the quotes): newlines,
    NUL, terminal escapes, surrogates and backslashes; bytes that are not UTF-8 show as
    `\\xNN`. Anything else is its (bounded) repr. Text that does not fit is cut and ends
    with a visible marker, `...[N chars]` (N: the length of the whole value).
    """
    limit = max(int(limit), _MIN_LIMIT)
    from_bytes = isinstance(value, bytes | bytearray)
    if isinstance(value, str):
        # limit + 1 characters are enough to know whether it fits: each one takes a place at least.
        text, whole, marker = str.__str__(value[: limit + 1]), len(value) <= limit, f"...[{len(value)} chars]"
    elif isinstance(value, bytes | bytearray):
        text = bytes(value[: 4 * (limit + 1)]).decode("utf-8", "surrogateescape")
        whole, marker = len(value) <= 4 * (limit + 1), f"...[{len(value)} bytes]"
    else:
        text, whole, marker = _bounded_repr(value, limit), True, "..."
    pieces: list[str] = []
    used = 0
    for ch in text:
        piece = _escape_char(ch, from_bytes=from_bytes)
        if used + len(piece) > limit:
            break
        pieces.append(piece)
        used += len(piece)
    else:
        if whole:
            return "".join(pieces)
    while pieces and used + len(marker) > limit:
        used -= len(pieces.pop())
    return "".join(pieces) + marker[:limit]


def function_label(name: object) -> str:
    """A job's function name as a metric label: a registered job's name as it is, any other
    name (forbidden, unreadable, not a string) the one label `<unregistered>`, so that a
    producer cannot add labels, nor make one long."""
    if not isinstance(name, str):
        return UNREGISTERED
    from worker.allowlist import BUILTIN_JOBS, registered_names

    try:
        registered = registered_names()
    except Exception:  # settings unreadable here: the built-in names still count as known
        registered = BUILTIN_JOBS
    return name if name in registered else UNREGISTERED
