"""Plain text and Markdown through a real worker, the `search` job, and identifiers in a real PDF found at
rank 1 by keyword and hybrid search on both stores."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pdfs
from tests.conftest import MODEL_DIR, ROOT, queue, wait_for
from worker.errors import error_type

DONE = ("finished", "failed", "stopped", "canceled")
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model.onnx").is_file(), reason="needs the model (make model)")

NOTES = """# Release notes

The scheduler now backs off when the broker answers with ERR_429: set `--max-retries` to bound it.

## Storage

Sourdough bread wants a hot oven, about 250 degrees, and a long cold proof overnight.
"""


def _finish(job, timeout: float = 120.0):
    wait_for(lambda: job.get_status(refresh=True) in DONE, timeout, 0.1, f"job {job.id} to end")
    result = job.latest_result()
    return job.get_status(), job.return_value(), error_type(result.exc_string) if result else None


def test_ingest_text_through_a_worker_good_and_bad(start_worker, redis_conn, tmp_path: Path) -> None:
    worker = start_worker(extra_env={"MAX_PDF_BYTES": "20000", "MAX_INLINE_BYTES": "20000"})
    (tmp_path / "notes.md").write_text(NOTES, encoding="utf-8")
    files = {
        "latin1.txt": "café crème".encode("latin-1"),
        "binary.txt": bytes(range(256)) * 4,
        "utf16.txt": "hello".encode("utf-16"),
        "controls.txt": b"a\x01b\x02c\x03" * 50,
        "empty.txt": b"",
        "big.txt": b"word " * 5000,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    q = queue(redis_conn)
    good = q.enqueue("worker.jobs.ingest_text", str(tmp_path / "notes.md"), document_id="notes", metadata={"k": "v"})
    inline = q.enqueue("worker.jobs.ingest_text", {"data_b64": base64.b64encode(NOTES.encode()).decode()})
    bad = {name: q.enqueue("worker.jobs.ingest_text", str(tmp_path / name)) for name in files}
    outside = q.enqueue("worker.jobs.ingest_text", "/etc/hostname")
    status, summary, _ = _finish(good)
    assert status == "finished", good.latest_result().exc_string
    assert summary["document_id"] == "notes" and summary["name"] == "notes.md" and summary["pages"] == 0
    assert summary["chunks"] >= 1 and summary["already_stored"] is False
    status, again, _ = _finish(inline)
    assert status == "finished" and again["already_stored"] is True and again["document_id"] == "notes"
    expected = {
        "latin1.txt": "NotTextError",
        "binary.txt": "NotTextError",
        "utf16.txt": "NotTextError",
        "controls.txt": "NotTextError",
        "empty.txt": "EmptyInputError",
        "big.txt": "InputTooLargeError",
    }
    for name, job in bad.items():
        assert _finish(job)[::2] == ("failed", expected[name]), (name, job.latest_result().exc_string)
    assert _finish(outside)[::2] == ("failed", "PathNotAllowedError")

    job = queue(redis_conn, "high").enqueue("worker.jobs.search", "ERR_429 --max-retries", k=3)
    status, result, _ = _finish(job)
    assert status == "finished", job.latest_result().exc_string
    assert result["mode"] == "hybrid" and result["hits"][0]["document"] == "notes"
    top = result["hits"][0]
    assert top["page_start"] is None and top["pages"] is None and "**ERR_429**" in top["snippet"]
    assert top["keyword_rank"] == 1 and top["dense_rank"] is not None
    bad_search = queue(redis_conn, "high").enqueue("worker.jobs.search", "x", k=0)
    assert _finish(bad_search)[::2] == ("failed", "InvalidArgumentsError")
    assert worker.proc.poll() is None


def _cli(tmp_path: Path, store_url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, STORE_URL=store_url, EMBED_MODEL_DIR=str(MODEL_DIR), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_enqueue_sends_markdown_to_ingest_text_and_search_prints_it(start_worker, redis_url, tmp_path) -> None:
    start_worker()
    (tmp_path / "notes.md").write_text(NOTES, encoding="utf-8")
    store_url = f"sqlite:///{tmp_path}/store.db"
    env_args = ("enqueue", str(tmp_path / "notes.md"), "--wait", "--json", "--timeout", "120")
    out = subprocess.run(
        [sys.executable, "-m", "worker", *env_args],
        env=dict(os.environ, REDIS_URL=redis_url, INPUT_ROOTS=str(tmp_path), PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["status"] == "finished" and summary["result"]["chunks"] >= 1, summary
    shown = _cli(tmp_path, store_url, "search", "oven temperature for bread", "-k", "1")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(" 1. ") and "notes.md" in shown.stdout and "dense #1" in shown.stdout
    assert "**oven**" in shown.stdout  # not a terminal: marks, not escape codes
    for mode in ("dense", "keyword", "hybrid"):
        out = _cli(tmp_path, store_url, "search", "ERR_429", "--mode", mode, "--json", "-k", "2")
        hits = [json.loads(line) for line in out.stdout.splitlines()]
        assert hits and hits[0]["name"] == "notes.md", (mode, out.stderr)
    assert _cli(tmp_path, store_url, "search", "x", "--mode", "fuzzy").returncode == 2


IDENTIFIERS = ["snake_case", "--max-retries", "v2.3.1", "PgStore", "ERR_429"]


def _manual() -> bytes:
    """A PDF manual: filler pages, and each identifier on a page of its own among ordinary prose."""
    pages = []
    for i, ident in enumerate(IDENTIFIERS):  # the identifier i on page 2i + 2
        pages.append(pdfs.long_page(("configuration", "deployment", "retries", "storage", "queues")[i], 40))
        pages.append(
            f"Reference {i}\nThe option {ident} is described here. It controls how the worker\n"
            "behaves when the queue is busy and the store is slow to answer.\n" + pdfs.long_page(f"topic {i}", 10)
        )
    return pdfs.make_pdf(pages)


def test_identifiers_in_a_pdf_are_found_on_their_page_at_rank_1(start_worker, redis_conn, store_url, tmp_path) -> None:
    start_worker(extra_env={"STORE_URL": store_url})
    (tmp_path / "manual.pdf").write_bytes(_manual())
    job = queue(redis_conn).enqueue("worker.jobs.ingest_pdf", str(tmp_path / "manual.pdf"))
    status, summary, _ = _finish(job)
    assert status == "finished", job.latest_result().exc_string
    high = queue(redis_conn, "high")
    searches = {
        (ident, mode): high.enqueue("worker.jobs.search", ident, k=3, mode=mode)
        for ident in IDENTIFIERS
        for mode in ("keyword", "hybrid")
    }
    for (ident, mode), job in searches.items():
        status, result, _ = _finish(job)
        assert status == "finished", job.latest_result().exc_string
        top = result["hits"][0]
        assert top["page_start"] == 2 * IDENTIFIERS.index(ident) + 2, (ident, mode, top)
        assert top["keyword_rank"] == 1 and ident.strip("-") in top["snippet"].replace("**", ""), (ident, mode)
