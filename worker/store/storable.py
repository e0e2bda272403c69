"""What no store can hold, checked once for both.

Both stores keep text as UTF-8: a lone surrogate (which Python strings may hold, e.g. from JSON
"\\ud800") has no UTF-8 form. PostgreSQL's text and jsonb hold no NUL (SQLite does: a document
holding one could never be copied to PostgreSQL), and its jsonb no NaN or infinity. One check for
both stores: a job's arguments are refused with it before any work, and `add_document` runs it
again on everything it is given, so both stores refuse exactly the same documents.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from worker.errors import UnstorableInputError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _why(char: str) -> str:
    if char == "\x00":
        return "holds a NUL character (U+0000), which PostgreSQL cannot store"
    return f"holds a lone surrogate (U+{ord(char):04X}), which is not text any store can encode"


def _label(key: object) -> str:
    text = repr(key)  # escapes NUL, surrogates and control characters
    return text if len(text) <= 40 else text[:37] + "..."


def unstorable(value: object, where: str = "") -> str | None:
    """Why `value` (a string, or JSON-like data: dicts, lists, strings, numbers) cannot be held by
    every store, starting with the path `where` to the bad part; None when it can."""
    stack: list[tuple[object, str]] = [(value, where)]
    while stack:  # no recursion: a deeply nested value cannot overflow the stack
        item, at = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                return f"{at} {_why(found.group())}".strip()
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{at} is {item}, which JSON cannot carry".strip()
        elif isinstance(item, Mapping):
            for key, val in item.items():
                stack.append((val, f"{at}[{_label(key)}]"))
                stack.append((key, f"{at} key {_label(key)}"))
        elif isinstance(item, list | tuple):
            stack.extend((val, f"{at}[{i}]") for i, val in enumerate(item))
    return None


def check_storable(what: str, value: object) -> None:
    """UnstorableInputError naming `what` and the bad part when no store can hold `value`."""
    reason = unstorable(value, what)
    if reason is not None:
        raise UnstorableInputError(reason)


def check_encodable(what: str, value: object) -> None:
    """UnstorableInputError when the string `value` holds a lone surrogate: no UTF-8 form, so neither
    a store nor the tokenizer takes it. (A NUL is fine where nothing is stored: a password, a text to embed.)"""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found:
            raise UnstorableInputError(f"{what} {_why(found.group())}")


def storable_text(text: str) -> str:
    """`text` with each NUL and lone surrogate replaced by U+FFFD, character for character (offsets
    into it stay valid): for text that comes out of a document, which is kept rather than refused."""
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


def storable(value: object) -> object:
    """`value` (JSON-like) with `storable_text` applied to every string in it, keys included."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value
