"""Keyword terms of a query, reciprocal rank fusion and the snippet of a hit, the same on both stores.

A query's terms are its whitespace-separated words; each term is the run of letters and digits
in it (`worker.store_pg.PgStore` -> worker, store, pg, pgstore; `--max-retries` -> max, retries).
A store matches a term as a phrase of its parts and ranks chunks matching any term (OR), so a
query string is never parsed as query syntax: no operator, quote or bracket in it can raise.
A query with no letter or digit has no terms: hybrid search is then dense alone.

Fusion: reciprocal rank fusion, score = sum over both lists of 1 / (RRF_K + rank), ranks from 1;
RRF_K = 60 as Cormack et al. (2009) chose it. Each side gives CANDIDATES chunks (measured on
Cranfield in docs/benchmarks.md: 50 is as good as 100 and cheaper).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

RRF_K = 60
CANDIDATES = 50  # chunks each side of a hybrid search hands to the fusion
MAX_TERMS = 64  # terms of one query at most (the rest are ignored): bounds a keyword search's cost
SNIPPET_CHARS = 240
MODES = ("hybrid", "dense", "keyword")

_PART = re.compile(r"[^\W_]+")  # letters and digits: what both stores' tokenizers keep of a word
_JOINER = re.compile(r"[._/-]+")  # what joins the parts of an identifier


def query_terms(text: str | None) -> list[tuple[str, ...]]:
    """The distinct terms of `text`, each the lower-cased letter-and-digit runs of one word."""
    terms: list[tuple[str, ...]] = []
    for word in (text or "").split():
        parts = tuple(p.lower() for p in _PART.findall(word))
        if parts and parts not in terms:
            terms.append(parts)
            if len(terms) == MAX_TERMS:
                break
    return terms


def fts5_query(terms: Sequence[tuple[str, ...]]) -> str:
    """An FTS5 MATCH expression: each term a quoted phrase (its parts hold no quote), ORed."""
    return " OR ".join('"' + " ".join(parts) + '"' for parts in terms)


@dataclass
class Ranked:
    """One chunk of a search's answer with what each side said of it (rank from 1, None: not found there)."""

    chunk: int  # the chunk's row id
    score: float  # what the answer is ordered by: fused, cosine or keyword score by the mode
    dense_rank: int | None = None
    dense_score: float | None = None
    keyword_rank: int | None = None
    keyword_score: float | None = None
    fused_score: float | None = None


def fuse(dense: Sequence[tuple[int, float]], keyword: Sequence[tuple[int, float]], k: int) -> list[Ranked]:
    """The k best of two ranked lists of (chunk id, score) by reciprocal rank fusion; a tie goes to
    the better dense rank, then the lower id (a stable order)."""
    found: dict[int, Ranked] = {}
    for rank, (chunk, score) in enumerate(dense, 1):
        found[chunk] = Ranked(chunk, 0.0, dense_rank=rank, dense_score=score)
    for rank, (chunk, score) in enumerate(keyword, 1):
        r = found.setdefault(chunk, Ranked(chunk, 0.0))
        r.keyword_rank, r.keyword_score = rank, score
    for r in found.values():
        r.score = sum(1.0 / (RRF_K + rank) for rank in (r.dense_rank, r.keyword_rank) if rank is not None)
        r.fused_score = r.score
    ordered = sorted(found.values(), key=lambda r: (-r.score, r.dense_rank or 1 << 30, r.chunk))
    return ordered[:k]


def single(ranked: Sequence[tuple[int, float]], side: str) -> list[Ranked]:
    """One side's list as the answer (dense or keyword mode)."""
    out = []
    for rank, (chunk, score) in enumerate(ranked, 1):
        r = Ranked(chunk, score)
        setattr(r, f"{side}_rank", rank)
        setattr(r, f"{side}_score", score)
        out.append(r)
    return out


def pages_label(page_start: int | None, page_end: int | None) -> str | None:
    """`p. 12`, `pp. 12-13`, or None for a text without pages."""
    if page_start is None:
        return None
    return f"p. {page_start}" if page_end in (None, page_start) else f"pp. {page_start}-{page_end}"


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def snippet(text: str, terms: Sequence[tuple[str, ...]], width: int = SNIPPET_CHARS) -> str:
    """About `width` characters of `text` on one line around its first run of query words, each
    word that matches a term's part (or shares its stem) marked **like this**."""
    wanted = {_stem(p) for parts in terms for p in parts}
    flat = " ".join(text.split())
    spans: list[tuple[int, int]] = []
    for m in _PART.finditer(flat):
        if _stem(m.group().lower()) in wanted:
            if spans and _JOINER.fullmatch(flat, spans[-1][1], m.start()):  # config_v2: one mark
                spans[-1] = (spans[-1][0], m.end())
            else:
                spans.append(m.span())
    if not spans:
        return flat[:width] + ("…" if len(flat) > width else "")
    start = max(0, spans[0][0] - width // 4)
    if start:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < spans[0][0] else start
    end = min(len(flat), start + width)
    out, at = [], start
    for s, e in spans:
        if s < start or e > end:
            continue
        out += [flat[at:s], "**", flat[s:e], "**"]
        at = e
    out.append(flat[at:end])
    return ("…" if start else "") + "".join(out) + ("…" if end < len(flat) else "")
