"""`store copy` benchmark: SQLite to PostgreSQL against the alternative, ingesting again (re-embedding).

Run: .venv/bin/python bench/bench_store_copy.py [--docs 100] [--pages 8] [--sample 128]

A SQLite store of --docs documents, each the real chunks (the model's tokenizer, CHUNK_TOKENS 256)
of --pages generated pages, with random unit vectors. Timed, in this process: the copy into a new
database of a private PostgreSQL (tests/pgserver.py, fsync off), the same copy again (all skipped),
and the copy back into a new SQLite file. The alternative: embedding those chunks again, measured
on --sample of them with the real model (fp32, batches of 128 as a job does) and scaled.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pdfs  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402
from worker.chunking import Chunker, load_tokenizer  # noqa: E402
from worker.store import open_store  # noqa: E402
from worker.store.copy import copy_store  # noqa: E402

MODEL_DIR = ROOT / "var" / "model"


def fill(url: str, docs: int, pages: int) -> tuple[int, list[str]]:
    chunker = Chunker(load_tokenizer(MODEL_DIR), 256, 32)
    chunks = chunker.chunk_pages([pdfs.long_page(f"page {p}", 60) for p in range(pages)])
    rng = np.random.default_rng(0)
    with open_store(url) as store:
        for d in range(docs):
            v = rng.standard_normal((len(chunks), 384)).astype(np.float32)
            store.add_document(
                document_id=f"doc-{d}",
                sha256=f"{d:064x}",
                model="all-MiniLM-L6-v2",
                name=f"doc-{d}.pdf",
                meta={"title": f"Document {d}"},
                pages=pages,
                pages_without_text=0,
                page_errors=[],
                chunks=chunks,
                vectors=v / np.linalg.norm(v, axis=1, keepdims=True),
                caller_metadata={"team": "bench"},
            )
    return docs * len(chunks), [c.text for c in chunks]


def timed(from_url: str, to_url: str) -> tuple[float, dict]:
    t = time.perf_counter()
    report = copy_store(from_url, to_url, 30.0)
    return time.perf_counter() - t, report.as_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--sample", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = f"sqlite:///{workdir}/source.db"
        total_chunks, texts = fill(source, args.docs, args.pages)
        print(f"source: {args.docs} documents, {total_chunks} chunks ({len(texts)} a document), 384 dimensions")
        (workdir / "pg").mkdir()
        server = PgServer(workdir / "pg").start()
        try:
            target = server.new_database()
            s, r = timed(source, target)
            print(f"sqlite -> postgresql: {s:.2f}s, {total_chunks / s:.0f} chunks/s  {r}")
            s_again, r = timed(source, target)
            print(f"again (all skipped):  {s_again:.2f}s  {r}")
            s_back, r = timed(target, f"sqlite:///{workdir}/back.db")
            print(f"postgresql -> sqlite: {s_back:.2f}s, {total_chunks / s_back:.0f} chunks/s  {r}")
        finally:
            server.stop()

    from worker.embedding import Embedder

    embedder = Embedder(MODEL_DIR, "fp32", threads=2)  # both cores, as EMBED_THREADS would
    embedder.embed(texts[:8])  # warm up
    sample = (texts * (args.sample // len(texts) + 1))[: args.sample]
    t = time.perf_counter()
    for i in range(0, len(sample), 128):
        embedder.embed(sample[i : i + 128])
    per_chunk = (time.perf_counter() - t) / len(sample)
    embed_all = per_chunk * total_chunks
    print(
        f"embedding again instead: {1000 * per_chunk:.1f} ms a chunk ({len(sample)} measured),"
        f" {embed_all:.0f}s for {total_chunks} chunks: the copy to PostgreSQL takes {100 * s / embed_all:.1f}%"
        f" of that ({embed_all / s:.0f}x faster)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
