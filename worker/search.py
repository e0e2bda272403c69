"""Search the store from Python, the CLI and the `search` job: one call for all three.

    from worker.search import search
    hits = search("PgStore connection pool", k=5)               # hybrid: keyword and dense ranks fused
    hits = search("ERR_429", mode="keyword", where={"team": "infra"})

Modes: "hybrid" (default), "dense" (embeddings only), "keyword" (the store's keyword index only;
see worker/store/hybrid.py for how a query becomes terms). The model is loaded in this process;
a program that should not load it enqueues the job instead:
`Queue("high").enqueue("worker.jobs.search", "PgStore", k=5)` and reads the job's result.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.embedding import get_embedder
from worker.errors import InvalidArgumentsError
from worker.settings import Settings, get_settings
from worker.store import MAX_SEARCH_K, check_encodable, check_filters, open_configured_store
from worker.store.hybrid import MODES

MAX_QUERY_CHARS = 2000  # a query longer than this is refused (the model reads 256 word pieces of it anyway)


def check_query(query: object, k: object, mode: object) -> None:
    """InvalidArgumentsError (or UnstorableInputError) saying what is wrong with a search's arguments."""
    if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
        raise InvalidArgumentsError(f"query must be a string of at most {MAX_QUERY_CHARS} characters")
    check_encodable("the query", query)  # the tokenizer takes UTF-8 only
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SEARCH_K:
        raise InvalidArgumentsError(f"k must be an integer from 1 to {MAX_SEARCH_K}")
    if mode not in MODES:
        raise InvalidArgumentsError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def search(
    query: str,
    k: int = 5,
    mode: str = "hybrid",
    document_id: str | None = None,
    where: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> list[dict]:
    """The k best chunks for `query`, best first, of documents embedded with this worker's model.

    Each hit: document, name, title, page_start, page_end (None for a text without pages), pages
    (`p. 12`, `pp. 12-13`), char_start, char_end, score (what it is ranked by: fused in hybrid
    mode, cosine in dense, keyword score in keyword), dense_rank, dense_score, keyword_rank,
    keyword_score (None where that side did not find it or did not run), fused_score, snippet
    (matched words marked **like this**) and text."""
    check_query(query, k, mode)
    check_filters(document_id, where)
    settings = settings or get_settings()
    embedder = get_embedder(settings)
    vector = embedder.embed([query])[0] if mode != "keyword" else None
    with open_configured_store(settings, embedder.dim) as store:
        return store.search(
            vector, k, model=embedder.model_name, document_id=document_id, where=where, text=query, mode=mode
        )
