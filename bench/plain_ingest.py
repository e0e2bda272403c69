"""The script a user would write instead of the worker: pypdf, fixed-size chunks, sentence-transformers.

Run by bench/bench_ingest.py with an interpreter that has torch, sentence-transformers and pypdf
(`--st-python`): python bench/plain_ingest.py MODEL_DIR OUT.json PDF... (or @LIST, one path a line)

Per PDF: the text of every page with pypdf, each page cut every CHUNK_CHARS characters (so every
chunk knows its page), `SentenceTransformer.encode` on the chunks (batch 32, normalized; it
truncates at the model's 256 word pieces), and the rows into SQLite. The model loads before the
clock starts, as in a long-running worker. Prints nothing; writes its figures to OUT.json,
including how many chunks were longer than the model's window (their ends are not embedded).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

CHUNK_CHARS = 1000


def main(argv: list[str]) -> None:
    import torch
    from pypdf import PdfReader
    from sentence_transformers import SentenceTransformer

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    model_dir, out, *paths = argv
    if len(paths) == 1 and paths[0].startswith("@"):
        paths = Path(paths[0][1:]).read_text().split("\n")
        paths = [p for p in paths if p]
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = SentenceTransformer(model_dir, device="cpu")
    model.encode(["warm up"])
    window = model.max_seq_length
    db = sqlite3.connect(Path(tempfile.mkdtemp()) / "plain.db")
    db.execute("CREATE TABLE chunks (document TEXT, page INTEGER, text TEXT, vector BLOB)")
    pages = chunks = 0
    started = time.perf_counter()
    for path in paths:
        reader = PdfReader(path)
        rows = []
        for number, page in enumerate(reader.pages, 1):
            text = page.extract_text() or ""
            rows += [(path, number, text[i : i + CHUNK_CHARS]) for i in range(0, len(text), CHUNK_CHARS)]
            pages += 1
        vectors = model.encode([r[2] for r in rows], batch_size=32, normalize_embeddings=True)
        with db:
            db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?)",
                [(*r, v.tobytes()) for r, v in zip(rows, vectors, strict=True)],
            )
        chunks += len(rows)
    seconds = time.perf_counter() - started
    texts = [t for (t,) in db.execute("SELECT text FROM chunks")]
    too_long = sum(1 for ids in model.tokenizer(texts)["input_ids"] if len(ids) > window) if texts else 0
    Path(out).write_text(
        json.dumps({"seconds": seconds, "pages": pages, "chunks": chunks, "chunks_over_window": too_long})
    )


if __name__ == "__main__":
    main(sys.argv[1:])
