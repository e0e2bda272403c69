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


def _content(text: str | None, font: str) -> bytes:
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
    pages: list[str | None], title: str | None = None, author: str | None = None, compress: bool = True
) -> bytes:
    """A PDF with one page per item: its text (lines split on newlines) or None for no text."""
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
    other = "".join(t for t in pages if t is not None and not all(ord(ch) < 128 for ch in t))
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
    kids = []
    for text in pages:
        latin = text is None or all(ord(ch) < 128 for ch in text)
        content = add(stream(_content(text, "F1" if latin else "F2")))
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
                b" /Resources << /Font << /F1 %d 0 R /F2 %d 0 R >> >> >>" % (pages_obj, content, helv, uni)
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
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, catalog, info, xref)
    )
    return out.getvalue()


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
