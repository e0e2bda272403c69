"""PDF text extraction with pypdf: text per page, metadata, and typed errors for bad files.

pypdf's resource limits stay on: they are what stops a decompression bomb (its
`LimitReachedError` becomes our `DecompressionBombError`). A page that fails for any other
reason is recorded and the other pages still go through; a page with no text layer (a scan)
is not an error, only counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, EmptyFileError, LimitReachedError, PyPdfError

from worker.errors import (
    DecompressionBombError,
    EmptyInputError,
    EncryptedPdfError,
    InputTooLargeError,
    NotAPdfError,
    TruncatedPdfError,
)

log = logging.getLogger(__name__)
logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on sloppy real-world files are noise

HEADER_WINDOW = 1024  # readers accept junk before %PDF- within the first KiB
EOF_WINDOW = 8192  # and after %%EOF within the last few KiB


@dataclass
class Extracted:
    sha256: str
    pages: list[str]  # text per page, index 0 is page 1
    metadata: dict[str, object]  # title, author, producer, creator, page_count
    page_errors: list[dict[str, object]] = field(default_factory=list)  # {"page": n, "error": "..."}

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def pages_without_text(self) -> int:
        return sum(1 for t in self.pages if not t.strip())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_pdf(data: bytes, password: str | None = None, max_pages: int | None = None) -> PdfReader:
    """A reader over `data`, decrypted, with its page count checked; typed errors otherwise."""
    if not data:
        raise EmptyInputError("the input is empty (0 bytes)")
    head = data[:HEADER_WINDOW]
    if b"%PDF-" not in head:
        if not data.strip():
            raise EmptyInputError("the input holds only whitespace")
        raise NotAPdfError(f"not a PDF: no %PDF- header (starts with {data[:16]!r})")
    if b"%%EOF" not in data[-EOF_WINDOW:]:
        raise TruncatedPdfError("the PDF is cut short: no %%EOF marker at its end")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            _decrypt(reader, password)
        n_pages = len(reader.pages)
    except LimitReachedError as exc:
        raise DecompressionBombError(f"pypdf stopped at a resource limit: {exc}") from None
    except EmptyFileError:
        raise EmptyInputError("the PDF is empty") from None
    except (EncryptedPdfError, InputTooLargeError):
        raise
    except DependencyError as exc:
        raise EncryptedPdfError(f"the PDF's encryption is not supported here: {exc}") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise TruncatedPdfError(f"the PDF's structure is broken: {type(exc).__name__}: {exc}") from None
    if max_pages is not None and n_pages > max_pages:
        raise InputTooLargeError(f"the PDF has {n_pages} pages, over the limit of {max_pages} (MAX_PAGES)")
    return reader


def _decrypt(reader: PdfReader, password: str | None) -> None:
    try:
        if reader.decrypt("") != PasswordType.NOT_DECRYPTED:
            return
        if password is None:
            raise EncryptedPdfError("the PDF is encrypted and needs a password (pass `password`)")
        if reader.decrypt(password) == PasswordType.NOT_DECRYPTED:
            raise EncryptedPdfError("the PDF is encrypted and the given password is wrong")
    except NotImplementedError as exc:
        raise EncryptedPdfError(f"the PDF uses an unsupported encryption: {exc}") from None


def metadata(reader: PdfReader) -> dict[str, object]:
    out: dict[str, object] = {"title": None, "author": None, "producer": None, "creator": None}
    try:
        info = reader.metadata
    except Exception as exc:  # a broken /Info must not cost the document
        log.debug("unreadable /Info: %s", exc)
        info = None
    if info is not None:
        for key in out:
            try:
                value = info.get("/" + key.capitalize())
            except Exception:
                value = None
            if value is not None:
                out[key] = clean_text(str(value)).strip()[:1000] or None
    out["page_count"] = len(reader.pages)
    return out


def clean_text(text: str) -> str:
    """Drop NULs and lone surrogates that pypdf may emit; SQLite and tokenizers want clean UTF-8."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def extract(
    data: bytes,
    password: str | None = None,
    max_pages: int | None = None,
    on_page: Callable[[int, int], None] | None = None,
    reader: PdfReader | None = None,
) -> Extracted:
    """Text of every page of `data`. `on_page(done, total)` is called after each page."""
    reader = reader or open_pdf(data, password, max_pages)
    pages: list[str] = []
    errors: list[dict[str, object]] = []
    total = len(reader.pages)
    for i in range(total):
        try:
            text = clean_text(reader.pages[i].extract_text() or "")
        except LimitReachedError as exc:
            raise DecompressionBombError(f"page {i + 1}: pypdf stopped at a resource limit: {exc}") from None
        except RecursionError:
            text = ""
            errors.append({"page": i + 1, "error": "RecursionError: nesting too deep"})
        except Exception as exc:  # any other failure costs this page only
            text = ""
            errors.append({"page": i + 1, "error": f"{type(exc).__name__}: {exc}"[:500]})
        pages.append(text)
        if on_page is not None:
            on_page(i + 1, total)
    if total and len(errors) == total:
        raise TruncatedPdfError(f"no page could be read; page 1: {errors[0]['error']}")
    return Extracted(sha256=sha256(data), pages=pages, metadata=metadata(reader), page_errors=errors)


class Throttle:
    """Calls `fn(done, total)` at most every `interval` seconds, and always for the last item."""

    def __init__(self, fn: Callable[[int, int], None], interval: float = 0.25) -> None:
        self.fn, self.interval, self.last = fn, interval, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= self.interval:
            self.last = now
            self.fn(done, total)
