"""Plain text and Markdown as a document: UTF-8 bytes checked and decoded, for `ingest_text`.

A text has no pages: it is chunked as one page, and its chunks' page numbers are None. What is
refused, with a typed error: no bytes (EmptyInputError), bytes that are not UTF-8 or look binary
(NUL bytes, or more than 1% control characters: NotTextError), more characters than
MAX_DOCUMENT_CHARS (TextTooLargeError); the byte limits are the loader's (worker/sources.py).
Markdown is kept as written: its marks are few and the model reads them as punctuation.
"""

from __future__ import annotations

import re

from worker.errors import EmptyInputError, NotTextError, TextTooLargeError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown")  # what `enqueue` sends to ingest_text
MAX_CONTROL_SHARE = 0.01  # control characters (other than tab, line and page breaks) a text may hold
_CONTROL = re.compile("[\x01-\x08\x0e-\x1a\x1c-\x1f\x7f]")  # C0 and DEL but \t \n \v \f \r, ESC


def decode_text(data: bytes, name: str, max_chars: int) -> str:
    """The text of `data` (UTF-8, a byte order mark dropped), or a typed error naming `name`."""
    if not data:
        raise EmptyInputError(f"{name} is empty")
    if b"\x00" in data:
        raise NotTextError(f"{name} holds NUL bytes: binary data, or text in UTF-16/32; give UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotTextError(
            f"{name} is not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r}); convert it to UTF-8"
        ) from None
    controls = len(_CONTROL.findall(text))
    if controls > MAX_CONTROL_SHARE * len(text):
        raise NotTextError(f"{name} holds {controls} control characters in {len(text)}: binary data, not text")
    if len(text) > max_chars:
        raise TextTooLargeError(f"{name} holds {len(text)} characters, over {max_chars} (MAX_DOCUMENT_CHARS)")
    return text
