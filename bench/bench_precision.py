"""Retrieval quality by embedding precision: nDCG@10 on the Cranfield collection, fp32 against int8.

Run: .venv/bin/python bench/bench_precision.py [--data DIR] [--queries N] [--threads N]

Cranfield: 1,400 aeronautics abstracts, 225 queries, graded relevance judgements. The collection
is read where it lies (never copied): `cran.all.1400`, `cran.qry`, `cranqrel` in --data. Queries
are numbered 1..225 in file order (the `.I` numbers of cran.qry are not those of cranqrel).
Grades (cranqrel.readme): 1 a complete answer ... 4 of minimum interest, -1 not relevant; the gain
is 5 - grade (4, 3, 2, 1), 0 for -1 and unjudged documents (linear gain, log2 discount).

Each document (title and abstract) is one page, cut by the worker's Chunker as ingest_pdf cuts
pages; its score for a query is its best chunk's cosine (dense retrieval, exact, numpy). The same
chunks are embedded with fp32 and int8 (the int8 graph itself, whatever the CPU; the CPU and
whether it runs int8 exactly are printed). Then, besides fp32 and int8 alone, a mixed store: the
vectors of half the documents (every other one) from int8, the rest from fp32, as hosts with
different CPUs would write under EMBED_PRECISION=auto, searched with queries of either precision.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = Path(os.environ.get("EMBED_MODEL_DIR", ROOT / "var" / "model"))
DATA = ROOT.parent / "shared" / "data" / "cranfield"
K = 10


def read_trec(path: Path, fields: str) -> list[dict[str, str]]:
    """Records of a SMART-format file (`.I n`, then `.T`/`.A`/`.B`/`.W` sections), keeping `fields`."""
    records: list[dict[str, str]] = []
    field = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        marker = re.match(r"^\.([A-Z])\b\s*(.*)$", line)
        if marker:
            field = marker.group(1)
            if field == "I":
                records.append({"id": marker.group(2).strip()})
            continue
        if field in fields and records:
            records[-1][field] = records[-1].get(field, "") + line + "\n"
    return records


def load(data: Path) -> tuple[list[str], list[str], dict[int, dict[int, int]]]:
    """(document texts by id 1..1400, query texts by number 1..225, gains[query][doc])."""
    docs = read_trec(data / "cran.all.1400", "TW")
    for i, d in enumerate(docs, 1):
        assert int(d["id"]) == i, f"document {d['id']} out of order"
    texts = [" ".join(d.get("T", "").split()) + "\n\n" + " ".join(d.get("W", "").split()) for d in docs]
    queries = [" ".join(q.get("W", "").split()) for q in read_trec(data / "cran.qry", "W")]
    gains: dict[int, dict[int, int]] = {}
    for line in (data / "cranqrel").read_text().splitlines():
        if line.strip():
            q, d, grade = (int(x) for x in line.split()[:3])
            if 1 <= grade <= 4:
                gains.setdefault(q, {})[d] = 5 - grade
    return texts, queries, gains


def ndcg(scores: np.ndarray, gains: dict[int, dict[int, int]], k: int = K) -> float:
    """Mean nDCG@k over the queries with at least one relevant document; scores [query, doc]."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for q in range(scores.shape[0]):
        judged = gains.get(q + 1)
        if not judged:
            continue
        top = np.argsort(-scores[q], kind="stable")[:k] + 1  # document ids
        dcg = sum(judged.get(int(d), 0) * w for d, w in zip(top, discount, strict=False))
        ideal = sorted(judged.values(), reverse=True)[:k]
        values.append(dcg / float(np.dot(ideal, discount[: len(ideal)])))
    return float(np.mean(values))


def doc_scores(queries: np.ndarray, chunks: np.ndarray, owner: np.ndarray, n_docs: int) -> np.ndarray:
    """[query, doc]: each document's best chunk cosine (vectors are L2-normalized)."""
    sims = queries @ chunks.T
    scores = np.full((queries.shape[0], n_docs), -np.inf, np.float32)
    np.maximum.at(scores.T, owner, sims.T)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--queries", type=int, default=225, help="the first N queries (all: 225)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from worker.chunking import Chunker, load_tokenizer
    from worker.embedding import Embedder, int8_here

    texts, queries, gains = load(args.data)
    queries = queries[: args.queries]
    chunker = Chunker(load_tokenizer(MODEL_DIR))
    chunks, owner = [], []
    for doc, text in enumerate(texts):
        for chunk in chunker.chunk_pages([text]):
            chunks.append(chunk.text)
            owner.append(doc)
    owner_ids = np.array(owner)
    print(
        f"Cranfield: {len(texts)} documents -> {len(chunks)} chunks (Chunker defaults), {len(queries)} queries,"
        f" {sum(len(v) for q, v in gains.items() if q <= len(queries))} judged relevant pairs"
    )
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for precision in ("fp32", "int8"):
        embedder = Embedder(MODEL_DIR, precision, threads=args.threads, check_cpu=False)
        started = time.perf_counter()
        chunk_vectors, tokens = embedder.embed_counted(chunks)
        elapsed = time.perf_counter() - started
        vectors[precision] = (chunk_vectors, embedder.embed(queries))
        print(f"  {precision}: {tokens} chunk tokens embedded in {elapsed:.1f}s ({tokens / elapsed:,.0f} tokens/s)")
    fp32, int8 = vectors["fp32"], vectors["int8"]
    cosine = (fp32[0] * int8[0]).sum(axis=1)
    print(f"  cosine int8 to fp32, chunks: min {cosine.min():.5f} mean {cosine.mean():.5f}")
    n = len(texts)
    half = owner_ids % 2 == 1  # documents 2, 4, 6...: their vectors from int8 in the mixed store
    mixed = np.where(half[:, None], int8[0], fp32[0])
    results = {
        "fp32 store, fp32 queries": doc_scores(fp32[1], fp32[0], owner_ids, n),
        "int8 store, int8 queries": doc_scores(int8[1], int8[0], owner_ids, n),
        "fp32 store, int8 queries": doc_scores(int8[1], fp32[0], owner_ids, n),
        "int8 store, fp32 queries": doc_scores(fp32[1], int8[0], owner_ids, n),
        "mixed store, fp32 queries": doc_scores(fp32[1], mixed, owner_ids, n),
        "mixed store, int8 queries": doc_scores(int8[1], mixed, owner_ids, n),
    }
    base = ndcg(results["fp32 store, fp32 queries"], gains)
    int8_even = np.arange(n) % 2 == 1  # index 1, 3, ... = documents 2, 4, ...: int8 in the mixed store
    print(f"nDCG@{K} (mean over queries with a judged relevant document):")
    for name, scores in results.items():
        value = ndcg(scores, gains)
        top = np.argsort(-scores, axis=1)[:, :K]
        share = int8_even[top].mean()
        print(f"  {name:<27} {value:.4f} ({value - base:+.4f} vs fp32); even documents in top {K}: {share:.1%}")
    ok, why = int8_here()
    print(f"  this CPU: int8 {'exact, auto runs it' if ok else 'not used by auto'} ({why})")


if __name__ == "__main__":
    main()
