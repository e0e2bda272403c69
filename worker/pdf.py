"""PDF text extraction with PDFium (pypdfium2): text per page, metadata, and typed errors for bad files.

PDFium keeps the words of documents where pypdf runs them together (TeX fonts without a space
glyph) and reads pages many times faster (figures in docs/benchmarks.md#text-extraction). It
runs in a child process (worker/pdfium_child.py): the job timeout interrupts it, a crash in it
fails the job with a typed error, and its memory is capped. Before it sees the file, the file's
compressed streams are measured (worker/pdfscan.py): a decompression bomb fails at once.

A page PDFium cannot load is recorded and the other pages still go through; anything else ends
the extraction, so that a document is never stored with pages silently missing. A page with no
text layer is not an error, only counted, and named when it holds an image (a scan: it needs OCR).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from worker.errors import (
    EmptyInputError,
    EncryptedPdfError,
    InputTooLargeError,
    NotAPdfError,
    TextTooLargeError,
    TruncatedPdfError,
)
from worker.pdfium_child import Child, ChildDied, Failed
from worker.pdfscan import check_streams

HEADER_WINDOW = 1024  # readers accept junk before %PDF- within the first KiB
EOF_WINDOW = 8192  # and after %%EOF within the last few KiB (blank or NUL padding aside)
_MEMORY_SIGNALS = ("SIGABRT", "SIGKILL", "SIGTRAP")  # how PDFium ends when an allocation fails


@dataclass
class Extracted:
    sha256: str
    pages: list[str]  # text per page, index 0 is page 1
    metadata: dict[str, object]  # title, author, producer, creator, page_count
    page_errors: list[dict[str, object]] = field(default_factory=list)  # {"page": n, "error": "..."}
    scanned_pages: list[int] = field(default_factory=list)  # pages with images and no text: need OCR

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def pages_without_text(self) -> int:
        return sum(1 for t in self.pages if not t.strip())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PdfDocument:
    """An open PDF: its page count and metadata, its pages read once through `PageTexts`.
    Close it (or use it in a `with`) when done: that ends its PDFium child."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.page_count = int(child.meta["pages"])

    def close(self) -> None:
        self.child.close()

    def __enter__(self) -> PdfDocument:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_pdf(
    data: bytes, password: str | None = None, max_pages: int | None = None, memory_mb: int | None = None
) -> PdfDocument:
    """The PDF in `data`, decrypted, with its page count checked; typed errors otherwise."""
    if not data:
        raise EmptyInputError("the input is empty (0 bytes)")
    if b"%PDF-" not in data[:HEADER_WINDOW]:
        if not data.strip():
            raise EmptyInputError("the input holds only whitespace")
        raise NotAPdfError(f"not a PDF: no %PDF- header (starts with {data[:16]!r})")
    if b"%%EOF" not in data[-EOF_WINDOW:] and b"%%EOF" not in data.rstrip(b"\x00\t\n\r\f ")[-EOF_WINDOW:]:
        raise TruncatedPdfError("the PDF is cut short: no %%EOF marker at its end")
    check_streams(data)
    if memory_mb is None:
        from worker.settings import get_settings

        memory_mb = get_settings().extract_memory_mb
    try:
        child = Child(data, password, memory_mb)
    except Failed as exc:
        raise _refused(exc, password) from None
    except ChildDied as exc:
        raise TruncatedPdfError(f"PDFium ended ({exc.signal_name or 'exit'}) opening the document") from None
    doc = PdfDocument(child)
    if max_pages is not None and doc.page_count > max_pages:
        doc.close()
        raise InputTooLargeError(f"the PDF has {doc.page_count} pages, over the limit of {max_pages} (MAX_PAGES)")
    if doc.page_count == 0:
        doc.close()
        raise TruncatedPdfError("the PDF has no pages")
    return doc


def _refused(exc: Failed, password: str | None) -> Exception:
    if exc.kind == "password":
        if password is None:
            return EncryptedPdfError("the PDF is encrypted and needs a password (pass `password`)")
        return EncryptedPdfError("the PDF is encrypted and the given password is wrong")
    if "security" in exc.message.lower():
        return EncryptedPdfError(f"the PDF's encryption is not supported here: {exc.message}")
    return TruncatedPdfError(f"the PDF's structure is broken: {exc.message}")


def metadata(doc: PdfDocument) -> dict[str, object]:
    """Title, author, producer, creator (None when absent) and the page count."""
    out: dict[str, object] = {}
    for key in ("title", "author", "producer", "creator"):
        value = doc.child.meta.get(key)
        out[key] = clean_text(str(value)).strip()[:1000] or None if value else None
    out["page_count"] = doc.page_count
    return out


def clean_text(text: str) -> str:
    """Drop NULs, PDFium's CRs and lone surrogates; SQLite and tokenizers want clean UTF-8."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
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
    max_page_chars: int | None = None,
    max_document_chars: int | None = None,
    memory_mb: int | None = None,
) -> Extracted:
    """Text of every page of `data`. `on_page(done, total)` is called after each page.

    The text limits default to the settings' MAX_PAGE_CHARS and MAX_DOCUMENT_CHARS; past
    either, TextTooLargeError, raised at the page that crosses it, before the next is read.
    """
    with open_pdf(data, password, max_pages, memory_mb) as doc:
        pages = PageTexts(doc, max_page_chars, max_document_chars)
        texts = []
        for text in pages:
            texts.append(text)
            if on_page is not None:
                on_page(len(texts), pages.total)
        return Extracted(
            sha256=sha256(data),
            pages=texts,
            metadata=metadata(doc),
            page_errors=pages.errors,
            scanned_pages=pages.scanned,
        )


class PageTexts:
    """The text of each page of an open PDF, in order, one at a time (iterate once).

    What a page that PDFium cannot load gives is "" and an entry in `errors`; a crash of PDFium,
    the job timeout or a limit ends the iteration with its exception. So does a document where
    no page could be read (TruncatedPdfError, after the last page). The document is closed
    when the iteration ends.
    """

    def __init__(
        self, doc: PdfDocument, max_page_chars: int | None = None, max_document_chars: int | None = None
    ) -> None:
        if max_page_chars is None or max_document_chars is None:
            from worker.settings import get_settings

            settings = get_settings()
            max_page_chars = settings.max_page_chars if max_page_chars is None else max_page_chars
            max_document_chars = settings.max_document_chars if max_document_chars is None else max_document_chars
        self.doc = doc
        self.max_page_chars, self.max_document_chars = max_page_chars, max_document_chars
        self.total = doc.page_count
        self.errors: list[dict[str, object]] = []  # {"page": n, "error": "..."}
        self.without_text = 0
        self.scanned: list[int] = []  # pages with an image and no text

    def __iter__(self) -> Iterator[str]:
        used = 0  # characters of text so far
        try:
            for page in self.doc.child.pages(self.max_page_chars):
                if page.over:
                    raise self._page_over(page.number, page.over)
                if page.error is not None:
                    self.errors.append({"page": page.number, "error": page.error[:500]})
                text = clean_text(page.text or "")
                if used + len(text) > self.max_document_chars:
                    raise TextTooLargeError(
                        f"the document expands to over {self.max_document_chars} characters of text"
                        f" (MAX_DOCUMENT_CHARS); stopped at page {page.number} with {used + len(text)}"
                    )
                used += len(text)
                if not text.strip():
                    self.without_text += 1
                    if page.images:
                        self.scanned.append(page.number)
                yield text
        except ChildDied as exc:
            raise self._died(exc) from None
        finally:
            self.doc.close()
        if self.total and len(self.errors) == self.total:
            raise TruncatedPdfError(f"no page could be read; page 1: {self.errors[0]['error']}")

    def _page_over(self, number: int, chars: int) -> TextTooLargeError:
        return TextTooLargeError(
            f"page {number} expands to over {self.max_page_chars} characters of text (MAX_PAGE_CHARS);"
            f" stopped at {chars}"
        )

    def _died(self, exc: ChildDied) -> Exception:
        how = exc.signal_name or f"exit status {exc.status >> 8}"
        if exc.signal_name in _MEMORY_SIGNALS:
            if exc.stage.startswith("building"):
                return TextTooLargeError(
                    f"page {exc.page} expands to over {self.max_page_chars} characters of text (MAX_PAGE_CHARS):"
                    f" PDFium ran out of the memory allowed (EXTRACT_MEMORY_MB) {exc.stage} ({how})"
                )
            return InputTooLargeError(
                f"page {exc.page}: PDFium ran out of the memory allowed (EXTRACT_MEMORY_MB) {exc.stage} ({how})"
            )
        return TruncatedPdfError(f"page {exc.page}: PDFium crashed {exc.stage} ({how}): the PDF is malformed")
