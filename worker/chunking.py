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

from tokenizers import Tokenizer

from worker.embedding import load_tokenizer  # noqa: F401 (chunking's tokenizer, as callers name it)
from worker.settings import Settings
from worker.store.base import Chunk  # what a chunker cuts is what a store keeps

PAGE, PARAGRAPH, SENTENCE, LINE, SPACE, ADJACENT, INSIDE_WORD = 6, 5, 4, 3, 2, 1, 0
_PARA_GAP = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = frozenset(".!?;:…。！？；")
_CLOSERS = frozenset("\"')]}»”’」』）")


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


def _wrapping(tokenizer: Tokenizer) -> tuple[int, int] | None:
    """The ids the tokenizer puts around a text ([CLS], [SEP]), when it splits words on whitespace
    and punctuation and tokenizes each word alone (BERT's WordPiece): then the ids of whole words
    cut from a page are the ids of their text, and a chunk need not be tokenized again."""
    kinds = (type(tokenizer.pre_tokenizer).__name__, type(tokenizer.model).__name__)
    if kinds != ("BertPreTokenizer", "WordPiece"):
        return None
    ids = tokenizer.encode("", add_special_tokens=True).ids
    return (ids[0], ids[1]) if len(ids) == 2 else None


class Chunker:
    def __init__(
        self, tokenizer: Tokenizer, chunk_tokens: int = Settings.chunk_tokens, overlap: int = Settings.chunk_overlap
    ) -> None:
        """Defaults: CHUNK_TOKENS's and CHUNK_OVERLAP's."""
        self.tokenizer = tokenizer
        self.special = tokenizer.num_special_tokens_to_add(False)
        self.budget = chunk_tokens - self.special  # content pieces per chunk
        if self.budget < 8:
            raise ValueError("chunk_tokens leaves no room for text")
        if not 0 <= overlap < self.budget // 2:
            raise ValueError("overlap must be less than half a chunk")
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap
        self.wraps = _wrapping(tokenizer)

    def chunk_pages(self, pages: list[str]) -> list[Chunk]:
        """The chunks of a whole document's pages (what `stream()` gives, fed every page)."""
        stream = self.stream()
        chunks = [chunk for page in pages for chunk, _ in stream.add_page(page)]
        return chunks + [chunk for chunk, _ in stream.finish()]

    def stream(self) -> ChunkStream:
        """A chunker fed one page at a time, for a pipeline that embeds while pages are read."""
        return ChunkStream(self)

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

    def _make(self, stream: ChunkStream, a: int, b: int, seq: int) -> tuple[Chunk, list[int]]:
        texts, tok_page = stream.texts, stream.tok_page
        p0, p1 = tok_page[a], tok_page[b - 1]
        c0, c1 = stream.tok_start[a], stream.tok_end[b - 1]
        if p0 == p1:
            text = texts[p0][c0:c1]
        else:
            parts = [texts[p0][c0:]] + [texts[p] for p in range(p0 + 1, p1) if texts[p]] + [texts[p1][:c1]]
            text = "\n\n".join(parts)
        level = stream.level
        whole_words = level[a] > INSIDE_WORD and (b == len(level) or level[b] > INSIDE_WORD)
        if self.wraps is not None and whole_words and not any(p in stream.unsure for p in range(p0, p1 + 1)):
            # Whole words, cut where the pre-tokenizer cuts: tokenizing the text gives these ids.
            ids = [self.wraps[0], *stream.tok_id[a:b], self.wraps[1]]
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=True).ids
        chunk = Chunk(
            seq=seq, text=text, page_start=p0 + 1, page_end=p1 + 1, char_start=c0, char_end=c1, n_tokens=len(ids)
        )
        return chunk, ids


class ChunkStream:
    """`Chunker.chunk_pages`, one page at a time: `add_page(text)` returns the chunks it completed,
    `finish()` the rest; together the very same chunks as `chunk_pages` over all the pages.

    Each chunk comes with its word-piece ids (special tokens included), the exact input the
    embedding model takes for its text, so a pipeline need not tokenize it again.

    A chunk's cut is final once the tokens seen reach past its window: `_cut` looks no further.
    Tokens and page texts before the next chunk's start are dropped as it goes, so memory holds
    about one window of tokens and the pages it spans, whatever the document's length.
    """

    TRIM_AT = 4096  # tokens behind the next chunk's start before they are dropped (amortized)

    def __init__(self, chunker: Chunker) -> None:
        self.chunker = chunker
        self.texts: dict[int, str] = {}  # page index -> text, for the pages still needed
        self.tok_page: list[int] = []
        self.tok_start: list[int] = []
        self.tok_end: list[int] = []
        self.level: list[int] = []
        self.tok_id: list[int] = []
        self.unsure: set[int] = set()  # pages whose ids cannot be sliced (a piece without text)
        self.start = 0  # local index of the next chunk's first token
        self.first_text = 0  # the lowest page index in `texts`
        self.pages = 0
        self.seq = 0
        self.finished = False

    def add_page(self, text: str) -> list[tuple[Chunk, list[int]]]:
        if self.finished:
            raise ValueError("add_page after finish")
        pno = self.pages
        self.pages += 1
        text = text if text.strip() else ""
        self.texts[pno] = text
        enc = self.chunker.tokenizer.encode(text, add_special_tokens=False) if text else None
        if enc is not None:
            prev_end = -1
            for piece, (s, e), i in zip(enc.tokens, enc.offsets, enc.ids, strict=True):
                if e <= s:  # zero-width pieces carry no text
                    self.unsure.add(pno)
                    continue
                self.tok_page.append(pno)
                self.tok_start.append(s)
                self.tok_end.append(e)
                self.tok_id.append(i)
                self.level.append(PAGE if prev_end < 0 else _boundary(text, prev_end, s, piece))
                prev_end = e
        out = self._emit(final=False)
        self._trim()
        return out

    def finish(self) -> list[tuple[Chunk, list[int]]]:
        self.finished = True
        return self._emit(final=True)

    def retained(self) -> tuple[int, int]:
        """(tokens, pages) held right now: bounded by the window, not by the document."""
        return len(self.tok_start), len(self.texts)

    def _emit(self, final: bool) -> list[tuple[Chunk, list[int]]]:
        c = self.chunker
        n = len(self.tok_start)
        out = []
        while self.start < n and (final or self.start + c.budget < n):
            start = self.start
            end = c._cut(self.level, start, n)
            while True:
                chunk, ids = c._make(self, start, end, self.seq)
                if chunk.n_tokens <= c.chunk_tokens or end - start <= 1:
                    break
                # Re-tokenized alone the text came out longer (a word cut in two): shrink.
                end -= max(1, chunk.n_tokens - c.chunk_tokens)
            out.append((chunk, ids))
            self.seq += 1
            self.start = n if end >= n else c._next_start(self.level, start, end)
        return out

    def _trim(self) -> None:
        """Drop the tokens before the next chunk's start (once there are TRIM_AT of them) and
        the texts of the pages before its page (at once: pages without text have no tokens)."""
        if self.start >= self.TRIM_AT:
            k = self.start
            for name in ("tok_page", "tok_start", "tok_end", "level", "tok_id"):
                del getattr(self, name)[:k]
            self.start = 0
        needed = self.tok_page[self.start] if self.start < len(self.tok_page) else self.pages
        for p in range(self.first_text, needed):
            self.texts.pop(p, None)
            self.unsure.discard(p)
        self.first_text = max(self.first_text, needed)
