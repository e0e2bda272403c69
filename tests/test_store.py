"""The SQLite store: schema, idempotency, one transaction per document, search, a busy lock, a full
disk, a file that is not a database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from worker.chunking import Chunk
from worker.errors import StoreBusyError, StoreConfigError, StoreDiskError, TransientError
from worker.store import SCHEMA_VERSION, Store, StoreSchemaError, sqlite_problem

DIM = 8


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _chunks(n: int) -> list[Chunk]:
    return [
        Chunk(seq=i, text=f"chunk {i}", page_start=i + 1, page_end=i + 1, char_start=0, char_end=7, n_tokens=5)
        for i in range(n)
    ]


def _add(store: Store, sha: str, vectors: np.ndarray, model: str = "m", **kw):
    args = dict(
        document_id=kw.pop("document_id", sha),
        sha256=sha,
        model=model,
        name=f"{sha}.pdf",
        meta={"title": "T"},
        pages=len(vectors),
        pages_without_text=0,
        page_errors=[],
        chunks=kw.pop("chunks", _chunks(len(vectors))),
        vectors=vectors,
    )
    args.update(kw)
    return store.add_document(**args)


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/sub/store.db"


def test_schema_wal_and_counts(url: str, tmp_path: Path) -> None:
    with Store.open(url) as store:
        assert store.counts() == {"documents": 0, "chunks": 0}
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with Store.open(url) as store:  # reopening keeps it
        assert store.counts() == {"documents": 0, "chunks": 0}


def test_newer_schema_refused(url: str, tmp_path: Path) -> None:
    with Store.open(url):
        pass
    conn = sqlite3.connect(tmp_path / "sub" / "store.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreSchemaError), Store.open(url):
        pass


def test_same_bytes_same_model_stored_once(url: str) -> None:
    rng = np.random.default_rng(0)
    with Store.open(url) as store:
        row, already = _add(store, "aaa", _unit(rng, 3))
        assert not already and row.chunks == 3
        again, already = _add(store, "aaa", _unit(rng, 3), document_id="other-id")
        assert already and again.id == row.id and again.document_id == "aaa"
        assert store.counts() == {"documents": 1, "chunks": 3}
        _, already = _add(store, "aaa", _unit(rng, 2), model="other-model")
        assert not already
        assert store.counts() == {"documents": 2, "chunks": 5}
        assert store.find("aaa", "m").id == row.id
        assert store.find("aaa", "nope") is None


def test_document_without_text_is_stored_with_zero_chunks(url: str) -> None:
    with Store.open(url) as store:
        row, _ = _add(store, "scan", np.zeros((0, DIM), np.float32), pages_without_text=0)
        assert row.chunks == 0
        assert store.conn.execute("SELECT no_text FROM documents").fetchone()[0] == 1


def test_failure_part_way_leaves_no_half_document(url: str) -> None:
    chunks = _chunks(3)
    chunks[2] = Chunk(seq=1, text="duplicate seq", page_start=1, page_end=1, char_start=0, char_end=1, n_tokens=3)
    with Store.open(url) as store:
        with pytest.raises(sqlite3.IntegrityError):
            _add(store, "bad", _unit(np.random.default_rng(1), 3), chunks=chunks)
        assert store.counts() == {"documents": 0, "chunks": 0}
        with pytest.raises(ValueError):
            _add(store, "bad", _unit(np.random.default_rng(1), 2), chunks=_chunks(3))
        row, already = _add(store, "bad", _unit(np.random.default_rng(1), 3))  # a clean retry works
        assert not already and store.counts() == {"documents": 1, "chunks": 3}


def test_search_returns_nearest_by_cosine(url: str) -> None:
    rng = np.random.default_rng(2)
    a, b = _unit(rng, 4), _unit(rng, 5)
    with Store.open(url) as store:
        _add(store, "doc-a", a)
        _add(store, "doc-b", b)
        _add(store, "doc-c", _unit(rng, 2), model="other")
        query = b[3] + 0.05 * a[0]
        hits = store.search(query / np.linalg.norm(query), k=3, model="m")
        assert hits[0]["document"] == "doc-b" and hits[0]["page_start"] == 4
        assert hits[0]["text"] == "chunk 3"
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        expected = np.sort(np.concatenate([a, b]) @ (query / np.linalg.norm(query)))[::-1][:3]
        assert np.allclose([h["score"] for h in hits], expected, atol=1e-5)
        assert len(store.search(query, k=100, model="m")) == 9
        assert store.search(np.ones(DIM + 1), k=3) == []  # another dimension matches nothing


def test_locked_store_raises_store_busy(url: str, tmp_path: Path) -> None:
    with Store.open(url):
        pass
    holder = sqlite3.connect(tmp_path / "sub" / "store.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        with Store.open(url, busy_timeout=0.2) as store:
            with pytest.raises(StoreBusyError):
                _add(store, "x", _unit(np.random.default_rng(3), 1))
            assert store.counts() == {"documents": 0, "chunks": 0}  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store.open(url) as store:
        _add(store, "x", _unit(np.random.default_rng(3), 1))
        assert store.counts() == {"documents": 1, "chunks": 1}


def test_full_database_is_a_transient_store_disk_error_and_writes_nothing(url: str) -> None:
    """SQLite's own "database or disk is full" (PRAGMA max_page_count caps the file, as a full disk
    would): StoreDiskError, a TransientError (the job is retried), nothing half-written; once there is
    room, the same document goes in. (A real full disk, a tmpfs: tests/test_ingest_e2e.py.)"""
    rng = np.random.default_rng(4)
    with Store.open(url) as store:
        _add(store, "small", _unit(rng, 1))
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        big = [Chunk(seq=i, text="x" * 3000, page_start=1, page_end=1, char_start=0, char_end=3000, n_tokens=5)
               for i in range(50)]  # fmt: skip
        with pytest.raises(StoreDiskError, match="disk is full") as raised:
            _add(store, "big", _unit(rng, 50), chunks=big)
        assert isinstance(raised.value, TransientError)
        assert store.counts() == {"documents": 1, "chunks": 1}
        store.conn.execute("PRAGMA max_page_count = 1073741823")
        _, already = _add(store, "big", _unit(rng, 50), chunks=big)
        assert not already and store.counts() == {"documents": 2, "chunks": 51}


def test_a_file_that_is_not_a_database_is_a_store_config_error(tmp_path: Path) -> None:
    """Opening it: StoreConfigError naming the file (was an untyped sqlite3.DatabaseError), and
    `sqlite_problem` (what /readyz asks) says why from a look at the file alone."""
    junk = tmp_path / "junk.db"
    junk.write_text("this is a text file, not a database\n" * 10)
    with pytest.raises(StoreConfigError, match="not a SQLite database"), Store.open(f"sqlite:///{junk}"):
        pass
    assert "not a SQLite database" in sqlite_problem(junk)
    assert "is a directory" in sqlite_problem(tmp_path)
    with pytest.raises(StoreConfigError, match="cannot be opened"), Store.open(f"sqlite:///{tmp_path}"):
        pass
    assert "not a directory" in sqlite_problem(junk / "store.db")
    assert sqlite_problem(tmp_path / "missing" / "store.db") is None  # the first job creates it
    (tmp_path / "empty.db").write_bytes(b"")
    assert sqlite_problem(tmp_path / "empty.db") is None  # SQLite takes an empty file as a new database
    with Store.open(f"sqlite:///{tmp_path}/real.db"):
        pass
    assert sqlite_problem(tmp_path / "real.db") is None


def test_text_from_a_document_is_made_storable_character_for_character() -> None:
    """What a PDF yields is kept, not refused: each NUL or lone surrogate becomes U+FFFD, so the
    chunks' character offsets into the page text still hold (the pipeline cleans page texts so)."""
    from worker.pipeline import storable_text as used_by_the_pipeline
    from worker.store import storable, storable_text

    assert used_by_the_pipeline is storable_text
    text = "a\x00b\ud800c\udcffd 😀"
    clean = storable_text(text)
    assert clean == "a\ufffdb\ufffdc\ufffdd 😀" and len(clean) == len(text)
    assert storable_text("plain") == "plain"
    assert storable({"title": "t\x00", "n": 1, "l": [{"error": "e\udc80"}]}) == {
        "title": "t\ufffd",
        "n": 1,
        "l": [{"error": "e\ufffd"}],
    }
