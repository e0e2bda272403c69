"""Cut page texts into chunks that fit the embedding model's window, counted in its word pieces.

Every word piece of the text lands in at least one chunk: nothing is silently truncated. A
chunk holds at most `chunk_tokens` pieces *including* the model's special tokens ([CLS] and
[SEP]), so the embedder never truncates it either. Cuts fall on the strongest boundary in the
last half of the window: a paragraph break, then a sentence end, a line break, a space, and
only for a single "word" longer than a whole window (a hash, a URL) inside a word. A page break
is taken earlier, past an eighth of the window, so that most chunks lie on one page. Chunks
share about `chunk_overlap` pieces, starting on a word boundary (none across a page cut).

Offsets: a chunk runs from `char_start` in page `page_start` to `char_end` (exclusive) in page
`page_end`, pages numbered from 1; within one page, `text == page[char_start:char_end]`.
A chunk spanning pages joins the pieces of each page with a blank line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from worker.errors import ModelUnavailableError

PAGE, PARAGRAPH, SENTENCE, LINE, SPACE, ADJACENT, INSIDE_WORD = 6, 5, 4, 3, 2, 1, 0
_PARA_GAP = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = frozenset(".!?;:…。！？；")
_CLOSERS = frozenset("\"')]}»”’」』）")


@dataclass(frozen=True)
class Chunk:
    seq: int
    text: str
    page_start: int
    page_end: int
    char_start: int
    char_end: int
    n_tokens: int  # word pieces including the special tokens, as the model sees it


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's tokenizer with its bundled truncation and padding turned off."""
    path = Path(model_dir) / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # missing or unreadable: tokenizers raises plain Exception
        raise ModelUnavailableError(f"cannot load {path} (run `make model`): {exc}") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def _boundary(text: str, prev_end: int, start: int, piece: str) -> int:
    """How good a cut is between a token ending at prev_end and one starting at start."""
    if piece.startswith("##"):
        return INSIDE_WORD
    gap = text[prev_end:start]
    if not gap:
        return SENTENCE if text[prev_end - 1] in "。！？" else ADJACENT
    if "\n" in gap and _PARA_GAP.search(gap):
        return PARAGRAPH
    last = text[prev_end - 1]
    if last in _CLOSERS and prev_end >= 2:
        last = text[prev_end - 2]
    if last in _SENTENCE_END:
        return SENTENCE
    return LINE if "\n" in gap else SPACE


class Chunker:
    def __init__(self, tokenizer: Tokenizer, chunk_tokens: int = 256, overlap: int = 32) -> None:
        self.tokenizer = tokenizer
        self.special = tokenizer.num_special_tokens_to_add(False)
        self.budget = chunk_tokens - self.special  # content pieces per chunk
        if self.budget < 8:
            raise ValueError("chunk_tokens leaves no room for text")
        if not 0 <= overlap < self.budget // 2:
            raise ValueError("overlap must be less than half a chunk")
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap

    def chunk_pages(self, pages: list[str]) -> list[Chunk]:
        # One flat list of tokens over all pages: (page index, char start, char end, boundary before).
        tok_page: list[int] = []
        tok_start: list[int] = []
        tok_end: list[int] = []
        level: list[int] = []
        texts = [p if p.strip() else "" for p in pages]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
        for pno, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
            prev_end = -1
            for piece, (s, e) in zip(enc.tokens, enc.offsets, strict=True):
                if e <= s:  # zero-width pieces carry no text
                    continue
                tok_page.append(pno)
                tok_start.append(s)
                tok_end.append(e)
                level.append(PAGE if prev_end < 0 else _boundary(text, prev_end, s, piece))
                prev_end = e
        n = len(tok_start)
        chunks: list[Chunk] = []
        start = 0
        while start < n:
            end = self._cut(level, start, n)
            while True:
                chunk = self._make(texts, tok_page, tok_start, tok_end, start, end, len(chunks))
                if chunk.n_tokens <= self.chunk_tokens or end - start <= 1:
                    break
                # Re-tokenized alone the text came out longer (a word cut in two): shrink.
                end -= max(1, chunk.n_tokens - self.chunk_tokens)
            chunks.append(chunk)
            if end >= n:
                break
            start = self._next_start(level, start, end)
        return chunks

    def _cut(self, level: list[int], start: int, n: int) -> int:
        """End (exclusive) of the chunk starting at `start`.

        The first page break past an eighth of the window, so that a chunk names its page
        exactly whenever it can; else the best boundary in the window's last half.
        """
        limit = min(start + self.budget, n)
        for i in range(start + max(1, self.budget // 8), limit):
            if level[i] == PAGE:
                return i
        if limit >= n:
            return n
        best, best_level = limit, -1
        for i in range(limit, start + self.budget // 2, -1):  # a cut at i means token i starts the next chunk
            if level[i] > best_level:
                best, best_level = i, level[i]
                if best_level == PAGE:
                    break
        return best

    def _next_start(self, level: list[int], start: int, end: int) -> int:
        if self.overlap == 0 or level[end] == PAGE:  # no overlap across a page cut: pages stay exact
            return end
        s = max(end - self.overlap, start + 1)
        while s < end and level[s] < SPACE:  # begin the overlap on a word boundary
            s += 1
        return s

    def _make(self, texts, tok_page, tok_start, tok_end, a: int, b: int, seq: int) -> Chunk:
        p0, p1 = tok_page[a], tok_page[b - 1]
        c0, c1 = tok_start[a], tok_end[b - 1]
        if p0 == p1:
            text = texts[p0][c0:c1]
        else:
            parts = [texts[p0][c0:]] + [texts[p] for p in range(p0 + 1, p1) if texts[p]] + [texts[p1][:c1]]
            text = "\n\n".join(parts)
        n_tokens = len(self.tokenizer.encode(text, add_special_tokens=True).ids)
        return Chunk(seq=seq, text=text, page_start=p0 + 1, page_end=p1 + 1, char_start=c0, char_end=c1,
                     n_tokens=n_tokens)
