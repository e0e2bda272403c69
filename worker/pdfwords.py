"""Words PDFium splits where a producer places glyphs one at a time, put back together.

Some producers (a scanner's OCR layer, for one) letter-space each word with a character
spacing and show its last glyph in an operator of its own, without that spacing:
`2.9 Tc ( Nort) Tj 0 Tc (h) Tj`. PDFium's text then reads `Nort h Buon a Vist a`: it
generates a space before the lone glyph, because the gap there is as wide as every gap in the
word. The producer's own spaces are real glyphs; the ones PDFium adds are flagged generated.

So a generated space between two letters, before a glyph that stands alone as a "word", is
dropped when the gap it stands for is no wider than the gap between the two glyphs before it
(plus a tenth of the glyph size): a space that is no wider than the letter spacing of its own
word is no space. In a word of two glyphs after a space of the producer's own there is no
letter gap to compare: there the gap must be narrower than half the glyph size (those layers'
range from a tenth to a third of it). Boxes are the loose ones (origin to advance, descent to ascent), compared
along the line's direction, so a rotated page or a rotated text matrix reads the same. In
ordinary text a word space is a third of an em against a kerning gap near zero, far outside
that margin, so the check leaves it alone. The check costs a few calls into PDFium per lone
glyph, so it runs only on pages where the pattern shows: where a fifth of the spaces or more
come before a lone glyph (the shares measured on the corpus: docs/benchmarks.md, "Text extraction").
"""

from __future__ import annotations

import ctypes
import re

import pypdfium2.raw as pdfium_c

_LONE = re.compile(r" \w\b")  # a space, then a glyph that stands alone as a word (a literal first: fast)
_SHARE = 0.2  # of a page's spaces, before a lone glyph: the pattern shows (ordinary text: 0.02 to 0.1)
_MARGIN = 0.1  # of the glyph size: how much wider than the letter gap a dropped space may be
_TWO = 0.5  # of the glyph size: the widest gap dropped inside a two-glyph word (no letter gap to compare)


def rejoin(textpage: object, text: str) -> str:
    """`text` (the page's whole text from `textpage`) with generated spaces inside words dropped."""
    spaces = text.count(" ")
    if not spaces or len(_LONE.findall(text)) < _SHARE * spaces:
        return text  # not the pattern: the page costs a count and a regular expression, no call
    raw = textpage.raw  # type: ignore[attr-defined]
    if pdfium_c.FPDFText_CountChars(raw) != len(text):
        return text  # text and character indices do not line up (never seen): leave it
    drop = [
        i
        for i in (m.start() for m in _LONE.finditer(text))
        if i >= 2
        and text[i - 1].isalnum()
        and pdfium_c.FPDFText_IsGenerated(raw, i) == 1
        and _inside_word(raw, text, i)
    ]
    if not drop:
        return text
    parts, start = [], 0
    for i in drop:
        parts.append(text[start:i])
        start = i + 1
    parts.append(text[start:])
    return "".join(parts)


def _box(raw: object, i: int) -> tuple[float, float, float, float] | None:
    rect = pdfium_c.FS_RECTF()
    if not pdfium_c.FPDFText_GetLooseCharBox(raw, i, ctypes.byref(rect)):
        return None
    return rect.left, rect.bottom, rect.right, rect.top


def _inside_word(raw: object, text: str, i: int) -> bool:
    """Whether the generated space at `i` is no wider than the gap between the two glyphs before it,
    or, after a space of the producer's own and a single glyph, narrower than half the glyph size;
    the glyph before must lie before on the line (PDFium reads some turned lines backwards)."""
    two_glyphs = text[i - 2].isspace()
    if two_glyphs and (text[i - 2] != " " or pdfium_c.FPDFText_IsGenerated(raw, i - 2) != 0):
        return False  # a two-glyph word with no spaces of the producer's around it: no gap to compare
    before, left, right = _box(raw, i - 2), _box(raw, i - 1), _box(raw, i + 1)
    if before is None or left is None or right is None:
        return False
    dx = (right[0] + right[2] - left[0] - left[2]) / 2
    dy = (right[1] + right[3] - left[1] - left[3]) / 2
    if abs(dx) >= 2 * abs(dy):  # a horizontal line, either way
        axis, across = 0, 1
        sign = 1.0 if dx > 0 else -1.0
    elif abs(dy) >= 2 * abs(dx):  # a vertical line: a page or a text matrix turned a quarter
        axis, across = 1, 0
        sign = 1.0 if dy > 0 else -1.0
    else:
        return False  # slanted text: leave PDFium's reading

    def gap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
        return (b[axis] - a[axis + 2]) if sign > 0 else (a[axis] - b[axis + 2])

    size = max(left[across + 2] - left[across], right[across + 2] - right[across])
    if size <= 0:
        return False
    if abs(left[across] - right[across]) > 0.3 * size:  # not on one line
        return False
    if sign * (before[axis] + before[axis + 2] - left[axis] - left[axis + 2]) >= 0:
        return False  # what comes before in the text is not before on the line: read backwards
    if two_glyphs:  # `before` is the producer's space, not a letter: no letter gap to compare
        return gap(left, right) < _TWO * size
    return gap(left, right) <= gap(before, left) + _MARGIN * size
