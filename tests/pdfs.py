"""Hand-written PDFs for the tests: real files built byte by byte, no PDF library needed.

Latin text uses the standard Helvetica font; any other script uses a Type0 font whose
ToUnicode map is the identity on the characters used (the code of each glyph is its code
point), which is all a text extractor needs.
"""

from __future__ import annotations

import io
import zlib

from pypdf import PdfReader, PdfWriter


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _content(text: str | bytes | None, font: str) -> bytes:
    if isinstance(text, bytes):  # a content stream written by the test itself
        return text
    if text is None:  # a page with drawing but no text layer, like a scan
        return b"0.5 g 72 72 200 200 re f\n"
    lines = ["BT", f"/{font} 11 Tf", "14 TL", "72 770 Td"]
    for line in text.split("\n"):
        if font == "F1":
            lines.append(f"({_escape(line)}) Tj T*")
        else:
            lines.append("<" + line.encode("utf-16-be").hex() + "> Tj T*")
    lines.append("ET")
    return "\n".join(lines).encode("latin-1")


def _tounicode(text: str) -> bytes:
    """A ToUnicode map that is the identity on the UTF-16 code units `text` uses (bfchar entries,
    at most 100 a block as the spec wants). An identity bfrange over the whole plane would do as
    well, but pypdf expands a range entry by entry: 65,536 of them per page, 0.4 s each."""
    units = sorted({text.encode("utf-16-be")[i : i + 2].hex() for i in range(0, len(text.encode("utf-16-be")), 2)})
    blocks = []
    for i in range(0, len(units), 100):
        part = units[i : i + 100]
        blocks.append(f"{len(part)} beginbfchar\n" + "".join(f"<{u}> <{u}>\n" for u in part) + "endbfchar\n")
    return (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n" + "".join(blocks) + "endcmap\n"
        "CMapName currentdict /CMap defineresource pop\nend\nend\n"
    ).encode("ascii")


def make_pdf(
    pages: list[str | bytes | None],
    title: str | None = None,
    author: str | None = None,
    compress: bool = True,
    form: bytes | None = None,
    rotate: int = 0,
) -> bytes:
    """A PDF with one page per item: its text (lines split on newlines), None for no text, or
    bytes for a raw content stream (fonts /F1 Helvetica and /F2 any Unicode are there, an image
    /Im0 (a page shows it with SCANNED), and with `form` a form XObject /Fm0 of that content,
    which a page shows with `/Fm0 Do`). `rotate`: every page's /Rotate."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(data: bytes, extra: bytes = b"") -> bytes:
        if compress:
            data = zlib.compress(data)
            extra += b" /Filter /FlateDecode"
        return b"<< /Length %d%s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"

    catalog = add(b"")  # filled in below
    pages_obj = add(b"")
    helv = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    other = "".join(t for t in pages if isinstance(t, str) and not all(ord(ch) < 128 for ch in t))
    tounicode = add(stream(_tounicode(other or " ")))
    descendant = add(
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /AnyUnicode"
        b" /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >>"
        b" /FontDescriptor << /Type /FontDescriptor /FontName /AnyUnicode /Flags 4"
        b" /FontBBox [0 0 1000 1000] /ItalicAngle 0 /Ascent 800 /Descent -200 /CapHeight 700"
        b" /StemV 80 >> /DW 600 /CIDToGIDMap /Identity >>"
    )
    uni = add(
        b"<< /Type /Font /Subtype /Type0 /BaseFont /AnyUnicode /Encoding /Identity-H"
        b" /DescendantFonts [%d 0 R] /ToUnicode %d 0 R >>" % (descendant, tounicode)
    )
    image = add(stream(_scanned_image(), _IMAGE_DICT))
    xobjects = b" /XObject << /Im0 %d 0 R" % image
    if form is not None:
        fm = add(
            stream(
                form,
                b" /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >>" % helv,
            )
        )
        xobjects += b" /Fm0 %d 0 R" % fm
    xobjects += b" >>"
    kids = []
    for text in pages:
        latin = not isinstance(text, str) or all(ord(ch) < 128 for ch in text)
        content = add(stream(_content(text, "F1" if latin else "F2")))
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Rotate %d /Contents %d 0 R"
                b" /Resources << /Font << /F1 %d 0 R /F2 %d 0 R >>%s >> >>"
                % (pages_obj, rotate, content, helv, uni, xobjects)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
    objects[pages_obj - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    info_parts = []
    if title:
        info_parts.append(b"/Title <" + ("\ufeff" + title).encode("utf-16-be").hex().encode() + b">")
    if author:
        info_parts.append(b"/Author (" + _escape(author).encode("latin-1") + b")")
    info_parts.append(b"/Producer (worker tests)")
    info = add(b"<< " + b" ".join(info_parts) + b" >>")
    return _assemble(objects, catalog, info)


def glyph_at_a_time(lines: list[str], matrix: str = "1 0 0 1", tc: float = 2.9, size: int = 12) -> bytes:
    """A content stream laid out like a scanner's OCR layer: invisible text (3 Tr), each word
    letter-spaced with a character spacing (Tc) and its last glyph shown on its own without it,
    `2.9 Tc ( Nort) Tj 0 Tc (h) Tj`, the word's space a glyph of the producer's own. `matrix`
    turns the lines (e.g. "0 1 -1 0" runs them up the page); they go 20 points apart."""
    a, b, c, d = (float(v) for v in matrix.split())
    out = []
    for n, line in enumerate(lines):
        if b:  # a vertical line: from the bottom up (b > 0) or from the top down
            x, y = 72 + 20 * n, 72 if b > 0 else 720
        else:  # left to right (a > 0) or upside down from the right
            x, y = 72 if a > 0 else 540, 720 - 20 * n
        out.append(f"BT 3 Tr {a:g} {b:g} {c:g} {d:g} {x} {y} Tm /F1 {size} Tf")
        for k, word in enumerate(line.split()):
            lead = " " if k else ""
            head = _escape(lead + word[:-1])
            out.append(f"{tc} Tc ({head}) Tj 0 Tc ({_escape(word[-1])}) Tj")
        out.append("ET")
    return "\n".join(out).encode("latin-1") + b"\n"


# A scanned page: nothing but an image filling it, no text layer (what a scanner without OCR makes).
SCANNED = b"q 612 0 0 792 0 0 cm /Im0 Do Q\n"
_IMAGE_DICT = b" /Type /XObject /Subtype /Image /Width 85 /Height 110 /ColorSpace /DeviceGray /BitsPerComponent 8"


def _scanned_image() -> bytes:
    """85 x 110 grey pixels: paper with lines of dark blots where a scanner saw text."""
    rows = []
    for y in range(110):
        inked = 10 < y < 100 and y % 6 < 3
        rows.append(bytes(40 if inked and 8 < x < 77 and (x * 7 + y) % 11 else 235 for x in range(85)))
    return b"".join(rows)


def _assemble(objects: list[bytes], catalog: int, info: int | None = None) -> bytes:
    """The file: header, the numbered objects (1, 2, ...), a cross-reference table, the trailer."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    info_ref = b" /Info %d 0 R" % info if info else b""
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R%s >>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, catalog, info_ref, xref)
    )
    return out.getvalue()


def text_bomb(pages: int = 2000, glyphs: int = 100, expand: int = 256, shows: int = 1, fill: str = "x") -> bytes:
    """A small PDF that expands to a lot of text: every page shares one content stream that shows
    `shows` strings of `glyphs` glyphs, and the font's ToUnicode map turns each glyph into
    `expand` characters (`fill` repeated, then a space). The defaults: 315 KB, 25,600 characters
    a page, 51 million in all. Small values make a tiny PDF that pypdf reads fast."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(data: bytes) -> bytes:
        data = zlib.compress(data, 9)
        return b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream"

    catalog, pages_obj = add(b""), add(b"")
    many = (fill * (expand - 1) + " ").encode("utf-16-be").hex().encode()
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n/CMapName /Expand def\n"
        b"1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        b"1 beginbfchar\n<0001> <" + many + b">\nendbfchar\n"
        b"endcmap CMapName currentdict /CMap defineresource pop end end\n"
    )
    tounicode = add(stream(cmap))
    descendant = add(
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /Expand /CIDToGIDMap /Identity /DW 600"
        b" /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> >>"
    )
    font = add(
        b"<< /Type /Font /Subtype /Type0 /BaseFont /Expand /Encoding /Identity-H"
        b" /DescendantFonts [%d 0 R] /ToUnicode %d 0 R >>" % (descendant, tounicode)
    )
    # Each show sets its font first, which makes pypdf hand the text so far to its visitor.
    content = add(stream(b"BT 72 770 Td\n" + (b"/F2 11 Tf <" + b"0001" * glyphs + b"> Tj\n") * shows + b"ET\n"))
    kids = [
        add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << /Font << /F2 %d 0 R >> >> >>" % (pages_obj, content, font)
        )
        for _ in range(pages)
    ]
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
    objects[pages_obj - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    return _assemble(objects, catalog)


def encrypt(data: bytes, user_password: str, owner_password: str = "owner-secret") -> bytes:
    """`data` encrypted with AES-256 (an empty user password opens it without asking)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def flate_bomb(megabytes: int = 200) -> bytes:
    """A one-page PDF whose content stream inflates to `megabytes` MB of blanks (0.1% of that on disk)."""
    comp = zlib.compressobj(9)
    block = b" " * (1 << 20)
    data = b"".join(comp.compress(block) for _ in range(megabytes)) + comp.flush()
    pdf = make_pdf(["placeholder"], compress=False)
    # Swap the page's content stream for the bomb, then rebuild the file through pypdf so offsets stay valid.
    reader = PdfReader(io.BytesIO(pdf))
    writer = PdfWriter(clone_from=reader)
    from pypdf.generic import NameObject, NumberObject, StreamObject

    bomb = StreamObject()
    bomb._data = data
    bomb[NameObject("/Filter")] = NameObject("/FlateDecode")
    bomb[NameObject("/Length")] = NumberObject(len(data))
    writer.pages[0][NameObject("/Contents")] = writer._add_object(bomb)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def slow_page(operations: int = 3_000_000) -> bytes:
    """A content stream of `operations` saved and restored graphics states: no text and little
    memory, but seconds of parsing for PDFium (0.5 to 1.5 us an operation here), 140 KB compressed."""
    return b"q 1 0 0 1 0 0 cm Q\n" * operations


def missing_last_page(data: bytes) -> bytes:
    """`data` (from make_pdf) with its last page's entry in the page tree pointing at an object
    that is not there: readers count the page but cannot load it."""
    start = data.find(b"/Kids [")
    end = data.find(b"]", start)
    kids = data[start:end].rsplit(b" ", 3)[0]  # drop the last "N 0 R"
    return data[:start] + kids + b" 99 0 R" + data[end:]


# Pages with distinct topics, so a search has one right answer.
VOLCANO = """Volcanoes and their eruptions

A volcano is a rupture in the crust of a planet that allows hot lava,
volcanic ash and gases to escape from a magma chamber below the surface.
Mount Etna in Sicily is one of the most active volcanoes in Europe.

Explosive eruptions throw ash high into the stratosphere."""

BREAD = """Baking sourdough bread at home

Sourdough bread rises with a starter of wild yeast and lactic acid bacteria
instead of commercial baker's yeast. Bake the loaf in a preheated oven at
250 degrees Celsius for twenty minutes with steam, then lower the heat.

Let the bread cool on a rack for an hour before slicing it."""

TOWER = """The Eiffel Tower in Paris

The wrought-iron lattice tower on the Champ de Mars was designed by the
engineering company of Gustave Eiffel and completed in 1889 for the
World's Fair. It is about 330 metres tall."""

GREEK_JAPANESE = """Ελληνικά και 日本語
Η Ακρόπολη της Αθήνας είναι αρχαία ακρόπολη.
富士山は日本で最も高い山です。
Москва — столица России."""


def long_page(topic: str, sentences: int = 120) -> str:
    """A page long enough to need several chunks."""
    words = ["river", "stone", "market", "signal", "garden", "winter", "copper", "letter", "harbour", "engine"]
    lines = []
    for i in range(sentences):
        w = [words[(i * 7 + j * 3) % len(words)] for j in range(9)]
        lines.append(f"{topic} sentence {i} speaks of the {' '.join(w)}.")
        if i % 10 == 9:
            lines.append("")
    return "\n".join(lines)


def sample_pdf() -> bytes:
    """Five pages: volcanoes, bread, no text, the Eiffel Tower, Greek/Japanese/Russian."""
    return make_pdf([VOLCANO, BREAD, None, TOWER, GREEK_JAPANESE], title="Sample Δ document", author="Test Author")
