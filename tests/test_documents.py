"""Document management: the store's `documents` and `delete_document` on both stores (a delete
racing an ingest of the same document never leaves half a document), and the CLI's
`documents list|show|delete`, `enqueue --document-id --metadata` and `status --failed`."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.test_store import _add
from worker.errors import StoreBusyError, StoreUnavailableError
from worker.store import open_store

DIM = 384

# PostgreSQL: one server per test process (see tests/test_store_pg.py).
pytestmark = pytest.mark.xdist_group("postgresql")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_url")


def _unit(seed: int, n: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _consistent(store) -> None:
    """Every document has exactly the chunks it says, and no chunk lacks its document."""
    rows = store.conn.execute(
        "SELECT d.chunks, (SELECT count(*) FROM chunks c WHERE c.document = d.id) FROM documents d"
    ).fetchall()
    assert all(said == held for said, held in rows), rows
    orphans = store.conn.execute(
        "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document)"
    ).fetchone()[0]
    assert orphans == 0


# -- the store -----------------------------------------------------------------------------------


def test_documents_lists_and_shows_fields_metadata_and_chunk_count(store_url: str) -> None:
    with open_store(store_url) as store:
        assert store.documents() == []
        _add(store, "aaa", _unit(0, 3), document_id="report", caller_metadata={"team": "red", "n": [1, 2]})
        _add(store, "bbb", np.zeros((0, DIM), np.float32), page_errors=[{"page": 1, "error": "x"}])
        _add(store, "aaa", _unit(1, 2), model="other", document_id="report")
        docs = store.documents()
        assert [(d.document_id, d.model, d.chunks) for d in docs] == [
            ("report", "m", 3),
            ("bbb", "m", 0),
            ("report", "other", 2),
        ]
        first = docs[0]
        assert first.sha256 == "aaa" and first.name == "aaa.pdf" and first.title == "T" and first.pages == 3
        assert first.metadata == {"team": "red", "n": [1, 2]} and first.page_errors == []
        assert isinstance(first.created_at, float) and first.created_at > 1.7e9
        assert docs[1].page_errors == [{"page": 1, "error": "x"}] and docs[1].metadata == {}
        assert [d.model for d in store.documents("report")] == ["m", "other"]
        assert store.documents("nope") == []
        assert set(first.as_dict()) >= {"document_id", "name", "pages", "chunks", "created_at", "metadata"}


def test_delete_removes_documents_chunks_and_vectors_and_nothing_else(store_url: str) -> None:
    with open_store(store_url) as store:
        _add(store, "aaa", _unit(0, 3), document_id="report")
        _add(store, "aaa", _unit(1, 2), model="other", document_id="report")
        _add(store, "bbb", _unit(2, 4))
        assert store.delete_document("report") == (2, 5)
        assert store.counts() == {"documents": 1, "chunks": 4}
        assert store.find("aaa", "m") is None and store.export_document("aaa", "m") is None
        assert {h["document"] for h in store.search(_unit(3, 1)[0], k=100)} == {"bbb"}
        assert store.delete_document("report") == (0, 0)
        _consistent(store)
        row, already = _add(store, "aaa", _unit(0, 3), document_id="report")  # ingesting again stores it anew
        assert not already and store.counts() == {"documents": 2, "chunks": 7}


def test_delete_between_two_ingests_of_the_same_document(store_url: str) -> None:
    """An ingest before the delete is removed whole; the next one stores the whole document again."""
    with open_store(store_url) as ingest, open_store(store_url) as admin:
        _, already = _add(ingest, "aaa", _unit(0, 5), document_id="doc")
        assert admin.delete_document("doc") == (1, 5)
        row, already = _add(ingest, "aaa", _unit(0, 5), document_id="doc")
        assert not already and row.chunks == 5
        assert [d.chunks for d in admin.documents("doc")] == [5]
        _consistent(admin)


def test_delete_concurrent_with_ingests_never_leaves_half_a_document(store_url: str) -> None:
    """Two connections: one ingests the same document over and over, the other deletes it over and
    over. Whatever the interleaving, each document is whole or absent."""
    rounds = 30
    errors: list[BaseException] = []
    stored = 0

    def ingest() -> None:
        nonlocal stored
        with open_store(store_url) as store:
            for _ in range(rounds):
                try:
                    _add(store, "aaa", _unit(0, 40), document_id="doc")
                    stored += 1
                except StoreUnavailableError:  # PostgreSQL: the row it met was deleted meanwhile; a retry decides
                    pass
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

    with open_store(store_url) as admin:
        thread = threading.Thread(target=ingest)
        thread.start()
        for _ in range(rounds):
            with contextlib.suppress(StoreBusyError):  # SQLite: the ingest held the lock past the busy timeout
                admin.delete_document("doc")
            _consistent(admin)
        thread.join()
        assert errors == []
        assert stored >= 1
        _consistent(admin)
        docs = admin.documents("doc")
        assert len(docs) <= 1 and all(d.chunks == 40 for d in docs)


def test_delete_waits_for_nothing_uncommitted_on_postgresql(pg_url: str) -> None:
    """An ingest's open transaction is invisible to a delete: the delete removes nothing, and the
    ingest commits its whole document afterwards."""
    with open_store(pg_url) as ingest, open_store(pg_url) as admin:
        with ingest.conn.transaction():  # add_document's own transaction becomes a savepoint in it
            _add(ingest, "aaa", _unit(0, 5), document_id="doc")
            assert admin.delete_document("doc") == (0, 0)
        assert [d.chunks for d in admin.documents("doc")] == [5]
        _consistent(admin)


def test_ingest_waiting_on_a_delete_stores_the_whole_document_once(pg_url: str) -> None:
    """A delete holding the row: an ingest of the same bytes waits for it, then stores anew."""
    with open_store(pg_url) as ingest, open_store(pg_url) as admin:
        _add(ingest, "aaa", _unit(0, 5), document_id="doc")
        result: list = []
        with admin.conn.transaction():
            assert admin.delete_document("doc") == (1, 5)  # a savepoint: the outer transaction holds the row
            thread = threading.Thread(target=lambda: result.append(_add(ingest, "aaa", _unit(0, 5), document_id="doc")))
            thread.start()
        thread.join()
        ((row, already),) = result
        assert not already and row.chunks == 5
        assert [d.chunks for d in admin.documents("doc")] == [5]
        _consistent(admin)
