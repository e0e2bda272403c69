"""Retrieval quality by embedding graph: nDCG@10 on the Cranfield collection, fp32 against the int8 graphs.

Run: .venv/bin/python bench/bench_precision.py [--data DIR] [--queries N] [--threads N]

Cranfield: 1,400 aeronautics abstracts, 225 queries, graded relevance judgements. The collection
is read where it lies (never copied): `cran.all.1400`, `cran.qry`, `cranqrel` in --data. Queries
are numbered 1..225 in file order (the `.I` numbers of cran.qry are not those of cranqrel).
Grades (cranqrel.readme): 1 a complete answer ... 4 of minimum interest, -1 not relevant; the gain
is 5 - grade (4, 3, 2, 1), 0 for -1 and unjudged documents (linear gain, log2 discount).

Each document (title and abstract) is one page, cut by the worker's Chunker as ingest_pdf cuts
pages; its score for a query is its best chunk's cosine (dense retrieval, exact, numpy). The same
chunks are embedded with each graph: fp32, int8 (8-bit weights) and int8-w7 (7-bit weights), each
graph itself whatever the CPU (the CPU and what auto runs on it are printed). Then, besides each
alone, mixed stores: the vectors of half the documents (every other one) from one graph, the rest
from another, as hosts with different CPUs write under EMBED_PRECISION=auto (fp32 with either
int8 graph; int8 with int8-w7, VNNI hosts beside AVX2-only ones), searched with queries of either.
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


GRAPHS = ("fp32", "int8", "int8-w7")  # fp32 first: the baseline


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
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # graph -> (chunk vectors, query vectors)
    for graph in GRAPHS:
        embedder = Embedder(MODEL_DIR, graph, threads=args.threads, check_cpu=False)
        started = time.perf_counter()
        chunk_vectors, tokens = embedder.embed_counted(chunks)
        elapsed = time.perf_counter() - started
        vectors[graph] = (chunk_vectors, embedder.embed(queries))
        print(f"  {graph}: {tokens} chunk tokens embedded in {elapsed:.1f}s ({tokens / elapsed:,.0f} tokens/s)")
    for graph in GRAPHS[1:]:
        cosine = (vectors["fp32"][0] * vectors[graph][0]).sum(axis=1)
        print(f"  cosine {graph} to fp32, chunks: min {cosine.min():.5f} mean {cosine.mean():.5f}")
    n = len(texts)
    half = owner_ids % 2 == 1  # documents 2, 4, 6...: their vectors from the second graph in a mixed store
    even = np.arange(n) % 2 == 1  # index 1, 3, ... = documents 2, 4, ...
    # (store's graphs: one, or two mixed document by document, as hosts of two CPU kinds write it; queries' graph)
    cases = [(("fp32",), "fp32")]
    for g in GRAPHS[1:]:
        cases += [((g,), g), (("fp32",), g), ((g,), "fp32"), (("fp32", g), "fp32"), (("fp32", g), g)]
    cases += [(("int8", "int8-w7"), "int8"), (("int8", "int8-w7"), "int8-w7")]
    print(f"nDCG@{K} (mean over queries with a judged relevant document):")
    base = None
    for store, query in cases:
        chunk_vectors = vectors[store[0]][0]
        if len(store) > 1:
            chunk_vectors = np.where(half[:, None], vectors[store[1]][0], chunk_vectors)
        scores = doc_scores(vectors[query][1], chunk_vectors, owner_ids, n)
        value = ndcg(scores, gains)
        base = value if base is None else base
        share = even[np.argsort(-scores, axis=1)[:, :K]].mean()
        name = f"{'/'.join(store)} store{' (mixed)' if len(store) > 1 else ''}, {query} queries"
        print(f"  {name:<40} {value:.4f} ({value - base:+.4f} vs fp32); even documents in top {K}: {share:.1%}")
    graph, why = int8_here()
    print(f"  this CPU: auto runs {graph or 'fp32'} ({why})")


if __name__ == "__main__":
    main()
