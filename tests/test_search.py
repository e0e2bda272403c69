"""Hybrid search on both stores: the keyword index kept exact, fusion, filters on both sides, hostile
query strings, and the migration of a store made before the keyword index existed."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from worker.store import Chunk, open_store
from worker.store.hybrid import RRF_K, fts5_query, fuse, pages_label, query_terms, snippet

DIM = 8
WORDS = ["wing", "lift", "drag", "boundary", "layer", "shock", "mach", "supersonic", "flow", "heat", "plate", "cone"]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _add(store, doc: str, texts: list[str], *, seed: int = 0, model: str = "m", pages: bool = True, **kw):
    chunks = [
        Chunk(i, t, i + 1 if pages else None, i + 1 if pages else None, 0, len(t), 5) for i, t in enumerate(texts)
    ]
    return store.add_document(
        document_id=doc,
        sha256=f"{doc}-{seed}-{model}",
        model=model,
        name=f"{doc}.pdf",
        meta={},
        pages=len(texts),
        pages_without_text=0,
        page_errors=[],
        chunks=chunks,
        vectors=_unit(np.random.default_rng(seed), len(texts)),
        **kw,
    )


def _keyword(store, text: str, k: int = 50, **filters) -> list[str]:
    return [h["text"] for h in store.search(None, k, text=text, mode="keyword", **filters)]


def _check_exact(store) -> None:
    """The keyword index holds exactly the chunks' text: FTS5's own check on SQLite; on PostgreSQL
    every tsvector equals the one its text gives now, and a word's matches are the chunks holding it."""
    if store.kind == "sqlite":
        store.conn.execute("INSERT INTO chunks_fts (chunks_fts, rank) VALUES ('integrity-check', 1)")
        fts = store.conn.execute("SELECT count(*) FROM chunks_fts").fetchone()[0]
        assert fts == store.counts()["chunks"]
    else:
        stale = store.conn.execute(
            "SELECT count(*) FROM chunks WHERE tsv IS DISTINCT FROM"
            " to_tsvector('english', text) || to_tsvector('english', worker_split_words(text))"
        ).fetchone()[0]
        assert stale == 0
    texts = [r[0] for r in store.conn.execute("SELECT text FROM chunks")]
    for word in ("zyxwing", "qqshock"):
        assert sorted(_keyword(store, word, 1000)) == sorted(t for t in texts if word in t.split())


def test_keyword_index_stays_exact_through_ingest_reingest_and_delete(store_url: str) -> None:
    with open_store(store_url, dim=DIM) as store:
        _check_exact(store)
        _add(store, "a", ["zyxwing lift", "qqshock wave", "plain"], seed=1)
        _add(store, "b", ["zyxwing again", "other"], seed=2)
        _check_exact(store)
        _, already = _add(store, "a", ["zyxwing lift", "qqshock wave", "plain"], seed=1)  # the same bytes again
        assert already
        _add(store, "a", ["qqshock anew"], seed=3)  # other bytes under the same id
        _check_exact(store)
        assert store.delete_document("a") == (2, 4)
        _check_exact(store)
        assert _keyword(store, "qqshock") == []
        _add(store, "c", ["qqshock cascade", "zyxwing cascade"], seed=4)
        with store._transaction():  # a document row deleted alone: its chunks go by the cascade
            store.conn.execute("DELETE FROM documents WHERE document_id = 'c'")
        _check_exact(store)
        assert _keyword(store, "cascade") == [] and _keyword(store, "zyxwing") == ["zyxwing again"]


def test_sqlite_integrity_check_fails_when_the_index_is_not_kept(tmp_path: Path) -> None:
    """The check above can fail: a chunk written past the triggers is found."""
    url = f"sqlite:///{tmp_path}/store.db"
    with open_store(url) as store:
        _add(store, "a", ["zyxwing lift"])
        store.conn.execute("DROP TRIGGER chunks_fts_delete")
        store.conn.execute("DELETE FROM chunks")
        with pytest.raises(sqlite3.DatabaseError):
            store.conn.execute("INSERT INTO chunks_fts (chunks_fts, rank) VALUES ('integrity-check', 1)")


def test_identifiers_and_filters_on_both_sides(store_url: str) -> None:
    with open_store(store_url, dim=DIM) as store:
        _add(store, "code", ["the class worker.store_pg.PgStore opens a pool", "load config_v2.yaml first"], seed=1)
        _add(store, "ops", ["retry with --max-retries 3 on ERR_429", "release v2.3.1 renames snake_case"], seed=2)
        _add(store, "red", ["ERR_429 in the red team's notes"], seed=3, caller_metadata={"team": "red"})
        _add(store, "other", ["ERR_429 under another model"], seed=4, model="other")
        for query, want in [
            ("PgStore", "the class worker.store_pg.PgStore opens a pool"),
            ("config_v2", "load config_v2.yaml first"),
            ("--max-retries", "retry with --max-retries 3 on ERR_429"),
            ("v2.3.1", "release v2.3.1 renames snake_case"),
            ("snake_case", "release v2.3.1 renames snake_case"),
        ]:
            assert _keyword(store, query, model="m")[:1] == [want], query
        assert len(_keyword(store, "ERR_429")) == 3
        assert len(_keyword(store, "ERR_429", model="m")) == 2
        assert _keyword(store, "ERR_429", model="m", document_id="ops") == ["retry with --max-retries 3 on ERR_429"]
        assert _keyword(store, "ERR_429", model="m", where={"team": "red"}) == ["ERR_429 in the red team's notes"]
        vector = _unit(np.random.default_rng(2), 2)[1]
        for mode in ("hybrid", "dense"):
            hits = store.search(vector, 10, model="m", where={"team": "red"}, text="ERR_429", mode=mode)
            assert {h["document"] for h in hits} == {"red"}, mode
        hits = store.search(vector, 10, model="m", document_id="ops", text="ERR_429", mode="hybrid")
        assert {h["document"] for h in hits} == {"ops"}


def test_hybrid_fuses_both_ranks_and_falls_back_to_dense(store_url: str) -> None:
    with open_store(store_url, dim=DIM) as store:
        _add(store, "a", ["zyxwing one", "nothing here", "zyxwing two zyxwing", "more filler"], seed=1)
        vectors = _unit(np.random.default_rng(1), 4)
        hits = store.search(vectors[1], 4, model="m", text="zyxwing", mode="hybrid")
        by_text = {h["text"]: h for h in hits}
        assert by_text["nothing here"]["dense_rank"] == 1 and by_text["nothing here"]["keyword_rank"] is None
        for h in hits:
            ranks = [r for r in (h["dense_rank"], h["keyword_rank"]) if r is not None]
            assert h["score"] == h["fused_score"] == pytest.approx(sum(1 / (RRF_K + r) for r in ranks), abs=1e-6)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert hits[0]["dense_rank"] is not None and hits[0]["keyword_rank"] is not None
        assert hits[0]["pages"] == f"p. {hits[0]['page_start']}" and "**zyxwing**" in hits[0]["snippet"]
        no_terms = store.search(vectors[1], 4, model="m", text="-- ... ((", mode="hybrid")
        dense = store.search(vectors[1], 4, model="m")
        assert [h["text"] for h in no_terms] == [h["text"] for h in dense]
        assert no_terms[0]["keyword_rank"] is None and no_terms[0]["score"] == dense[0]["score"]
        assert store.search(None, 4, text="-- ... ((", mode="keyword") == []


def test_text_chunks_have_no_pages(store_url: str) -> None:
    with open_store(store_url, dim=DIM) as store:
        _add(store, "notes", ["zyxwing in a text file"], pages=False)
        hit = store.search(None, 1, text="zyxwing", mode="keyword")[0]
        assert (hit["page_start"], hit["page_end"], hit["pages"]) == (None, None, None)
        record = store.export_document("notes-0-m", "m")
        assert record.chunks[0].page_start is None and record.chunks[0].page_end is None


HOSTILE = [
    '"', '""', "'", "-", "--", "-x", "a-b", ".", "..", "a.b", ":", "a:b", "*", "a*", "(", ")", "()", "(a",
    "^", "+", "NEAR(a b)", "NEAR", "AND", "OR", "NOT", "a OR", "OR b", "AND AND", "{a b}", "col:a", "text:x",
    "\\", "\\x00", "\x00", "a\x00b", "\t\n", "   ", "", "&", "|", "!", "<->", "a <-> b", "a & !b", ":*",
    "'a':*", "$$", "%s", "%", "?", ";", "--;", "/*", "*/", "\u200b", "\ufeff", "ﬁ", "İ", "ß", "東京", "😀",
    "a" * 300, "x" * 5000, "é" * 50,
]  # fmt: skip


def _hostile(rng: random.Random) -> str:
    pieces = [*HOSTILE, *WORDS, "PgStore", "v2.3.1", "ERR_429", "snake_case"]
    return " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))


def test_no_query_string_raises(store_url: str) -> None:
    rng = random.Random(20)
    with open_store(store_url, dim=DIM) as store:
        _add(store, "a", [" ".join(rng.choices(WORDS, k=12)) + " PgStore v2.3.1" for _ in range(20)], seed=1)
        vector = _unit(np.random.default_rng(5), 1)[0]
        queries = (
            HOSTILE + [_hostile(rng) for _ in range(300)] + ["".join(chr(rng.randint(1, 0x2FFF)) for _ in range(20))]
        )
        queries += [" ".join(f"w{i}" for i in range(200))]  # more terms than a query keeps
        for query in queries:
            for mode in ("keyword", "hybrid"):
                hits = store.search(vector, 5, model="m", text=query, mode=mode)
                assert len(hits) <= 5, query
            if any(w in query.lower().split() for w in WORDS):
                assert store.search(vector, 5, model="m", text=query, mode="keyword"), query


def test_query_terms_and_fts5_quoting() -> None:
    assert query_terms("worker.store_pg.PgStore --max-retries v2.3.1") == [
        ("worker", "store", "pg", "pgstore"),
        ("max", "retries"),
        ("v2", "3", "1"),
    ]
    assert query_terms('-- . " : * ( )') == [] and query_terms(None) == []
    assert query_terms("a A a") == [("a",)]
    assert fts5_query([("snake", "case"), ("err", "429")]) == '"snake case" OR "err 429"'
    assert pages_label(12, 12) == "p. 12" and pages_label(12, 13) == "pp. 12-13" and pages_label(None, None) is None
    assert snippet("set config_v2.yaml now", query_terms("config_v2")) == "set **config_v2**.yaml now"
    assert snippet("Wings and drag", query_terms("wing")) == "**Wings** and drag"


def test_fuse_orders_by_reciprocal_rank() -> None:
    fused = fuse([(1, 0.9), (2, 0.8), (3, 0.7)], [(3, 5.0), (4, 4.0)], 3)
    assert [r.chunk for r in fused] == [3, 1, 2]
    assert fused[0].dense_rank == 3 and fused[0].keyword_rank == 1
    assert fused[0].score == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))


# -- a store made before the keyword index ---------------------------------------------------------

SQLITE_SCHEMA_1 = """
CREATE TABLE documents (id INTEGER PRIMARY KEY, document_id TEXT NOT NULL, sha256 TEXT NOT NULL,
    model TEXT NOT NULL, dim INTEGER NOT NULL, name TEXT, title TEXT, author TEXT, producer TEXT,
    pages INTEGER NOT NULL, pages_without_text INTEGER NOT NULL, chunks INTEGER NOT NULL,
    no_text INTEGER NOT NULL, page_errors TEXT NOT NULL, metadata TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (sha256, model));
CREATE INDEX documents_document_id ON documents (document_id);
CREATE TABLE chunks (id INTEGER PRIMARY KEY,
    document INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    page_start INTEGER NOT NULL, page_end INTEGER NOT NULL, char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL, n_tokens INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL,
    UNIQUE (document, seq));
PRAGMA user_version = 1;
"""  # the schema as the store had it before the keyword index (version 1)


def _old_sqlite_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SQLITE_SCHEMA_1)
    conn.execute(
        "INSERT INTO documents VALUES (1, 'old', 'h', 'm', ?, 'old.pdf', NULL, NULL, NULL, 2, 0, 2, 0, '[]', '{}', 0)",
        (DIM,),
    )
    vectors = _unit(np.random.default_rng(9), 2)
    for i, text in enumerate(["zyxwing stored before", "qqshock stored before"]):
        conn.execute(
            "INSERT INTO chunks VALUES (?, 1, ?, ?, ?, 0, 20, 5, ?, ?)",
            (i + 1, i, i + 1, i + 1, text, vectors[i].tobytes()),
        )
    conn.commit()
    conn.close()


def _old_pg_store(url: str) -> None:
    """The schema the PostgreSQL store had before the keyword index: its migrations 1 to 3."""
    from worker.store.pg import _migrations, connect

    conn = connect(url)
    with conn.transaction():
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            "CREATE TABLE worker_migrations (version integer PRIMARY KEY, applied_at timestamptz DEFAULT now())"
        )
        for number, statements in _migrations(DIM)[:3]:
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO worker_migrations (version) VALUES (%s)", (number,))
        doc = conn.execute(
            "INSERT INTO documents (document_id, sha256, model, dim, name, pages, pages_without_text, chunks,"
            " no_text, page_errors, metadata) VALUES ('old', 'h', 'm', %s, 'old.pdf', 2, 0, 2, false, '[]', '{}')"
            " RETURNING id",
            (DIM,),
        ).fetchone()[0]
        vectors = _unit(np.random.default_rng(9), 2)
        for i, text in enumerate(["zyxwing stored before", "qqshock stored before"]):
            conn.execute(
                "INSERT INTO chunks (document, seq, page_start, page_end, char_start, char_end, n_tokens, text,"
                " embedding) VALUES (%s, %s, %s, %s, 0, 20, 5, %s, %s::vector)",
                (doc, i, i + 1, i + 1, text, str(vectors[i].tolist())),
            )
    conn.close()


def test_a_store_from_before_the_keyword_index_gets_it_with_its_cost_logged(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if store_url.startswith("sqlite"):
        _old_sqlite_store(tmp_path / "store.db")
    else:
        _old_pg_store(store_url)
    caplog.set_level(logging.INFO)
    with open_store(store_url, dim=DIM) as store:
        said = [
            r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "keyword index" in r.getMessage()
        ]
        assert len(said) == 1 and "over 2 chunks in" in said[0], said
        assert _keyword(store, "qqshock") == ["qqshock stored before"]
        hits = store.search(_unit(np.random.default_rng(9), 2)[0], 2, text="zyxwing", mode="hybrid")
        assert hits[0]["text"] == "zyxwing stored before" and hits[0]["pages"] == "p. 1"
        _add(store, "new", ["zyxwing after"], seed=3)
        _check_exact(store)
    caplog.clear()
    with open_store(store_url, dim=DIM) as store:  # migrated: nothing more to say
        assert len(_keyword(store, "zyxwing")) == 2
    assert "keyword index" not in caplog.text


def test_postgresql_ranks_the_chunks_of_the_rarest_terms(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the planner's statistics, a keyword search on PostgreSQL ranks the chunks holding its
    rarest terms, about RANKED_AT_MOST of them (its cost), and ranks them by every term."""
    import worker.store.pg

    monkeypatch.setattr(worker.store.pg, "RANKED_AT_MOST", 50)
    with open_store(pg_url, dim=DIM) as store:
        texts = [f"flow number {i} over a plate" for i in range(300)]
        texts[7] = "flow over a zyxwing plate"
        texts[9] = "zyxwing alone"
        texts[11] = "flow again, alone"
        _add(store, "a", texts)
        assert len(_keyword(store, "flow zyxwing", 1000)) == 50  # no statistics yet: every term, at most 50
        store.conn.execute("ANALYZE chunks")
        store._common = None
        assert sorted(_keyword(store, "flow zyxwing", 1000)) == ["flow over a zyxwing plate", "zyxwing alone"]
        assert len(_keyword(store, "flow", 1000)) == 50  # common: the first 50 found, ranked
        assert _keyword(store, "the of and") == []  # stop words only
