"""The latency benchmark's bulk load on PostgreSQL (indexes dropped, the chunks written, the indexes
created again) leaves the store as writing through the store API with every index in place does."""

from __future__ import annotations

import random

from bench.bench_search import bulk_load, check_loaded, synthetic_documents
from worker.store import open_store

DIM = 16
CHUNKS = 2500  # three documents, the last one short

ROWS = """SELECT d.document_id, d.sha256, d.pages, d.chunks, c.seq, c.page_start, c.page_end, c.char_start,
    c.char_end, c.n_tokens, c.text, c.embedding::text, c.tsv::text
    FROM chunks c JOIN documents d ON d.id = c.document ORDER BY d.document_id, c.seq"""
INDEXES = "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"


def _texts() -> list[str]:
    pick = random.Random(3)
    vocabulary = [f"{pick.choice('bcdfglmnprst')}{pick.choice('aeiou')}{pick.randrange(10**6)}x" for _ in range(3000)]
    return [" ".join(pick.choices(vocabulary, k=120)) for _ in range(40)]


def test_bulk_load_leaves_the_store_as_the_store_api_does(pg_server) -> None:
    texts, written, loaded = _texts(), pg_server.new_database(), pg_server.new_database()
    with open_store(written, dim=DIM) as store:
        for doc in synthetic_documents(texts, CHUNKS, DIM, "m"):
            store.add_document(**doc)
        rows, indexes = store.conn.execute(ROWS).fetchall(), store.conn.execute(INDEXES).fetchall()
    with open_store(loaded, dim=DIM) as store:
        took = bulk_load(store, synthetic_documents(texts, CHUNKS, DIM, "m"))
        assert set(took) == {"write", "index"}
        assert store.conn.execute(ROWS).fetchall() == rows  # the generated tsvector too
        assert store.conn.execute(INDEXES).fetchall() == indexes
        store.conn.execute("ANALYZE chunks")
        names = [r[1] for r in indexes if r[0] == "chunks"]
        assert {"chunks_embedding_hnsw", "chunks_tsv"} <= set(names), names
    assert len(rows) == CHUNKS
    check_loaded(loaded, texts, CHUNKS, DIM, "m")
