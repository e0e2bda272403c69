"""PDF text extraction with pypdf: text per page, metadata, and typed errors for bad files.

pypdf's resource limits stay on: they are what stops a decompression bomb (its
`LimitReachedError` becomes our `DecompressionBombError`). A page that fails for any other
reason of its own (pypdf failing to parse it: see `_page_fault`) is recorded and the other
pages still go through; anything else (RQ's job timeout, MemoryError, our own limits) ends the
extraction, so that a document is never stored with pages silently missing. A page with no text
layer (a scan) is not an error, only counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import signal
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pypdf._codecs._codecs  # noqa: F401  (imported here, in the parent: see below)
import pypdf.filters  # noqa: F401
from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, EmptyFileError, LimitReachedError, PyPdfError

from worker.errors import (
    DecompressionBombError,
    EmptyInputError,
    EncryptedPdfError,
    InputTooLargeError,
    NotAPdfError,
    TextTooLargeError,
    TruncatedPdfError,
    WorkerError,
)

# pypdf imports these lazily on every PdfReader; a forked work-horse would import them again for
# each job (about 17 ms of a one-page ingest). Imported with this module, in the daemon, once.
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
    max_page_chars: int | None = None,
    max_document_chars: int | None = None,
) -> Extracted:
    """Text of every page of `data`. `on_page(done, total)` is called after each page.

    The text limits default to the settings' MAX_PAGE_CHARS and MAX_DOCUMENT_CHARS; past
    either, TextTooLargeError, raised while pypdf is still producing the page's text.
    """
    reader = reader or open_pdf(data, password, max_pages)
    pages = PageTexts(reader, max_page_chars, max_document_chars)
    texts = []
    for text in pages:
        texts.append(text)
        if on_page is not None:
            on_page(len(texts), pages.total)
    return Extracted(sha256=sha256(data), pages=texts, metadata=metadata(reader), page_errors=pages.errors)


class PageTexts:
    """The text of each page of an open PDF, in order, one at a time (iterate once).

    What a page that pypdf fails on gives is "" and an entry in `errors`; anything that is not
    the page's own fault ends the iteration with its exception (see the module docstring). So
    does a document where no page could be read (TruncatedPdfError, after the last page).
    """

    def __init__(
        self, reader: PdfReader, max_page_chars: int | None = None, max_document_chars: int | None = None
    ) -> None:
        if max_page_chars is None or max_document_chars is None:
            from worker.settings import get_settings

            settings = get_settings()
            max_page_chars = settings.max_page_chars if max_page_chars is None else max_page_chars
            max_document_chars = settings.max_document_chars if max_document_chars is None else max_document_chars
        self.reader = reader
        self.max_page_chars, self.max_document_chars = max_page_chars, max_document_chars
        self.total = len(reader.pages)
        self.errors: list[dict[str, object]] = []  # {"page": n, "error": "..."}
        self.without_text = 0

    def __iter__(self) -> Iterator[str]:
        reader, errors = self.reader, self.errors
        used = 0  # characters of text so far
        with _alarm_latch() as alarms:
            for i in range(self.total):
                budget = _TextBudget(i + 1, self.max_page_chars, self.max_document_chars, used)
                try:
                    text = clean_text(reader.pages[i].extract_text(visitor_text=budget) or "")
                except LimitReachedError as exc:
                    raise DecompressionBombError(f"page {i + 1}: pypdf stopped at a resource limit: {exc}") from None
                except Exception as exc:
                    if alarms:
                        raise alarms[0] from None  # the job timeout, however pypdf wrapped or swallowed it
                    if budget.error is not None:
                        raise budget.error from None
                    if not _page_fault(exc):
                        raise  # MemoryError, our own limits, anything not pypdf failing on the page
                    text = ""
                    message = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)
                    errors.append({"page": i + 1, "error": f"{type(exc).__name__}: {message}"[:500]})
                if alarms:  # pypdf swallowed the job timeout somewhere inside (it catches Exception in places)
                    raise alarms[0]
                budget.check(len(text))  # also when pypdf swallowed the budget's own error
                used += len(text)
                if not text.strip():
                    self.without_text += 1
                yield text
        if self.total and len(errors) == self.total:
            raise TruncatedPdfError(f"no page could be read; page 1: {errors[0]['error']}")


class _TextBudget:
    """pypdf's `visitor_text` for one page: counts the text as pypdf produces it and stops the
    page (raises TextTooLargeError) once past the page's limit or what is left of the document's.

    pypdf hands the visitor one piece per text operator, so a page stops within one operator of
    its limit, before its text is built in full. One operator can still show much text (a long
    string of glyphs that each map to many characters); the work-horse's memory limit
    (HORSE_MEMORY_MB) and the job timeout bound that.
    """

    def __init__(self, page: int, page_limit: int, document_limit: int, used: int) -> None:
        self.page, self.page_limit, self.document_limit = page, page_limit, document_limit
        self.limit = min(page_limit, document_limit - used)
        self.used = used
        self.seen = 0
        self.error: TextTooLargeError | None = None

    def __call__(self, text: object, *_: object) -> None:
        if self.error is not None:  # pypdf swallowed it (around a form XObject): stop again
            raise self.error
        if isinstance(text, str):
            self.seen += len(text)
            if self.seen > self.limit:
                self.error = self._error()
                raise self.error

    def check(self, chars: int) -> None:
        """After the page: its exact length (pypdf adds line breaks the visitor does not see)."""
        self.seen = max(self.seen, chars)
        if self.error is None and self.seen > self.limit:
            self.error = self._error()
        if self.error is not None:
            raise self.error

    def _error(self) -> TextTooLargeError:
        if self.seen > self.page_limit:
            return TextTooLargeError(
                f"page {self.page} expands to over {self.page_limit} characters of text (MAX_PAGE_CHARS);"
                f" stopped at {self.seen}"
            )
        return TextTooLargeError(
            f"the document expands to over {self.document_limit} characters of text (MAX_DOCUMENT_CHARS);"
            f" stopped at page {self.page} with {self.used + self.seen}"
        )


# What pypdf raises when a page's own content is broken. Anything else is not the page's fault.
_PAGE_FAULTS: tuple[type[BaseException], ...] = (
    PyPdfError,
    DependencyError,
    ValueError,  # UnicodeError and binascii.Error too
    LookupError,  # KeyError, IndexError
    TypeError,
    AttributeError,
    NotImplementedError,  # an unsupported filter
    ArithmeticError,
    AssertionError,
    RecursionError,
    struct.error,
    zlib.error,
)


def _page_fault(exc: Exception) -> bool:
    """True when `exc` is pypdf failing on the page's content, which costs that page only."""
    if isinstance(exc, WorkerError) or not isinstance(exc, _PAGE_FAULTS):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return not module.startswith(("rq.", "worker."))  # raised by a signal handler or by us: not the page


@contextlib.contextmanager
def _alarm_latch() -> Iterator[list[BaseException]]:
    """Remember the exception RQ's job timeout raises from its SIGALRM handler.

    The handler raises wherever the horse happens to be; pypdf catches `Exception` in places
    (a form XObject that fails to decode), so the timeout could be swallowed there and the
    document stored with text missing. The latch lets `extract` raise it again after the page.
    """
    fired: list[BaseException] = []
    old = signal.getsignal(signal.SIGALRM) if threading.current_thread() is threading.main_thread() else None
    if not callable(old):
        yield fired
        return

    def latch(signum: int, frame: object) -> None:
        try:
            old(signum, frame)
        except BaseException as exc:
            fired.append(exc)
            raise

    signal.signal(signal.SIGALRM, latch)
    try:
        yield fired
    finally:
        if signal.getsignal(signal.SIGALRM) is latch:
            signal.signal(signal.SIGALRM, old)
