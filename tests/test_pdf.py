"""Extraction with PDFium on hand-made PDFs: text, metadata, and a typed error per kind of bad file."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import time

import pytest

from tests import pdfs
from worker.errors import (
    DecompressionBombError,
    EmptyInputError,
    EncryptedPdfError,
    InputTooLargeError,
    NotAPdfError,
    TextTooLargeError,
    TruncatedPdfError,
)
from worker.pdf import PageTexts, extract, open_pdf


def test_text_per_page_metadata_and_pages_without_text() -> None:
    data = pdfs.sample_pdf()
    seen: list[tuple[int, int]] = []
    doc = extract(data, on_page=lambda done, total: seen.append((done, total)))
    assert doc.page_count == 5
    assert "Mount Etna" in doc.pages[0]
    assert "sourdough" in doc.pages[1].lower()
    assert doc.pages[2].strip() == ""
    assert "Gustave Eiffel" in doc.pages[3]
    assert doc.pages_without_text == 1
    assert doc.page_errors == []
    assert doc.sha256 == hashlib.sha256(data).hexdigest()
    assert doc.metadata == {
        "title": "Sample Δ document",
        "author": "Test Author",
        "producer": "worker tests",
        "creator": None,
        "page_count": 5,
    }
    assert seen == [(i, 5) for i in range(1, 6)]


def test_non_latin_text() -> None:
    page = extract(pdfs.sample_pdf()).pages[4]
    for text in ("Ακρόπολη της Αθήνας", "富士山は日本で最も高い山です。", "Москва — столица России."):
        assert text in page


def test_encrypted_with_empty_user_password_opens_without_asking() -> None:
    data = pdfs.encrypt(pdfs.sample_pdf(), user_password="")
    doc = extract(data)
    assert "Mount Etna" in doc.pages[0]
    assert doc.sha256 == hashlib.sha256(data).hexdigest()


def test_encrypted_with_password() -> None:
    data = pdfs.encrypt(pdfs.sample_pdf(), user_password="s3cret")
    with pytest.raises(EncryptedPdfError, match="needs a password"):
        extract(data)
    with pytest.raises(EncryptedPdfError, match="wrong"):
        extract(data, password="guess")
    assert "Gustave Eiffel" in extract(data, password="s3cret").pages[3]
    # The owner password opens it too, as in any reader.
    assert "Mount Etna" in extract(data, password="owner-secret").pages[0]


def test_truncated() -> None:
    data = pdfs.sample_pdf()
    for cut in (len(data) // 2, len(data) - 10, 20):
        with pytest.raises(TruncatedPdfError):
            extract(data[:cut])


def test_padding_after_the_end_marker_is_not_truncation() -> None:
    """Some writers pad a file with NULs (to a block size): 20 KB of them is not a cut file."""
    assert "Mount Etna" in extract(pdfs.sample_pdf() + b"\x00" * 20_000).pages[0]


def test_a_page_tree_that_loops_or_lies_about_its_count_gives_its_real_pages() -> None:
    data = pdfs.make_pdf(["one", "two"])
    kids = data.find(b"/Kids [")
    loop = data[:kids] + b"/Kids [2 0 R " + data[kids + 7 :]  # the page tree (object 2) is its own kid
    assert [p.strip() for p in extract(loop).pages] == ["one", "two"]
    assert extract(data.replace(b"/Count 2", b"/Count 2000000000")).page_count == 2


def test_broken_structure_is_truncated_error() -> None:
    data = b"%PDF-1.7\n1 0 obj\n<< garbage\nendobj\ntrailer\n<< /Root 9 0 R >>\n%%EOF\n"
    with pytest.raises(TruncatedPdfError):
        extract(data)


def test_text_file_named_pdf_and_empty() -> None:
    with pytest.raises(NotAPdfError):
        extract(b"Dear team,\nthis is plain text pretending to be a PDF.\n")
    with pytest.raises(NotAPdfError):
        extract(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(EmptyInputError):
        extract(b"")
    with pytest.raises(EmptyInputError):
        extract(b"\n\n  ")


def test_flate_bomb_stopped_before_any_parser_inflates_it() -> None:
    data = pdfs.flate_bomb(200)
    assert len(data) < 400_000
    started = time.monotonic()
    with pytest.raises(DecompressionBombError):
        extract(data)
    assert time.monotonic() - started < 30  # not a timing benchmark: only "it did not inflate 200 MB"


def test_page_limit() -> None:
    data = pdfs.make_pdf(["p"] * 6)
    with pytest.raises(InputTooLargeError, match="MAX_PAGES"):
        extract(data, max_pages=5)
    assert extract(data, max_pages=6).page_count == 6


def test_a_failing_page_is_recorded_and_others_go_on() -> None:
    data = pdfs.missing_last_page(pdfs.make_pdf(["page one text", "page two text", "page three text"]))
    doc = extract(data)
    assert [p.strip() for p in doc.pages] == ["page one text", "page two text", ""]
    assert doc.page_errors == [{"page": 3, "error": "PdfiumError: Failed to load page."}]
    assert doc.pages_without_text == 1


def test_an_unknown_filter_is_read_as_it_is_like_a_viewer_does() -> None:
    data = pdfs.make_pdf(["page one text", "page two text"], compress=False)
    i = data.rfind(b"<< /Length")
    data = data[:i] + data[i:].replace(b"<< /Length", b"<< /Filter /Bogus /Length", 1)
    assert [p.strip() for p in extract(data).pages] == ["page one text", "page two text"]


def test_every_page_failing_is_an_error() -> None:
    data = pdfs.missing_last_page(pdfs.make_pdf(["only page"]))
    with pytest.raises(TruncatedPdfError, match="no page could be read"):
        extract(data)


def test_scan_without_text_is_not_an_error() -> None:
    doc = extract(pdfs.make_pdf([None, None]))
    assert doc.page_count == 2
    assert doc.pages_without_text == 2
    assert doc.scanned_pages == []  # drawings, no image: blank for a reader, nothing to OCR


def test_scanned_pages_are_named() -> None:
    """An image and no text layer: a scan. Such pages are named; the text of the others is kept."""
    doc = extract(pdfs.make_pdf([pdfs.SCANNED, pdfs.VOLCANO, None, pdfs.SCANNED, pdfs.SCANNED]))
    assert doc.pages_without_text == 4
    assert doc.scanned_pages == [1, 4, 5]
    assert "Mount Etna" in doc.pages[1]


def test_job_timeout_during_a_page_ends_extraction_not_a_page_error() -> None:
    """RQ's job timeout is an Exception raised wherever the horse is: it must end the job."""
    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

    # Three slow pages: one takes about 0.8 s on a quiet machine, under the 1 s alarm.
    data = pdfs.make_pdf(["page one", *[pdfs.slow_page()] * 3, "page three"])
    with pytest.raises(JobTimeoutException), UnixSignalDeathPenalty(1, JobTimeoutException):
        extract(data)


def test_job_timeout_inside_a_form_still_ends_extraction() -> None:
    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

    shows_form = b"BT /F1 11 Tf 72 770 Td (before the form) Tj ET\n" + b"q /Fm0 Do Q\n" * 3  # each about 0.8 s
    data = pdfs.make_pdf([shows_form, "after the form"], form=pdfs.slow_page())
    with pytest.raises(JobTimeoutException), UnixSignalDeathPenalty(1, JobTimeoutException):
        extract(data)


def test_text_bomb_sharing_one_stream_stops_at_the_document_limit() -> None:
    """315 KB, 2,000 pages sharing one content stream, 256 characters a glyph: 51 million characters."""
    data = pdfs.text_bomb()
    assert len(data) < 400_000
    with pytest.raises(TextTooLargeError, match=r"MAX_DOCUMENT_CHARS\); stopped at page 40 with 1024000") as info:
        extract(data, max_document_chars=1_000_000)
    assert isinstance(info.value, InputTooLargeError)


def test_page_text_limit_stops_the_page_at_its_exact_length() -> None:
    data = pdfs.text_bomb(pages=1, glyphs=10, shows=80)  # 204,800 characters on one page
    with pytest.raises(TextTooLargeError, match=r"page 1 expands to over 100000 .*MAX_PAGE_CHARS\); stopped at 204800"):
        extract(data, max_page_chars=100_000)


def test_a_page_expanding_past_the_memory_cap_stops_there_not_in_gigabytes() -> None:
    """1.5 KB, one page of 5,120,000 characters: PDFium would take 1.3 GB to build its text."""
    data = pdfs.text_bomb(pages=1, glyphs=10, shows=2000)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with pytest.raises(TextTooLargeError, match=r"page 1 expands to over 100000 .*EXTRACT_MEMORY_MB") as info:
        extract(data, max_page_chars=100_000, memory_mb=256)
    assert isinstance(info.value, InputTooLargeError)
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < max(before, 0) + 600 * 1024  # KiB


def test_a_crash_inside_pdfium_ends_the_extraction_with_a_typed_error() -> None:
    """PDFium runs in a child: a crash there (here a real SIGSEGV sent to it) names the page."""
    doc = open_pdf(pdfs.make_pdf(["page one", pdfs.slow_page(), "page three"]))
    pages = iter(PageTexts(doc))
    assert next(pages).strip() == "page one"
    os.kill(doc.child.pid, signal.SIGSEGV)
    with pytest.raises(TruncatedPdfError, match=r"page 2: PDFium crashed .*\(SIGSEGV\)"):
        next(pages)
    assert doc.child.pid is None  # reaped


def test_text_within_the_limits_passes_and_the_limits_count_exactly() -> None:
    data = pdfs.text_bomb(pages=3, glyphs=10, shows=20)  # 51,200 characters a page
    assert [len(p) for p in extract(data, max_page_chars=51_200, max_document_chars=153_600).pages] == [51_200] * 3
    with pytest.raises(TextTooLargeError, match="MAX_PAGE_CHARS"):
        extract(data, max_page_chars=51_199)
    with pytest.raises(TextTooLargeError, match="MAX_DOCUMENT_CHARS.*page 3"):
        extract(data, max_document_chars=153_599)


GLYPH_LINES = ["9 North Buona Vista Drive", "American President Lines, Ltd", "Scottsdale, AZ 85254-1781", "158 Fu Xing"]


@pytest.mark.parametrize(
    ("matrix", "rotate"),
    [("1 0 0 1", 0), ("1 0 0 1", 90), ("0 1 -1 0", 0), ("0 -1 1 0", 270), ("-1 0 0 -1", 180)],
    ids=["upright", "page-turned", "lines-up", "lines-down-page-turned", "upside-down-page-turned"],
)
def test_words_placed_a_glyph_at_a_time_come_out_whole(matrix: str, rotate: int) -> None:
    """A scanner's OCR layer: each word letter-spaced and its last glyph shown on its own.
    PDFium alone reads `Nort h Buon a Vist a Driv e`; turned lines and pages read the same."""
    data = pdfs.make_pdf([pdfs.glyph_at_a_time(GLYPH_LINES, matrix=matrix)], rotate=rotate)
    text = extract(data).pages[0]
    assert re.findall(r"\w+", text) == re.findall(r"\w+", " ".join(GLYPH_LINES)), text


def test_words_read_backwards_are_left_as_pdfium_reads_them_not_glued_to_their_neighbours() -> None:
    """Lines turned so that PDFium reads them from their end: their glyphs come in reverse order
    and no gap before a lone glyph is a letter gap of its word, so nothing is joined."""
    data = pdfs.make_pdf([pdfs.glyph_at_a_time(["The People's Republic of China"], matrix="0 1 -1 0")], rotate=270)
    words = set(re.findall(r"\w+", extract(data).pages[0]))
    assert words <= {"The", "Th", "e", "People", "s", "Republic", "Republi", "c", "of", "o", "f", "China", "Chin", "a"}
    assert {"Chin", "a"} <= words  # PDFium's reading stands (were it fixed, this test would say so)


def test_word_spaces_from_positioning_stay_even_before_a_lone_letter() -> None:
    """Text without space glyphs, words placed apart by TJ offsets (as TeX writes): every space is
    one PDFium makes up, a quarter em wide against a letter gap of zero, so each word stays apart."""
    words = ["Plan", "B", "is", "a", "way", "to", "x", "y", "z", "and", "I", "am", "here"]
    shows = " -250 ".join(f"({w})" for w in words)
    content = f"BT /F1 11 Tf 72 700 Td [{shows}] TJ ET\n".encode()
    text = extract(pdfs.make_pdf([content])).pages[0]
    assert text.split() == words, text
