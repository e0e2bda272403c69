"""Document management: the store's `documents` and `delete_document` on both stores (a delete
racing an ingest of the same document never leaves half a document), and the CLI's
`documents list|show|delete`, `enqueue --document-id --metadata` and `status --failed`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from tests import pdfs
from tests.conftest import worker_env
from tests.test_store import _add
from worker.cli import main
from worker.devredis import free_port
from worker.errors import StoreBusyError, StoreUnavailableError
from worker.store import open_store

DIM = 384

# PostgreSQL: one server per test process (see tests/test_store_pg.py).
pytestmark = pytest.mark.xdist_group("postgresql")


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


# -- the CLI: documents list|show|delete -----------------------------------------------------------


def _cli(monkeypatch, capsys, store_url: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("STORE_URL", store_url)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_documents_commands_list_show_and_delete_on_both_stores(store_url: str, monkeypatch, capsys) -> None:
    with open_store(store_url) as store:
        _add(store, "aaa", _unit(0, 3), document_id="report\x1b[2J", caller_metadata={"team": "red"})
        _add(store, "bbb", _unit(1, 2), page_errors=[{"page": 2, "error": "bad font"}])
    code, out, err = _cli(monkeypatch, capsys, store_url, "documents", "list")
    assert code == 0 and "\x1b" not in out
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "NAME", "PAGES", "CHUNKS", "CREATED", "(UTC)"]
    assert first.split()[:4] == ["report\\x1b[2J", "aaa.pdf", "3", "3"] and second.split()[:4] == [
        "bbb",
        "bbb.pdf",
        "2",
        "2",
    ]

    code, out, _ = _cli(monkeypatch, capsys, store_url, "documents", "list", "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [d["document_id"] for d in listed] == ["report\x1b[2J", "bbb"]
    assert set(listed[0]) == {"document_id", "name", "pages", "chunks", "created_at"}

    code, out, _ = _cli(monkeypatch, capsys, store_url, "documents", "show", "bbb")
    assert code == 0 and "chunks: 2" in out.splitlines() and "page 2 error: bad font" in out.splitlines()
    code, out, _ = _cli(monkeypatch, capsys, store_url, "documents", "show", "report\x1b[2J", "--json")
    (shown,) = [json.loads(line) for line in out.splitlines()]
    assert shown["metadata"] == {"team": "red"} and shown["chunks"] == 3 and shown["sha256"] == "aaa"

    code, out, _ = _cli(monkeypatch, capsys, store_url, "documents", "delete", "bbb")
    assert code == 0 and out == "deleted bbb: 1 document, 2 chunks\n"
    with open_store(store_url) as store:
        assert store.counts() == {"documents": 1, "chunks": 3}
    for command in ("delete", "show"):
        code, out, err = _cli(monkeypatch, capsys, store_url, "documents", command, "bbb")
        assert code == 1 and out == "" and err.startswith("worker: no document 'bbb' in ") and "documents list" in err
        assert "S3cret" not in err  # the PostgreSQL URL's password is never shown


def test_documents_on_a_sqlite_store_not_created_yet_creates_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path}/store.db"  # its folder exists: an empty store, not an error
    code, out, err = _cli(monkeypatch, capsys, url, "documents", "list")
    assert code == 0 and out == "" and "no store at" in err
    code, _, err = _cli(monkeypatch, capsys, url, "documents", "delete", "x")
    assert code == 1 and "no document 'x'" in err
    url = f"sqlite:///{tmp_path}/none/store.db"  # a folder that does not exist: a typo, most likely
    code, out, err = _cli(monkeypatch, capsys, url, "documents", "list")
    assert code == 1 and out == "" and f"its folder {tmp_path}/none does not exist (check STORE_URL" in err
    assert not (tmp_path / "none").exists() and not (tmp_path / "store.db").exists()


# -- the CLI: enqueue --document-id --metadata, status --failed ------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["a.pdf", "b.pdf", "--document-id", "x"], "give one file, not 2"),
        (["a.pdf", "--metadata", "{team: red}"], "--metadata is not JSON"),
        (["a.pdf", "--metadata", "[1, 2]"], "metadata must be a JSON object"),
        (["a.pdf", "--document-id", "x" * 201], "document_id must be a non-empty string of at most 200"),
    ],
)
def test_enqueue_refuses_bad_document_id_or_metadata_before_enqueueing(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    code, out, err = _cli(monkeypatch, capsys, f"sqlite:///{tmp_path}/s.db", "enqueue", *argv)
    assert code == 2 and out == "" and says in err and err.count("\n") == 1


def _run(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *argv], env=env, capture_output=True, text=True, timeout=180)


def test_enqueue_with_document_id_and_metadata_then_show_search_delete(start_worker, redis_url, tmp_path) -> None:
    """Through a real worker: the id and metadata given to `enqueue` are stored, searched on, deleted."""
    start_worker()
    env = worker_env(redis_url, tmp_path, free_port(), "")
    path = tmp_path / "bread.pdf"
    path.write_bytes(pdfs.make_pdf([pdfs.long_page("bread", 20)]))
    out = _run(env, "enqueue", str(path), "--wait", "--timeout", "120", "--document-id", "rep-1",
               "--metadata", '{"team": "red"}')  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(_run(env, "documents", "show", "rep-1", "--json").stdout)
    assert shown["metadata"] == {"team": "red"} and shown["name"] == "bread.pdf" and shown["chunks"] >= 1
    hits = _run(env, "search", "bread", "--where", "team=red", "--json").stdout.splitlines()
    assert hits and {json.loads(h)["document"] for h in hits} == {"rep-1"}
    deleted = _run(env, "documents", "delete", "rep-1")
    assert deleted.returncode == 0 and deleted.stdout.startswith("deleted rep-1: 1 document, ")
    assert _run(env, "search", "bread", "--json").stdout == ""
    assert _run(env, "documents", "show", "rep-1").returncode == 1


EVIL = "worker.errors.NotAPdfError: evil\x1b]0;pwned\x07\x1b[2J\nsecond line"


def test_status_failed_lists_recent_failures_newest_first_escaped(start_worker, redis_conn, redis_url, tmp_path):
    old = Job.create("worker.jobs.ping", connection=redis_conn, serializer=JSONSerializer, id="planted-1")
    old.ended_at = datetime(2020, 1, 1, tzinfo=UTC)
    old.save()
    FailedJobRegistry("default", connection=redis_conn, serializer=JSONSerializer).add(old)
    Result.create_failure(old, 600, 'Traceback (most recent call last):\n  File "x", line 1\n    f()\n' + EVIL)
    redis_conn.zadd("rq:failed:default", {b"gone\x1b[2J\xff": time.time() + 3600})  # no such job: said so, escaped
    start_worker()
    env = worker_env(redis_url, tmp_path, free_port(), "")
    (tmp_path / "notes.pdf").write_text("not a PDF at all")
    assert _run(env, "enqueue", str(tmp_path / "notes.pdf"), "--wait", "--timeout", "60").returncode == 1

    out = _run(env, "status", "--failed")
    assert out.returncode == 0 and "\x1b" not in out.stdout and "\x07" not in out.stdout
    lines = out.stdout.splitlines()
    assert len(lines) == 6 and "worker.jobs.ingest_pdf" in lines[0] and lines[1].startswith("    NotAPdfError: ")
    assert "planted-1" in lines[2] and lines[3] == "    NotAPdfError: evil\\x1b]0;pwned\\x07\\x1b[2J second line"
    assert "gone\\x1b[2J\\xff" in lines[4] and "the job cannot be read" in lines[5]
    jobs = [json.loads(line) for line in _run(env, "status", "--failed", "-n", "1", "--json").stdout.splitlines()]
    assert len(jobs) == 1 and jobs[0]["error_type"] == "NotAPdfError" and jobs[0]["queue"] == "default"
    assert set(jobs[0]) == {"job_id", "queue", "function", "ended_at", "error_type", "error"}
    assert _run(env, "status", "--failed", "-n", "0").returncode == 2
