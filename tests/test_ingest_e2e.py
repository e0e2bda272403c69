"""End to end through Redis and a real `python -m worker run`: ingest, search, idempotency, bad input.

Every bad input must end as a failed job carrying the right error type, not be retried, and the
worker must take the next good job as if nothing happened.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pdfs
from tests.conftest import MODEL_DIR, ROOT, queue, wait_for
from worker.errors import error_type

DONE = ("finished", "failed", "stopped", "canceled")


def _status(job) -> str:
    status = job.get_status(refresh=True)
    return getattr(status, "value", status)


def _finish(job, timeout: float = 60.0) -> str:
    return wait_for(lambda: (s := _status(job)) in DONE and s, timeout, 0.1, f"job {job.id} to end")


def _error(job) -> str | None:
    result = job.latest_result()
    return error_type(result.exc_string) if result is not None else None


def _start(start_worker, **env):
    """A worker; waits for /readyz only when the model can be there (it needs model.onnx)."""
    worker = start_worker(extra_env={k: str(v) for k, v in env.items()}, ready=False)
    if (MODEL_DIR / "model.onnx").is_file():
        worker.wait_ready(60)
    else:
        wait_for(lambda: _alive_and_live(worker), 20, 0.1, "worker /healthz")
    return worker


def _alive_and_live(worker) -> bool:
    assert worker.proc.poll() is None, worker.log()
    try:
        return worker.get("/healthz")[0] == 200
    except OSError:
        return False


@pytest.fixture()
def bad_inputs(tmp_path: Path, tmp_path_factory) -> list[tuple[object, dict, str]]:
    """(source, kwargs, expected error type) for every kind of bad input."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.pdf").write_bytes(pdfs.sample_pdf())
    (tmp_path / "escape.pdf").symlink_to(outside / "secret.pdf")
    files = {
        "notes.pdf": b"Dear team,\nthis is a text file named .pdf\n",
        "empty.pdf": b"",
        "truncated.pdf": pdfs.sample_pdf()[:1500],
        "locked.pdf": pdfs.encrypt(pdfs.sample_pdf(), user_password="s3cret"),
        "bomb.pdf": pdfs.flate_bomb(100),
        "many-pages.pdf": pdfs.make_pdf(["page"] * 31),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    p = lambda name: str(tmp_path / name)  # noqa: E731
    return [
        (p("notes.pdf"), {}, "NotAPdfError"),
        (p("empty.pdf"), {}, "EmptyInputError"),
        (p("truncated.pdf"), {}, "TruncatedPdfError"),
        (p("locked.pdf"), {}, "EncryptedPdfError"),
        ({"path": p("locked.pdf")}, {"password": "wrong"}, "EncryptedPdfError"),
        (p("bomb.pdf"), {}, "DecompressionBombError"),
        (p("many-pages.pdf"), {}, "InputTooLargeError"),
        (str(outside / "secret.pdf"), {}, "PathNotAllowedError"),
        (p("escape.pdf"), {}, "PathNotAllowedError"),
        (p("missing.pdf"), {}, "InputNotFoundError"),
        (
            {"data_b64": base64.b64encode(b"%PDF-" + b"x" * 5000).decode(), "filename": "big.pdf"},
            {},
            "InputTooLargeError",
        ),
        ({"url": "http://example.com/a.pdf"}, {}, "InvalidArgumentsError"),
    ]


LIMITS = {"MAX_PAGES": 30, "MAX_INLINE_BYTES": 4000}


def _bad_then_good(redis_conn, tmp_path: Path, func: str, bad_inputs, check_good) -> None:
    (tmp_path / "good.pdf").write_bytes(pdfs.sample_pdf())
    q = queue(redis_conn)
    pairs = []
    for source, kwargs, expected in bad_inputs:
        bad = q.enqueue(func, source, **kwargs)
        good = q.enqueue(func, str(tmp_path / "good.pdf"))
        pairs.append((bad, good, expected))
    for bad, good, expected in pairs:
        assert _finish(bad) == "failed", expected
        assert _error(bad) == expected, bad.latest_result().exc_string
        assert _finish(good) == "finished", good.latest_result().exc_string
        check_good(good.return_value())
    for bad, _, _ in pairs:
        assert _status(bad) == "failed"  # final: not scheduled for a retry
        assert not q.scheduled_job_registry.get_job_ids()


def test_extract_text_bad_inputs_fail_typed_and_next_job_succeeds(
    start_worker, redis_conn, tmp_path, bad_inputs
) -> None:
    worker = _start(start_worker, **LIMITS)

    def check(result: dict) -> None:
        assert len(result["pages"]) == 5 and "sourdough" in result["pages"][1].lower()

    _bad_then_good(redis_conn, tmp_path, "worker.jobs.extract_text", bad_inputs, check)
    assert worker.proc.poll() is None and worker.get("/healthz")[0] == 200


def test_extract_text_result_and_progress(start_worker, redis_conn, tmp_path) -> None:
    _start(start_worker)
    data = pdfs.encrypt(pdfs.sample_pdf(), user_password="pw")
    q = queue(redis_conn)
    inline = {"data_b64": base64.b64encode(data).decode(), "filename": "x.pdf"}
    job = q.enqueue("worker.jobs.extract_text", inline, password="pw")
    assert _finish(job) == "finished", job.latest_result().exc_string
    result = job.return_value()
    assert result["name"] == "x.pdf"
    assert result["metadata"]["title"] == "Sample Δ document"
    assert result["pages_without_text"] == 1
    assert "富士山" in result["pages"][4]
    meta = job.get_meta(refresh=True)
    assert meta["progress"] == {"stage": "extract", "done": 5, "total": 5}
    assert meta["counters"] == {"pages": 5, "pages_without_text": 1}


def _run_search(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m worker search ARGS...` against the test's store."""
    env = dict(
        os.environ, STORE_URL=f"sqlite:///{tmp_path}/store.db", EMBED_MODEL_DIR=str(MODEL_DIR), PYTHONPATH=str(ROOT)
    )
    out = subprocess.run(
        [sys.executable, "-m", "worker", "search", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out


def _search(tmp_path: Path, query: str, k: int = 3) -> list[dict]:
    out = _run_search(tmp_path, query, "-k", str(k), "--json")
    return [json.loads(line) for line in out.stdout.splitlines()]


def _store_counts(tmp_path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(tmp_path / "store.db")
    try:
        return (
            conn.execute("SELECT count(*) FROM documents").fetchone()[0],
            conn.execute("SELECT count(*) FROM chunks").fetchone()[0],
        )
    finally:
        conn.close()


def test_ingest_then_search_finds_the_page_and_ingest_twice_stores_once(start_worker, redis_conn, tmp_path) -> None:
    _start(start_worker)
    path = tmp_path / "sample.pdf"
    data = pdfs.make_pdf(
        [pdfs.VOLCANO, pdfs.BREAD, None, pdfs.TOWER, pdfs.GREEK_JAPANESE, pdfs.long_page("filler")], title="Sample"
    )
    path.write_bytes(data)
    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.ingest_pdf", str(path), document_id="doc-1", metadata={"team": "x"})
    assert _finish(job, 120) == "finished", job.latest_result().exc_string
    summary = job.return_value()
    assert summary["document_id"] == "doc-1"
    assert summary["pages"] == 6 and summary["pages_without_text"] == 1
    assert summary["chunks"] >= 5 and summary["already_stored"] is False
    assert set(summary["timings"]) == {"extract", "chunk", "embed", "store", "total"}
    meta = job.get_meta(refresh=True)
    assert meta["progress"] == {"stage": "store", "done": 1, "total": 1}
    assert meta["counters"]["pages"] == 6 and meta["counters"]["chunks"] == summary["chunks"]
    assert _store_counts(tmp_path) == (1, summary["chunks"])

    hits = _search(tmp_path, "How hot should the oven be to bake a sourdough loaf?")
    assert hits[0]["page_start"] == hits[0]["page_end"] == 2, hits
    assert hits[0]["document"] == "doc-1" and "250 degrees" in hits[0]["text"]
    assert hits[0]["score"] > hits[1]["score"]
    hits = _search(tmp_path, "Who designed the iron tower built for the 1889 World's Fair?", k=1)
    assert hits[0]["page_start"] == 4, hits

    # The same bytes again, by path and inline: stored once.
    inline = {"data_b64": base64.b64encode(data).decode(), "filename": "c.pdf"}
    again = q.enqueue("worker.jobs.ingest_pdf", inline)
    assert _finish(again, 120) == "finished", again.latest_result().exc_string
    result = again.return_value()
    assert result["already_stored"] is True and result["document_id"] == "doc-1"
    assert result["chunks"] == summary["chunks"] and result["sha256"] == summary["sha256"]
    assert result["scanned_pages"] == summary["scanned_pages"] == [] and "note" not in result
    assert _store_counts(tmp_path) == (1, summary["chunks"])


def test_ingest_scan_is_stored_and_its_scanned_pages_named(start_worker, redis_conn, redis_url, tmp_path) -> None:
    """Pages that are only an image (a scanner without OCR) are named, with a note, in the result
    and in what `enqueue --wait` prints; a page of drawings only is without text, not a scan."""
    _start(start_worker)
    (tmp_path / "scan.pdf").write_bytes(pdfs.make_pdf([pdfs.SCANNED, pdfs.SCANNED, pdfs.SCANNED]))
    job = queue(redis_conn).enqueue("worker.jobs.ingest_pdf", str(tmp_path / "scan.pdf"))
    assert _finish(job, 120) == "finished", job.latest_result().exc_string
    summary = job.return_value()
    assert (summary["pages"], summary["chunks"], summary["pages_without_text"]) == (3, 0, 3)
    assert summary["scanned_pages"] == [1, 2, 3]
    assert summary["note"].startswith("pp. 1-3 are scanned images without a text layer: OCR them")
    assert _store_counts(tmp_path) == (1, 0)

    mixed = tmp_path / "mixed.pdf"
    mixed.write_bytes(pdfs.make_pdf([pdfs.VOLCANO, pdfs.SCANNED, None, pdfs.SCANNED]))
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "worker", "enqueue", str(mixed), "--wait", "--timeout", "120"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr
    says = "4 pages, 1 chunk, 0 page errors, 3 without text, scanned, need OCR: pp. 2, 4"
    assert re.fullmatch(rf"{re.escape(str(mixed))}: {says}, \d+\.\d s\n", out.stdout), out.stdout
    assert _store_counts(tmp_path) == (2, 1)


def test_ingest_bad_inputs_fail_typed_and_next_job_succeeds(start_worker, redis_conn, tmp_path, bad_inputs) -> None:
    worker = _start(start_worker, **LIMITS)

    def check(result: dict) -> None:
        assert result["pages"] == 5 and result["chunks"] > 0

    _bad_then_good(redis_conn, tmp_path, "worker.jobs.ingest_pdf", bad_inputs, check)
    assert _store_counts(tmp_path)[0] == 1
    assert worker.proc.poll() is None and worker.get("/healthz")[0] == 200


def test_enqueue_wait_json(start_worker, redis_url, tmp_path) -> None:
    _start(start_worker)
    (tmp_path / "a.pdf").write_bytes(pdfs.sample_pdf())
    (tmp_path / "b.pdf").write_bytes(b"not a pdf")
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "worker",
        "enqueue",
        str(tmp_path / "a.pdf"),
        str(tmp_path / "b.pdf"),
        "--wait",
        "--json",
        "--timeout",
        "120",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    lines = {Path(o["file"]).name: o for o in map(json.loads, out.stdout.splitlines())}
    assert out.returncode == 1  # one failed
    assert lines["a.pdf"]["status"] == "finished" and lines["a.pdf"]["result"]["pages"] == 5
    assert lines["b.pdf"]["status"] == "failed" and lines["b.pdf"]["error_type"] == "NotAPdfError"


def test_locked_store_is_transient_and_retried(start_worker, redis_conn, tmp_path) -> None:
    from worker.store import Store

    worker = _start(start_worker, STORE_BUSY_TIMEOUT=0.3)
    with Store.open(f"sqlite:///{tmp_path}/store.db"):
        pass
    (tmp_path / "a.pdf").write_bytes(pdfs.sample_pdf())
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        q = queue(redis_conn)
        job = q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "a.pdf"))
        wait_for(lambda: job.id in q.scheduled_job_registry.get_job_ids(), 120, 0.1, "a retry scheduled")
        job.refresh()
        assert job.retries_left is not None and job.retries_left >= 1  # RQ keeps no Result for a retried try
        assert "StoreBusyError" in worker.log()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _finish(job, 60) == "finished", job.latest_result().exc_string
    assert job.return_value()["already_stored"] is False
    assert _store_counts(tmp_path)[0] == 1


def test_enqueue_wait_shows_progress_and_search_prints_pages(start_worker, redis_url, tmp_path) -> None:
    _start(start_worker)
    path = tmp_path / "long.pdf"
    path.write_bytes(pdfs.make_pdf([pdfs.long_page(f"part{i}", 60) for i in range(6)] + [pdfs.BREAD]))
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "worker", "enqueue", str(path), "--wait", "--timeout", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stderr
    # not a terminal: a line per change of progress on stderr, no cursor moves; a summary on stdout
    stages = re.findall(r": started (extract|chunk|embed|store|read)(?: (\d+)/(\d+))?", out.stderr)
    assert any(stage == "embed" and total for stage, _, total in stages), out.stderr
    assert "\x1b" not in out.stdout + out.stderr
    assert re.fullmatch(rf"{re.escape(str(path))}: 7 pages, \d+ chunks, 0 page errors, \d+\.\d s\n", out.stdout)

    out = _run_search(tmp_path, "sourdough oven temperature", "-k", "1")
    assert "long.pdf  p. 7" in out.stdout and "250 degrees" in out.stdout


def _with_bogus_last_page(texts: list[str]) -> bytes:
    """A PDF whose last page cannot be loaded: that page fails alone."""
    return pdfs.missing_last_page(pdfs.make_pdf(texts))


def test_job_timeout_during_extraction_fails_the_job_and_stores_nothing(start_worker, redis_conn, tmp_path) -> None:
    _start(start_worker)
    # Six slow pages (one stream of twice a page would be a decompression bomb): on a fast CPU
    # two once finished inside the 2 s timeout (pdfs.slow_page gives the rate per operation).
    slow = pdfs.slow_page()
    (tmp_path / "slow.pdf").write_bytes(pdfs.make_pdf(["page one", *[slow] * 6, "page three"]))
    job = queue(redis_conn).enqueue("worker.jobs.ingest_pdf", str(tmp_path / "slow.pdf"), job_timeout=2)
    assert _finish(job, 120) == "failed"
    assert _error(job) == "JobTimeoutException", job.latest_result().exc_string
    assert not (tmp_path / "store.db").exists() or _store_counts(tmp_path) == (0, 0)


def test_already_stored_answer_names_the_scanned_pages_as_the_first(start_worker, redis_conn, tmp_path) -> None:
    """The same scan sent again (by path, then inline): the answer is the stored document's, and
    names its image-only pages with the OCR note as the first answer did."""
    _start(start_worker)
    data = pdfs.make_pdf([pdfs.VOLCANO, pdfs.SCANNED, None, pdfs.SCANNED])
    (tmp_path / "mixed.pdf").write_bytes(data)
    q = queue(redis_conn)
    inline = {"data_b64": base64.b64encode(data).decode(), "filename": "mixed.pdf"}
    answers = []
    for source in (str(tmp_path / "mixed.pdf"), str(tmp_path / "mixed.pdf"), inline):
        job = q.enqueue("worker.jobs.ingest_pdf", source)
        assert _finish(job, 120) == "finished", job.latest_result().exc_string
        answers.append(job.return_value())
    first = answers[0]
    assert first["already_stored"] is False and first["scanned_pages"] == [2, 4]
    assert first["note"] == (
        "pp. 2, 4 are scanned images without a text layer: OCR them to make them searchable;"
        " the document is stored with the text of its other pages"
    )
    for again in answers[1:]:
        assert again["already_stored"] is True and again["pages_without_text"] == 3
        assert (again["scanned_pages"], again["note"]) == (first["scanned_pages"], first["note"])
    assert _store_counts(tmp_path) == (1, 1)


def test_already_stored_answer_carries_the_stored_page_errors(start_worker, redis_conn, tmp_path) -> None:
    _start(start_worker)
    (tmp_path / "broken.pdf").write_bytes(_with_bogus_last_page([pdfs.VOLCANO, pdfs.BREAD, "third page"]))
    q = queue(redis_conn)
    first = q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "broken.pdf"))
    assert _finish(first, 120) == "finished", first.latest_result().exc_string
    expected = [{"page": 3, "error": "PdfiumError: Failed to load page."}]
    assert first.return_value()["page_errors"] == expected
    again = q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "broken.pdf"), job_timeout=600)
    assert _finish(again, 120) == "finished", again.latest_result().exc_string
    result = again.return_value()
    assert result["already_stored"] is True and result["page_errors"] == expected


def test_text_bomb_fails_typed_stores_nothing_and_horses_have_a_memory_limit(start_worker, redis_conn, tmp_path):
    from worker.settings import default_horse_memory_mb

    worker = _start(start_worker, MAX_DOCUMENT_CHARS=1_000_000)
    (tmp_path / "bomb.pdf").write_bytes(pdfs.text_bomb())  # 315 KB, 51 million characters
    (tmp_path / "good.pdf").write_bytes(pdfs.sample_pdf())
    q = queue(redis_conn)
    limit = q.enqueue("tests.jobs_for_tests.address_space_limit")
    bomb = q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "bomb.pdf"))
    extract = q.enqueue("worker.jobs.extract_text", str(tmp_path / "bomb.pdf"))
    good = q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "good.pdf"))
    assert _finish(limit) == "finished"
    assert limit.return_value() == default_horse_memory_mb() * 1024 * 1024  # on without HORSE_MEMORY_MB
    for job in (bomb, extract):
        assert _finish(job, 120) == "failed"
        assert _error(job) == "TextTooLargeError", job.latest_result().exc_string
        assert "MAX_DOCUMENT_CHARS" in job.latest_result().exc_string
    assert _finish(good, 120) == "finished", good.latest_result().exc_string
    assert _store_counts(tmp_path) == (1, good.return_value()["chunks"])
    assert not q.scheduled_job_registry.get_job_ids()  # bad input: not retried
    assert worker.proc.poll() is None


# -- what no store can hold, a full disk, a store that is not a database -------------------------


def test_arguments_no_store_can_hold_are_refused_before_any_work(start_worker, redis_conn, tmp_path) -> None:
    """NUL, lone surrogates (JSON "\\ud800" arrives as one) and NaN in a job's arguments: a typed
    bad-input error before any work, not retried. Before, the PDF was read, chunked and embedded,
    and then the store raised UnicodeEncodeError, TypeError or a psycopg error (or SQLite stored a
    NUL that PostgreSQL refused later); a surrogate in a path was an untyped UnicodeEncodeError."""
    worker = _start(start_worker)
    missing = str(tmp_path / "missing.pdf")  # reading it would fail: the refusal comes first
    not_pdf = {"data_b64": base64.b64encode(b"plain text, not a PDF").decode()}
    refused = [  # (function, args, kwargs)
        ("worker.jobs.ingest_pdf", [missing], {"document_id": "a\x00b"}),
        ("worker.jobs.ingest_pdf", [missing], {"document_id": "a\udc80"}),
        ("worker.jobs.ingest_pdf", [missing], {"metadata": {"k": "a\x00"}}),
        ("worker.jobs.ingest_pdf", [missing], {"metadata": {"k\ud800": "a"}}),
        ("worker.jobs.ingest_pdf", [missing], {"metadata": {"k": [float("nan")]}}),
        ("worker.jobs.ingest_pdf", [missing], {"password": "pw\udc80"}),
        ("worker.jobs.ingest_pdf", [str(tmp_path / "a\ud800.pdf")], {}),
        ("worker.jobs.ingest_pdf", [{**not_pdf, "filename": "a\x00.pdf"}], {}),  # not NotAPdfError
        ("worker.jobs.ingest_pdf", [{**not_pdf, "filename": "\ud800.pdf"}], {}),
        ("worker.jobs.extract_text", [str(tmp_path / "a\ud800.pdf")], {}),
        ("worker.jobs.embed_texts", [["fine", "a\udc80"]], {}),
    ]
    q = queue(redis_conn)
    jobs = [q.enqueue(func, *args, **kwargs) for func, args, kwargs in refused]
    (tmp_path / "sample.pdf").write_bytes(pdfs.sample_pdf())
    raw_name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.pdf")  # a file name that is not UTF-8
    with open(raw_name, "wb") as f:
        f.write(pdfs.make_pdf([pdfs.TOWER]))
    good = [
        q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "sample.pdf"), metadata={"k": "\\u0000 is text"}),
        q.enqueue("worker.jobs.ingest_pdf", os.fsdecode(raw_name)),  # "caf\udce9.pdf": stored as "caf\ufffd.pdf"
        q.enqueue("worker.jobs.embed_texts", ["a\x00b"]),  # a NUL is fine where nothing is stored
    ]
    for job in jobs:
        assert _finish(job) == "failed", job.func_name
        result = job.latest_result()
        assert _error(job) == "UnstorableInputError", result.exc_string
        assert "UnicodeEncodeError" not in result.exc_string and "psycopg" not in result.exc_string
        progress = job.get_meta(refresh=True).get("progress")
        assert progress is None or progress["stage"] == "read", progress  # no extraction, no embedding
        assert _status(job) == "failed"  # final: not scheduled for a retry
    assert not q.scheduled_job_registry.get_job_ids()
    for job in good:
        assert _finish(job, 120) == "finished", job.latest_result().exc_string
    assert good[1].return_value()["name"] == "caf\ufffd.pdf"
    assert _store_counts(tmp_path)[0] == 2
    assert worker.proc.poll() is None


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return out.returncode == 0


def test_full_disk_under_the_store_is_transient_and_retried(start_worker, redis_conn, tmp_path) -> None:
    """The SQLite store on a real, full filesystem (a 1 MB tmpfs, filled): StoreDiskError, which is
    transient, so the job is retried; once space is freed it is stored, once. Before, `disk I/O error`
    or `database or disk is full` was an untyped sqlite3.OperationalError and the job failed for good."""
    from worker.store import Store

    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); test_store.py fills a database with max_page_count")
    try:
        url = f"sqlite:///{disk}/store.db"
        with Store.open(url):
            pass  # the schema, so that only the document's write runs out of room
        st = os.statvfs(disk)
        filler = disk / "filler"
        filler.write_bytes(b"\xff" * (st.f_bavail * st.f_frsize - 64 * 1024))  # 64 KB left: 32 KB go to -shm
        worker = _start(start_worker, STORE_URL=url, RETRY_INTERVALS=",".join(["1"] * 20))
        (tmp_path / "long.pdf").write_bytes(pdfs.make_pdf([pdfs.long_page(f"part{i}", 60) for i in range(6)]))
        job = queue(redis_conn).enqueue("worker.jobs.ingest_pdf", str(tmp_path / "long.pdf"))
        wait_for(lambda: "StoreDiskError: the SQLite store" in worker.log(), 120, 0.2, "the store to run out of room")
        assert _status(job) != "failed"
        filler.unlink()  # room again: the next attempt stores it
        assert _finish(job, 120) == "finished", job.latest_result().exc_string
        assert job.return_value()["already_stored"] is False
        with Store.open(url) as store:
            assert store.counts() == {"documents": 1, "chunks": job.return_value()["chunks"]}
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_store_url_naming_a_file_that_is_not_a_database(start_worker, redis_conn, tmp_path) -> None:
    """/readyz 503 saying why, and jobs fail with StoreConfigError (final) and leave the file as it
    was. Before, /readyz said 200 and every job failed with an untyped sqlite3.DatabaseError."""
    notes = tmp_path / "notes.txt"
    notes.write_text("Meeting notes, not a database.\n" * 20)
    before = notes.read_bytes()
    worker = _start(start_worker, STORE_URL=f"sqlite:///{notes}")
    status, body = worker.get("/readyz")
    assert status == 503, body
    assert f"store: STORE_URL names {notes}, which is not a SQLite database" in body["reasons"], body
    (tmp_path / "sample.pdf").write_bytes(pdfs.sample_pdf())
    job = queue(redis_conn).enqueue("worker.jobs.ingest_pdf", str(tmp_path / "sample.pdf"))
    assert _finish(job, 120) == "failed"
    assert _error(job) == "StoreConfigError", job.latest_result().exc_string
    assert "not a SQLite database" in job.latest_result().exc_string
    assert _status(job) == "failed" and not queue(redis_conn).scheduled_job_registry.get_job_ids()
    assert notes.read_bytes() == before
    assert worker.get("/healthz")[0] == 200
