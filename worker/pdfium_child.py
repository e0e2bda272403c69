"""PDFium (pypdfium2) in a child process of its own: it opens the document, then reads the pages
one at a time and hands their text over a pipe.

Why a child: PDFium is C++ and runs without returning to Python while it reads a page, so the
job timeout (a SIGALRM handled in Python) cannot interrupt it, a crash in it would kill the
work-horse, and the memory it takes to build a page's text (about 250 bytes a character) is
spent before any limit can look at that text. In a child, the reading side waits on a pipe
(which the timeout interrupts at once), a crash is a typed error naming the page, and the
child's address space is capped (EXTRACT_MEMORY_MB above what it inherits), so a page that
expands to gigabytes of text stops at the cap. The child is a fork of the caller: PDFium is
loaded and initialised once in the daemon, and a fork costs a few milliseconds. It lives in
the work-horse's process group, which the daemon kills whole when a job outlives its grace.

PDFium is not thread-safe; each child runs one document on one thread.

Frames, child to parent: kind (1 byte), page (4 bytes), length (4 bytes), payload.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import resource
import signal
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from worker.pdfwords import rejoin

HEADER = struct.Struct("<BII")
META, PAGE, PAGE_ERROR, OVER, TEXT_STAGE, FAIL = b"MPEOTF"
GO = b"g"
_IMAGE = pdfium_c.FPDF_PAGEOBJ_IMAGE


@dataclass
class Page:
    number: int  # from 1
    text: str | None  # None: see over / error
    images: bool = False  # no text, but images: a scan (needs OCR)
    over: int = 0  # the page's text ran past the page limit: its length
    error: str | None = None  # PDFium could not load the page


class ChildDied(Exception):
    """The child ended without its answer; `status` is its wait status, `stage` what it was doing."""

    def __init__(self, status: int, page: int, stage: str) -> None:
        super().__init__(status, page, stage)
        self.status, self.page, self.stage = status, page, stage

    @property
    def signal_name(self) -> str | None:
        if os.WIFSIGNALED(self.status):
            sig = os.WTERMSIG(self.status)
            with contextlib.suppress(ValueError):
                return signal.Signals(sig).name
            return f"signal {sig}"
        return None


class Failed(Exception):
    """PDFium refused the document: `kind` is "password" or "format" (its error), with its message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind, self.message = kind, message


class Child:
    """One document in one child process. `meta` once open; then `pages(max_page_chars)` once."""

    def __init__(self, data: bytes, password: str | None, memory_mb: int) -> None:
        results_r, results_w = os.pipe()
        control_r, control_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(results_r)
            os.close(control_w)
            _child(data, password, memory_mb, results_w, control_r)
        os.close(results_w)
        os.close(control_r)
        self.pid: int | None = pid
        self._control = control_w
        self._results = os.fdopen(results_r, "rb", buffering=1 << 16)
        self._page, self._stage = 0, "opening the document"
        kind, _, payload = self._frame()
        if kind == FAIL:
            info = json.loads(payload)
            self.close()
            raise Failed(info["kind"], info["message"])
        self.meta: dict = json.loads(payload)

    def pages(self, max_page_chars: int) -> Iterator[Page]:
        """Each page in order, read by the child while the caller handles the one before."""
        os.write(self._control, GO + struct.pack("<Q", max_page_chars))
        for number in range(1, int(self.meta["pages"]) + 1):
            self._page, self._stage = number, "loading the page"
            kind, page, payload = self._frame()
            if kind == TEXT_STAGE:
                self._stage = "building the page's text"
                kind, page, payload = self._frame()
            if kind == PAGE:
                images, text = payload[:1] == b"1", payload[1:].decode("utf-8", "surrogatepass")
                yield Page(number, text, images=images)
            elif kind == OVER:
                yield Page(number, None, over=struct.unpack("<Q", payload)[0])
            elif kind == PAGE_ERROR:
                yield Page(number, None, error=payload.decode("utf-8", "replace"))
            else:
                raise ValueError(f"unexpected frame {kind!r} for page {number}")

    def _frame(self) -> tuple[int, int, bytes]:
        head = self._results.read(HEADER.size)
        if len(head) < HEADER.size:
            raise self._died()
        kind, page, length = HEADER.unpack(head)
        payload = self._results.read(length)
        if len(payload) < length:
            raise self._died()
        return kind, page, payload

    def _died(self) -> ChildDied:
        status = self._reap(block=True)
        return ChildDied(status if status is not None else 0, self._page, self._stage)

    def _reap(self, block: bool) -> int | None:
        if self.pid is None:
            return None
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid:
                self.pid = None
                return status
            return None
        self.pid = None
        return None

    def close(self) -> None:
        """Stop the child (if it still runs) and reap it; idempotent."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap(block=True)
        with contextlib.suppress(OSError):
            os.close(self._control)
        self._control = -1
        self._results.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# -- the child's side ---------------------------------------------------------------------------


def _child(data: bytes, password: str | None, memory_mb: int, out: int, control: int) -> None:
    status = 70
    try:
        faulthandler.disable()  # a crash here is reported by the parent, not dumped on the job's stderr
        for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        _cap_memory(memory_mb)
        _serve(data, password, out, control)
        status = 0
    except BaseException:  # noqa: BLE001 - the parent sees a missing frame and says which page
        pass
    finally:
        os._exit(status)


def _cap_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + memory_mb * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _send(out: int, kind: int, page: int, payload: bytes) -> None:
    buf = memoryview(HEADER.pack(kind, page, len(payload)) + payload)
    while buf:
        buf = buf[os.write(out, buf) :]


def _serve(data: bytes, password: str | None, out: int, control: int) -> None:
    try:
        doc = pdfium.PdfDocument(data, password=password)
    except pdfium.PdfiumError as exc:
        kind = "password" if "password" in str(exc).lower() else "format"
        _send(out, FAIL, 0, json.dumps({"kind": kind, "message": str(exc)}).encode())
        return
    meta = {"pages": len(doc)}
    for key in ("Title", "Author", "Producer", "Creator"):
        try:
            meta[key.lower()] = doc.get_metadata_value(key) or None
        except Exception:  # a broken /Info must not cost the document
            meta[key.lower()] = None
    _send(out, META, 0, json.dumps(meta).encode("utf-8", "surrogatepass"))
    command = os.read(control, 9)
    if command[:1] != GO:
        return  # the parent is done with the document without its pages
    (max_page_chars,) = struct.unpack("<Q", command[1:9])
    for i in range(meta["pages"]):
        _serve_page(doc, i, max_page_chars, out)


def _serve_page(doc: pdfium.PdfDocument, i: int, max_page_chars: int, out: int) -> None:
    try:
        page = doc[i]
    except pdfium.PdfiumError as exc:
        _send(out, PAGE_ERROR, i + 1, f"PdfiumError: {exc}".encode())
        return
    _send(out, TEXT_STAGE, i + 1, b"")
    textpage = page.get_textpage()
    text = textpage.get_text_range() if textpage.count_chars() else ""
    if len(text) <= max_page_chars:
        text = rejoin(textpage, text)
    textpage.close()
    if len(text) > max_page_chars:
        _send(out, OVER, i + 1, struct.pack("<Q", len(text)))
    else:
        images = not text.strip() and _has_images(page)
        _send(out, PAGE, i + 1, (b"1" if images else b"0") + text.encode("utf-8", "surrogatepass"))
    page.close()


def _has_images(page: pdfium.PdfPage) -> bool:
    """Whether a page without text shows an image (a scan), not only drawings or nothing."""
    return any(True for _ in page.get_objects(filter=[_IMAGE], max_depth=3))
