"""`python -m worker store copy`: documents, chunks and vectors from one store to another without
embedding again; idempotent, resumable after a real kill, refusing what the target cannot hold.

The source is a SQLite store filled by really ingesting PDFs (the real model); the target a private
PostgreSQL (tests/pgserver.py).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import pdfs
from tests.conftest import MODEL_DIR, ROOT, wait_for
from worker.store import DocumentRecord, open_store

pytestmark = pytest.mark.xdist_group("postgresql")

QUERY = "How hot should the oven be for sourdough?"


def _with_bogus_last_page(pages: list[str]) -> bytes:
    """A PDF whose last page cannot be loaded: stored with page_errors."""
    return pdfs.missing_last_page(pdfs.make_pdf(pages))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A SQLite store holding four really ingested PDFs: text and metadata, several chunks, a page
    that failed, a scan with no text (zero chunks). No page twice, so no two chunks tie in a search."""
    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.skip("no model: run `make model`")
    from worker import jobs
    from worker.settings import Settings, get_settings, set_settings

    url = f"sqlite:///{tmp_path_factory.mktemp('copy-source')}/source.db"
    inputs = [
        ("sample.pdf", pdfs.sample_pdf(), "sample", {"team": "geo", "n": 1}),
        ("harbour.pdf", pdfs.make_pdf([pdfs.long_page("harbour")]), None, {"team": "sea"}),
        (
            "broken.pdf",
            _with_bogus_last_page([pdfs.long_page("copper", 30), "Tin and copper make bronze."]),
            "broken",
            None,
        ),
        ("scan.pdf", pdfs.make_pdf([None, None]), "scan", None),
    ]
    saved = get_settings()
    set_settings(Settings.from_env({}).override(embed_model_dir=MODEL_DIR, store_url=url))
    try:
        for name, data, document_id, metadata in inputs:
            src = {"data_b64": base64.b64encode(data).decode(), "filename": name}
            assert jobs.ingest_pdf(src, document_id=document_id, metadata=metadata)["already_stored"] is False
    finally:
        set_settings(saved)
    with open_store(url) as store:
        keys = store.document_keys()
        assert [dim for _, _, dim in keys] == [384, 384, 384, 0]  # the second has chunks (see the kill test)
        assert store.find(keys[2][0], keys[2][1]).page_errors  # the broken page is recorded
    return url


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", "store", "copy", *args], env=_env(), capture_output=True, text=True, timeout=60
    )


@pytest.fixture()
def copy_in_process(capsys, monkeypatch):
    """`store copy` through `worker.cli.main` in this process: the same code and output as `_cli`
    without an interpreter's start-up."""
    import worker.settings
    from worker import cli

    monkeypatch.setattr(worker.settings, "_settings", worker.settings._settings)  # main() installs its own

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = cli.main(["store", "copy", *args])
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), EMBED_MODEL_DIR=str(MODEL_DIR), STORE_BUSY_TIMEOUT="30")


def _records(url: str) -> list[DocumentRecord]:
    with open_store(url) as store:
        return [store.export_document(sha, model) for sha, model, _ in store.document_keys()]


def _assert_same(a: list[DocumentRecord], b: list[DocumentRecord]) -> None:
    """Same documents, fields, chunks and bit-identical float32 vectors (created_at to the microsecond)."""
    assert [r.sha256 for r in a] == [r.sha256 for r in b]
    for x, y in zip(a, b, strict=True):
        for name in ("document_id", "model", "name", "meta", "pages", "pages_without_text", "page_errors"):
            assert getattr(x, name) == getattr(y, name), name
        assert x.caller_metadata == y.caller_metadata and x.chunks == y.chunks
        assert x.vectors.dtype == y.vectors.dtype == np.float32 and x.vectors.shape == y.vectors.shape
        assert np.array_equal(x.vectors.view(np.uint32), y.vectors.view(np.uint32))
        assert abs(x.created_at - y.created_at) < 1e-5


def _summary(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout)


def test_copy_to_postgresql_keeps_everything_once_and_back_again(
    source: str, pg_url: str, tmp_path: Path, copy_in_process
) -> None:
    expected = _records(source)
    total = len(expected)
    first = _cli("--from", source, "--to", pg_url, "--json")
    summary = _summary(first)
    assert summary["status"] == "done" and summary["total"] == total
    assert (summary["copied"], summary["skipped"]) == (total, 0)
    assert summary["chunks"] == sum(len(r.chunks) for r in expected)
    assert f"{total}/{total} documents ({total} copied, 0 skipped)" in first.stderr
    assert "S3cret" not in first.stdout + first.stderr and summary["to"].startswith("postgresql://***@")
    _assert_same(_records(pg_url), expected)

    # The vectors as PostgreSQL itself prints them (shortest text that reads back as the same float32).
    with open_store(pg_url) as target:
        assert target.dim == 384
        printed = [
            np.array(json.loads(text), dtype=np.float32)
            for (text,) in target.conn.execute("SELECT c.embedding::text FROM chunks c ORDER BY c.document, c.seq")
        ]
        assert np.array_equal(np.stack(printed), np.concatenate([r.vectors for r in expected if r.chunks]))
        no_text = target.conn.execute("SELECT no_text FROM documents ORDER BY id").fetchall()
        assert [flag for (flag,) in no_text] == [not r.chunks for r in expected]

    # Search on the target finds what it finds on the source (HNSW over a few chunks is exact).
    from worker.embedding import Embedder

    query = Embedder(MODEL_DIR, "fp32", threads=2).embed([QUERY])[0]
    with open_store(source) as src, open_store(pg_url) as dst:
        for kwargs in ({}, {"where": {"team": "geo"}}, {"document_id": "broken"}):
            want, got = src.search(query, k=5, **kwargs), dst.search(query, k=5, **kwargs)
            assert len(want) == len(got) > 0
            assert [(h["document"], h["char_start"], h["text"]) for h in got] == [
                (h["document"], h["char_start"], h["text"]) for h in want
            ]
            assert np.allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)
        assert want[0]["document"] == "broken" and "oven" in src.search(query, k=1)[0]["text"]

    # Again: nothing copied, nothing duplicated.
    again = _summary(copy_in_process("--from", source, "--to", pg_url, "--json"))
    assert (again["copied"], again["skipped"], again["chunks"]) == (0, total, 0)
    with open_store(pg_url) as target:
        assert target.counts() == {"documents": total, "chunks": summary["chunks"]}

    # And back from PostgreSQL into a new SQLite file, with the plain text summary.
    back = f"sqlite:///{tmp_path}/back.db"
    out = copy_in_process("--from", pg_url, "--to", back)
    assert out.returncode == 0, out.stderr
    assert f"{total} documents copied ({summary['chunks']} chunks), 0 already there" in out.stdout
    _assert_same(_records(back), expected)


# -- resumable: a copy interrupted for real while a document is half written ---------------------


def _conflicting_row(pg_url: str, sha256: str, model: str):
    """An open transaction holding an uncommitted row with this key: a copier's insert of the same key
    waits for it (as it would for another writer)."""
    import psycopg

    conn = psycopg.connect(pg_url)
    conn.execute(
        "INSERT INTO documents (document_id, sha256, model, dim, pages, pages_without_text, chunks, no_text,"
        " page_errors, metadata) VALUES ('x', %s, %s, 384, 1, 0, 0, true, '[]', '{}')",
        (sha256, model),
    )
    return conn


def _copier_waiting(admin, what: str) -> int | None:
    """The backend pid of the copier when it waits on a lock in a statement starting with `what`."""
    row = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'worker' AND wait_event_type = 'Lock'"
        " AND query LIKE %s",
        (what + "%",),
    ).fetchone()
    return row[0] if row else None


def _start_copy(source: str, pg_url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "store", "copy", "--from", source, "--to", pg_url, "--json"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_copy_killed_mid_document_leaves_whole_documents_and_a_rerun_finishes(
    source: str, pg_server, pg_url: str, copy_in_process
) -> None:
    """The copier stores the first document, then is SIGKILLed while the second one is half written
    (its documents row inserted, its chunks' COPY under way): the target holds the first document
    only; running the command again copies the rest, the first one skipped."""
    expected = _records(source)
    with open_store(pg_url, dim=384):
        pass  # the schema exists before the copier starts, so the test can hold rows and locks in it
    second = expected[1]
    holder = _conflicting_row(pg_url, second.sha256, second.model)
    locker = None
    proc = _start_copy(source, pg_url)
    try:
        with pg_server.admin() as admin:
            # 1. The first document is committed; the copier waits at the second one's INSERT.
            wait_for(lambda: _copier_waiting(admin, "INSERT INTO documents"), 20, 0.02, "the copier at doc 2")
            with open_store(pg_url) as target:
                assert target.document_keys() == [(expected[0].sha256, expected[0].model, 384)]
            # 2. Hold the chunks table, then let the INSERT through: the copier stops inside the COPY.
            import psycopg

            locker = psycopg.connect(pg_url)
            locker.execute("LOCK TABLE chunks IN SHARE MODE")
            holder.rollback()
            pid = wait_for(lambda: _copier_waiting(admin, "COPY chunks"), 20, 0.02, "the copier in the COPY")
            # 3. A real kill, the second document half written.
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            locker.rollback()
            wait_for(
                lambda: admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None,
                20,
                0.05,
                "the killed copier's session to end",
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        holder.close()
        if locker is not None:
            locker.close()
    assert proc.returncode == -signal.SIGKILL
    with open_store(pg_url) as target:  # the half-written document was rolled back
        assert target.counts() == {"documents": 1, "chunks": len(expected[0].chunks)}

    summary = _summary(copy_in_process("--from", source, "--to", pg_url, "--json"))
    assert (summary["copied"], summary["skipped"]) == (len(expected) - 1, 1)
    _assert_same(_records(pg_url), expected)


def test_target_going_away_mid_copy_fails_readably_and_a_rerun_finishes(
    source: str, pg_server, pg_url: str, copy_in_process
) -> None:
    """The target database drops the copier's connection (what a restart or failover does): exit 1,
    a message saying what happened and to run again, no traceback, no password; the re-run finishes."""
    expected = _records(source)
    with open_store(pg_url, dim=384):
        pass
    holder = _conflicting_row(pg_url, expected[1].sha256, expected[1].model)
    proc = _start_copy(source, pg_url)
    try:
        with pg_server.admin() as admin:
            pid = wait_for(lambda: _copier_waiting(admin, "INSERT INTO documents"), 20, 0.02, "the copier at doc 2")
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        holder.rollback()
        holder.close()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "S3cret" not in out + err
    assert "StoreUnavailableError" in err and "after 1 copied, 0 skipped of 4" in err and "again" in err
    failed = json.loads(out)
    assert failed["status"] == "failed" and failed["copied"] == 1 and "StoreUnavailableError" in failed["error"]

    summary = _summary(copy_in_process("--from", source, "--to", pg_url, "--json"))
    assert (summary["copied"], summary["skipped"]) == (len(expected) - 1, 1)
    _assert_same(_records(pg_url), expected)


# -- refused ------------------------------------------------------------------------------------


def test_a_document_the_target_cannot_hold_is_refused_and_the_rest_copied(pg_url: str, tmp_path: Path) -> None:
    """A SQLite store holding `\\u0000` in one document's metadata and a NUL in another's chunk text
    (stored by a version without the shared check; SQLite takes both, PostgreSQL neither): each is
    refused with its reason, every other document is copied, in the same run, and a second run
    copies nothing more and refuses the same two again. Before, the copy stopped for good at the
    first one: the documents after it were never copied."""
    from tests.test_store import _add
    from tests.test_store_pg import _unit

    url = f"sqlite:///{tmp_path}/old.db"
    rng = np.random.default_rng(9)
    with open_store(url) as store:
        for sha in ("d1", "d2-nul-metadata", "d3", "d4-nul-text", "d5"):
            _add(store, sha, _unit(rng, 2), caller_metadata={"team": "a"})
        store.conn.execute("UPDATE documents SET metadata = ? WHERE sha256 = 'd2-nul-metadata'", ['{"k": "a\\u0000b"}'])
        store.conn.execute(
            "UPDATE chunks SET text = ? WHERE document = (SELECT id FROM documents WHERE sha256 = ?)",
            ["bad\x00text", "d4-nul-text"],
        )
    out = _cli("--from", url, "--to", pg_url, "--json")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "incomplete"
    assert (summary["total"], summary["copied"], summary["skipped"], summary["refused"]) == (5, 3, 0, 2)
    refused = {r["document_id"]: r["reason"] for r in summary["refused_documents"]}
    assert refused == {
        "d2-nul-metadata": "metadata['k'] holds a NUL character (U+0000), which PostgreSQL cannot store",
        "d4-nul-text": "chunk 0 text holds a NUL character (U+0000), which PostgreSQL cannot store",
    }
    assert "document 'd2-nul-metadata'" in out.stderr and "not copied: metadata['k'] holds a NUL" in out.stderr
    assert "5/5 documents (3 copied, 0 skipped, 2 refused)" in out.stderr
    with open_store(pg_url) as target:
        assert sorted(sha for sha, _, _ in target.document_keys()) == ["d1", "d3", "d5"]
        assert target.counts() == {"documents": 3, "chunks": 6}

    again = _cli("--from", url, "--to", pg_url)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "0 documents copied (0 chunks), 3 already there, 5 in the source" in again.stdout
    assert "2 refused" in again.stdout and again.stderr.count("not copied:") == 2


def test_dimension_mismatch_is_refused_before_any_write(source: str, pg_url: str, copy_in_process) -> None:
    with open_store(pg_url, dim=8):
        pass  # a store made for another model
    out = copy_in_process("--from", source, "--to", pg_url)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "vectors of 8 dimensions" in out.stderr and "(384 dimensions)" in out.stderr, out.stderr
    assert "S3cret" not in out.stderr + out.stdout
    with open_store(pg_url) as target:
        assert target.counts() == {"documents": 0, "chunks": 0}


def test_bad_urls_exit_readably_without_secrets(source: str, pg_server, tmp_path: Path, copy_in_process) -> None:
    outs = []

    def cli(*args: str) -> subprocess.CompletedProcess:
        outs.append(copy_in_process(*args))
        return outs[-1]

    missing = tmp_path / "nothing-here.db"
    out = cli("--from", f"sqlite:///{missing}", "--to", f"sqlite:///{tmp_path}/t.db")
    assert out.returncode == 1 and f"no SQLite store at {missing}" in out.stderr
    assert not missing.exists()  # never created empty

    (tmp_path / "junk.db").write_text("not a database")
    out = cli("--from", f"sqlite:///{tmp_path}/junk.db", "--to", f"sqlite:///{tmp_path}/t.db")
    assert out.returncode == 1 and "StoreConfigError" in out.stderr and "not a SQLite database" in out.stderr

    out = cli("--from", "mysql://u:pw-S3cret@host/db", "--to", f"sqlite:///{tmp_path}/t.db")
    assert out.returncode == 2 and "--from" in out.stderr and "must be sqlite" in out.stderr

    unreachable = pg_server.url().replace(f":{pg_server.port}/", ":1/")  # nothing listens on port 1
    out = cli("--from", source, "--to", unreachable)
    assert out.returncode == 1 and "unreachable" in out.stderr

    out = cli("--from", source)
    assert out.returncode == 2 and "--to" in out.stderr
    for out in outs:
        assert "Traceback" not in out.stderr and "S3cret" not in out.stdout + out.stderr
