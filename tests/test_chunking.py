"""Chunking by the model's word pieces: window limit, full coverage, overlap, boundaries, offsets."""

from __future__ import annotations

import pytest

from tests import pdfs
from tests.conftest import MODEL_DIR
from worker.chunking import Chunker, load_tokenizer
from worker.errors import ModelUnavailableError


@pytest.fixture(scope="module")
def tokenizer():
    if not (MODEL_DIR / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer.json in {MODEL_DIR}: run `make model`")
    return load_tokenizer(MODEL_DIR)


def _pieces(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=True).ids)


def _covered(pages: list[str], chunks) -> None:
    """Every non-blank character of every page lies inside some chunk."""
    for pno, text in enumerate(pages, start=1):
        mask = [False] * len(text)
        for c in chunks:
            if c.page_start <= pno <= c.page_end:
                a = c.char_start if c.page_start == pno else 0
                b = c.char_end if c.page_end == pno else len(text)
                mask[a:b] = [True] * (b - a)
        missing = [i for i, ch in enumerate(text) if not ch.isspace() and not mask[i]]
        assert not missing, f"page {pno}: chars {missing[:5]} not in any chunk"


def test_short_text_is_one_chunk_with_offsets(tokenizer) -> None:
    pages = ["Hello world. Second sentence here."]
    (chunk,) = Chunker(tokenizer).chunk_pages(pages)
    assert chunk.text == pages[0]
    assert (chunk.page_start, chunk.page_end, chunk.char_start, chunk.char_end) == (1, 1, 0, len(pages[0]))
    assert chunk.n_tokens == _pieces(tokenizer, pages[0])


def test_long_pages_fit_the_window_and_lose_nothing(tokenizer) -> None:
    pages = [pdfs.long_page("alpha"), "", pdfs.long_page("beta", 40), pdfs.GREEK_JAPANESE * 30]
    chunker = Chunker(tokenizer, chunk_tokens=256, overlap=32)
    chunks = chunker.chunk_pages(pages)
    assert len(chunks) > 8
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.n_tokens <= 256
        assert _pieces(tokenizer, c.text) == c.n_tokens  # what the embedder will see, untruncated
        if c.page_start == c.page_end:
            assert c.text == pages[c.page_start - 1][c.char_start : c.char_end]
        assert 1 <= c.page_start <= c.page_end <= len(pages)
        assert c.page_start != 2 and c.page_end != 2 or c.page_start < 2 < c.page_end  # the empty page
    _covered(pages, chunks)
    # Chunks are not tiny: cuts fall in the second half of the window except at a page's end.
    assert sum(c.n_tokens for c in chunks) / len(chunks) > 128


def test_cuts_prefer_sentence_ends_and_overlap(tokenizer) -> None:
    page = pdfs.long_page("gamma", 100)
    chunks = Chunker(tokenizer, chunk_tokens=128, overlap=16).chunk_pages([page])
    assert len(chunks) > 5
    for c in chunks[:-1]:
        assert c.text.endswith("."), c.text[-40:]
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.char_start < prev.char_end  # they overlap
        shared = page[nxt.char_start : prev.char_end]
        assert 0 < len(tokenizer.encode(shared, add_special_tokens=False).ids) <= 16
        assert page[nxt.char_start - 1].isspace()  # the overlap begins on a word


def test_page_breaks_are_preferred_cuts(tokenizer) -> None:
    pages = ["Short page one about apples. " * 8, "Short page two about pears. " * 5]  # 40 + 35 pieces
    chunks = Chunker(tokenizer, chunk_tokens=64, overlap=0).chunk_pages(pages)
    assert [(c.page_start, c.page_end) for c in chunks] == [(1, 1), (2, 2)]


def test_cross_page_chunk_joins_pages(tokenizer) -> None:
    pages = ["end of the first page", "start of the second page"]
    (chunk,) = Chunker(tokenizer).chunk_pages(pages)
    assert (chunk.page_start, chunk.page_end) == (1, 2)
    assert chunk.text == "end of the first page\n\nstart of the second page"
    assert (chunk.char_start, chunk.char_end) == (0, len(pages[1]))


def test_text_without_spaces_is_still_cut_within_the_window(tokenizer) -> None:
    page = ".".join(f"w{i}" for i in range(2000))  # no whitespace at all
    chunks = Chunker(tokenizer, chunk_tokens=64, overlap=8).chunk_pages([page])
    assert len(chunks) > 10
    assert all(c.n_tokens <= 64 for c in chunks)
    _covered([page], chunks)


def test_no_text_gives_no_chunks(tokenizer) -> None:
    assert Chunker(tokenizer).chunk_pages(["", "  \n ", ""]) == []
    assert Chunker(tokenizer).chunk_pages([]) == []


def test_bad_settings_refused(tokenizer) -> None:
    with pytest.raises(ValueError):
        Chunker(tokenizer, chunk_tokens=64, overlap=40)


def test_missing_tokenizer_is_model_unavailable(tmp_path) -> None:
    with pytest.raises(ModelUnavailableError, match="make model"):
        load_tokenizer(tmp_path)


def test_short_pages_get_a_chunk_each_without_overlap(tokenizer) -> None:
    pages = [pdfs.VOLCANO, pdfs.BREAD, "", pdfs.TOWER]
    chunks = Chunker(tokenizer, chunk_tokens=256, overlap=32).chunk_pages(pages)
    assert [(c.page_start, c.page_end) for c in chunks] == [(1, 1), (2, 2), (4, 4)]
    assert [c.text for c in chunks] == [p.strip() for p in pages if p]


class _CountingTokenizer:
    """The real tokenizer, counting the texts it is asked to tokenize."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer, self.encoded = tokenizer, 0

    def encode(self, *args, **kwargs):
        self.encoded += 1
        return self._tokenizer.encode(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


HARD_PAGES = [
    pdfs.long_page("harbour", 60),
    pdfs.GREEK_JAPANESE * 20,
    "x" * 3000,  # no spaces: cut inside the word
    ("Café naïve coöperate e\u0301le\u0300ve " * 40) + ("word" * 30 + " ") * 5,  # accents, combining marks, [UNK]
    "ctrl\x07bell\x1b esc \u200dzwj\u200d soft\u00adhyphen \ufeffbom " * 60,  # pieces a normalizer drops
    "emoji 🎉🎉 and 中文字符测试，标点。 mixed-case ÉCOLE " * 50,
    "",
    "short page",
    "a.b,c;d:e!f?g(h)i[j]k{l}m\"n'o-p_q/r\\s " * 40,  # punctuation everywhere
    "pneumonoultramicroscopicsilicovolcanoconiosis zqxjkvbwpfmgh " * 20,  # words of many pieces
]


@pytest.mark.parametrize(("window", "overlap"), [(128, 16), (16, 4)])  # 16: cuts inside words
def test_chunk_ids_are_what_tokenizing_the_chunk_text_gives(tokenizer, window: int, overlap: int) -> None:
    """The ids a chunk carries are its text's, whether sliced from its page's ids or tokenized again."""
    counting = _CountingTokenizer(tokenizer)
    stream = Chunker(counting, window, overlap).stream()
    made = [pair for page in HARD_PAGES for pair in stream.add_page(page)] + stream.finish()
    for chunk, ids in made:
        assert ids == tokenizer.encode(chunk.text, add_special_tokens=True).ids, chunk.text[:80]
        assert chunk.n_tokens == len(ids) <= window
    # Most chunks took their page's ids: fewer texts were tokenized than pages plus chunks.
    assert counting.encoded < len(HARD_PAGES) + len(made) // 2, (counting.encoded, len(made))
