"""Text from a job, made safe for an output: one line, printable, bounded."""

from __future__ import annotations


def safe_text(value: object, limit: int = 200) -> str:
    """`value` as a single printable line of at most about `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + f"...({len(text) - limit} more)"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
