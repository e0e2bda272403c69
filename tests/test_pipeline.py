"""The overlapped ingest pipeline (worker/pipeline.py) against the sequential path, with the real model.

Sequential means what ingest_pdf did before the pipeline: every page extracted, then
`Chunker.chunk_pages` over all of them, then `Embedder.embed` on the chunk texts.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from tests import pdfs
from tests.conftest import MODEL_DIR, queue, wait_for
from worker import pipeline
from worker.chunking import Chunker, ChunkStream
from worker.embedding import get_embedder
from worker.errors import EmbeddingError, TextTooLargeError
from worker.jobs import ingest_pdf
from worker.pdf import PageTexts, extract, open_pdf
from worker.pipeline import embed_pages
from worker.settings import Settings, get_settings, set_settings


@pytest.fixture
def settings(tmp_path):
    saved = get_settings()
    current = Settings.from_env({}).override(
        embed_model_dir=MODEL_DIR, input_roots=(tmp_path,), store_url=f"sqlite:///{tmp_path}/store.db"
    )
    set_settings(current)
    yield current
    set_settings(saved)


def _stored(tmp_path: Path) -> tuple[list[tuple], np.ndarray]:
    with sqlite3.connect(tmp_path / "store.db") as conn:
        rows = conn.execute(
            "SELECT seq, text, page_start, page_end, char_start, char_end, n_tokens, vector FROM chunks ORDER BY seq"
        ).fetchall()
    return [r[:7] for r in rows], np.array([np.frombuffer(r[7], "<f4") for r in rows])


def _document(*topics: str) -> bytes:
    pages = [pdfs.long_page(t, 30) for t in topics]
    return pdfs.make_pdf([pages[0], None, pdfs.VOLCANO, *pages[1:], pdfs.GREEK_JAPANESE, "short\n\nlast page"])


def test_pipelined_ingest_stores_the_rows_and_vectors_of_the_sequential_path(settings, tmp_path) -> None:
    data = _document("harbour", "copper", "winter", "garden")
    (tmp_path / "doc.pdf").write_bytes(data)
    summary = ingest_pdf(str(tmp_path / "doc.pdf"))
    rows, vectors = _stored(tmp_path)

    embedder = get_embedder(settings)
    chunks = Chunker(embedder.tokenizer, settings.chunk_tokens, settings.chunk_overlap).chunk_pages(extract(data).pages)
    expected = embedder.embed([c.text for c in chunks])
    assert summary["chunks"] == len(chunks) > 8  # several token batches, chunks across pages
    assert rows == [dataclasses.astuple(c) for c in chunks]
    # Bit for bit: the ids are the tokenizer's own, and a text's vector does not depend on its batch.
    assert np.array_equal(vectors, expected), f"max difference {np.abs(vectors - expected).max():.3g}"
    assert summary["pages"] == 8 and summary["pages_without_text"] == 1


def test_a_long_document_is_read_in_bounded_memory(settings, monkeypatch) -> None:
    """2,000 pages through the real pipeline: at every page, the chunker holds about one window
    of tokens and the texts of the pages that window spans, not the document read so far; and
    with a model slower than reading, reading stays at most the queue's length ahead of it."""
    monkeypatch.setattr(pipeline, "QUEUE_CHUNKS", 8)
    embedder = get_embedder(settings)
    stream = Chunker(embedder.tokenizer, 256, 32).stream()
    data = pdfs.make_pdf([f"Page {i}." if i % 10 else None for i in range(2000)])  # every tenth without text
    most = {"tokens": 0, "pages": 0, "ahead": 0}
    result = None

    def pages():
        for i, text in enumerate(PageTexts(open_pdf(data))):
            yield text
            tokens, texts = stream.retained()
            most["tokens"], most["pages"] = max(most["tokens"], tokens), max(most["pages"], texts)
            if i % 10 == 0:
                most["ahead"] = max(most["ahead"], stream.seq - embedded[0])

    embedded = [0]

    def embed_ids(batch):
        time.sleep(0.02)  # a slower model: pages are read faster than they are embedded
        out = embedder.embed_ids(batch)
        embedded[0] += len(batch)
        return out

    result = embed_pages(pages(), stream, embed_ids, embedder.dim, 2048)
    assert len(result.chunks) == stream.seq > 100 and result.chunks[-1].page_end == 2000
    assert most["tokens"] <= ChunkStream.TRIM_AT + 2 * 256, most
    assert most["pages"] <= most["tokens"] // 2, most  # a page holds 3 or 4 tokens here
    # The queue, what the model took from it, and the chunks of the page being read.
    assert 8 <= most["ahead"] <= 2 * 8 + 4, most


def test_a_page_over_the_limit_after_chunks_were_embedded_fails_typed(settings) -> None:
    embedder = get_embedder(settings)
    data = pdfs.make_pdf([pdfs.long_page("river", 20)] * 6 + ["x" * 3000])
    with pytest.raises(TextTooLargeError, match="page 7"):
        embed_pages(
            PageTexts(open_pdf(data), max_page_chars=2000, max_document_chars=10**9),
            Chunker(embedder.tokenizer, 256, 32).stream(),
            embedder.embed_ids,
            embedder.dim,
            2048,
        )


@pytest.fixture
def broken_model(tmp_path) -> Path:
    """The real model with one word ("kaboom") given an id outside its embedding table: the
    tokenizer accepts it, onnxruntime fails on it at run time."""
    out = tmp_path / "model"
    out.mkdir()
    for f in MODEL_DIR.iterdir():
        if f.name != "tokenizer.json":
            (out / f.name).symlink_to(f)
    spec = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    spec["model"]["vocab"]["kaboom"] = 40000
    (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def test_a_model_failure_mid_document_fails_the_job_typed_and_stores_nothing(settings, tmp_path, broken_model):
    set_settings(settings.override(embed_model_dir=broken_model))
    pages = [pdfs.long_page(t, 40) for t in ("river", "stone", "market")] + ["the word kaboom is here"]
    (tmp_path / "doc.pdf").write_bytes(pdfs.make_pdf(pages))
    with pytest.raises(EmbeddingError, match="the model failed on .*INVALID_ARGUMENT"):
        ingest_pdf(str(tmp_path / "doc.pdf"))
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0


def test_job_timeout_while_embedding_ends_the_job_and_stores_nothing(start_worker, redis_conn, tmp_path) -> None:
    """The horse's main thread waits on the embedding thread with a timeout, so RQ's SIGALRM
    still ends the job there; the worker then takes the next job."""
    store = tmp_path / "store.db"
    start_worker()
    (tmp_path / "long.pdf").write_bytes(pdfs.make_pdf([pdfs.long_page(f"t{i}", 120) for i in range(12)]))
    (tmp_path / "short.pdf").write_bytes(pdfs.make_pdf(["A short document about bread."]))
    q = queue(redis_conn)
    slow = q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "long.pdf"), job_timeout=2)
    fast = q.enqueue("worker.jobs.ingest_pdf", str(tmp_path / "short.pdf"))
    wait_for(lambda: fast.get_status(refresh=True) == "finished", 90, 0.1, "the next job to finish")
    assert slow.get_status(refresh=True) == "failed"
    assert "JobTimeoutException" in slow.latest_result().exc_string
    progress = slow.get_meta(refresh=True).get("progress", {})
    assert progress.get("stage") in ("extract", "embed"), progress  # it was under way
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 1  # the short one only
