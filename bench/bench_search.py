"""Search benchmark: quality on Cranfield and latency at 100k chunks, dense, keyword and hybrid, both stores.

Run: .venv/bin/python bench/bench_search.py [--stores sqlite,postgresql] [--quality] [--latency]
     [--cranfield DIR] [--chunks 100000] [--queries 100] [--candidates 20,50,100]
     (neither --quality nor --latency: both)

Quality: the Cranfield collection (1,400 aerodynamics abstracts, 225 queries, graded judgments),
read where it lies (default ../shared/data/cranfield next to the repository, never copied). Each
abstract (its .W text) goes through `worker.jobs.ingest_text` in this process (inline bytes,
document id `cran-N`, the real model and chunker), into a new SQLite file and into a fresh
database on a private PostgreSQL (tests/pgserver.py). Each query goes through
`worker.search.search` in each mode, k=15 chunks for the @10 figures and k=150 for recall@100;
a document ranks where its first chunk does. `cranqrel` numbers the queries 1..225 in the order
of cran.qry (not by its .I ids); relevance codes 1 (complete answer) to 4 (minimum interest) are
relevant with gain 5 - code (4, 3, 2, 1) in nDCG; -1 is not relevant. nDCG@10 uses log2
discounts and the ideal ordering of all judged relevant documents of the query. Hybrid is also
run with other numbers of candidates a side (--candidates, through `DocumentStore.search`).

On PostgreSQL, ANALYZE runs after each load, as autovacuum would soon after.

Latency: --chunks chunks synthesised cheaply (random unit vectors, and windows of 60-200 words cut
from the Cranfield abstracts as text), written through the store API (`add_document`, 1,000
chunks a document, one transaction and on PostgreSQL one binary COPY each, as on ingest), in
fresh stores. SQLite keeps its triggers and indexes up to date as it goes. PostgreSQL would
insert each random vector into the HNSW graph one by one (31 minutes for 48,000 chunks), so
there the chunks' indexes the migrations made are dropped first and built again after the load
from their own definitions as the catalog holds them (`pg_get_indexdef`), then ANALYZE, and
`check_loaded` makes sure the store answers as after an ingest. Then --queries Cranfield queries
(embedded once, outside the timing) through `DocumentStore.search(k=10)` in each mode, the modes
interleaved query by query so that machine noise falls on all alike; p50 and p95 in ms, and
hybrid p50 / dense p50. Also with short queries (a query's first three words), as users type them.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.settings import Settings, set_settings  # noqa: E402

MODES = ("dense", "keyword", "hybrid")
DEFAULT_CRANFIELD = ROOT.parent / "shared" / "data" / "cranfield"


# -- Cranfield ------------------------------------------------------------------------------------


def _records(path: Path) -> list[dict[str, str]]:
    """The records of a SMART-format file: {"I": id, "T": ..., "W": ...} (fields as they come)."""
    records: list[dict[str, str]] = []
    field = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(r"^\.([A-Z])(?:\s+(\S+))?\s*$", line)
        if m:
            field = m.group(1)
            if field == "I":
                records.append({"I": m.group(2) or ""})
            else:
                records[-1].setdefault(field, "")
            continue
        if records and field:
            records[-1][field] = (records[-1].get(field, "") + "\n" + line).strip("\n")
    return records


def load_cranfield(directory: Path) -> tuple[dict[str, str], list[str], dict[int, dict[str, int]]]:
    """(document id -> text, queries in file order (query n is queries[n-1]), qrels[n][doc id] = code)."""
    docs = {r["I"]: " ".join(r.get("W", "").split()) for r in _records(directory / "cran.all.1400")}
    queries = [" ".join(r.get("W", "").split()) for r in _records(directory / "cran.qry")]
    qrels: dict[int, dict[str, int]] = {}
    for line in (directory / "cranqrel").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            qrels.setdefault(int(parts[0]), {})[parts[1]] = int(parts[2])
    return docs, queries, qrels


def metrics(ranked: list[str], judged: dict[str, int]) -> dict[str, float]:
    """nDCG@10, recall@10, recall@100 of a ranked list of document ids."""
    gains = {d: 5 - code for d, code in judged.items() if 1 <= code <= 4}
    if not gains:
        return {}
    dcg = sum(gains.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(gains.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return {
        "ndcg@10": dcg / idcg,
        "recall@10": len(set(ranked[:10]) & gains.keys()) / len(gains),
        "recall@100": len(set(ranked[:100]) & gains.keys()) / len(gains),
    }


def documents_of(hits: list[dict]) -> list[str]:
    """Document ids in the order of their best chunk."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h["document"].removeprefix("cran-"), None)
    return list(seen)


# -- stores ---------------------------------------------------------------------------------------


def use_store(url: str, workdir: Path) -> None:
    os.environ.update(STORE_URL=url, INPUT_ROOTS=str(workdir), EMBED_MODEL_DIR=str(ROOT / "var" / "model"))
    set_settings(Settings.from_env())


def store_urls(kinds: list[str], workdir: Path, name: str) -> dict[str, str]:
    urls = {}
    for kind in kinds:
        if kind == "sqlite":
            urls[kind] = f"sqlite:///{workdir}/{name}.db"
        else:
            urls[kind] = pg_server(workdir).new_database()
    return urls


_PG = None


def pg_server(workdir: Path):
    global _PG
    if _PG is None:
        from tests.pgserver import PgServer

        (workdir / "pg").mkdir()
        _PG = PgServer(workdir / "pg").start()
    return _PG


def analyze(url: str) -> None:
    """PostgreSQL: the planner's statistics now, as autovacuum would gather them soon after a load
    (the keyword search reads which words are common from them)."""
    if url.startswith("postgres"):
        from worker.store import open_store

        with open_store(url) as store:
            store.conn.execute("ANALYZE chunks")


def ingest_cranfield(docs: dict[str, str]) -> tuple[int, float]:
    from worker.jobs import ingest_text

    started, chunks = time.perf_counter(), 0
    for doc_id, text in docs.items():
        if not text:  # two abstracts are empty: nothing to store (ingest_text refuses empty input)
            continue
        data = base64.b64encode(text.encode()).decode()
        summary = ingest_text({"data_b64": data, "filename": f"cran-{doc_id}.txt"}, document_id=f"cran-{doc_id}")
        chunks += summary["chunks"]
    return chunks, time.perf_counter() - started


def quality(url: str, workdir: Path, cranfield: Path, candidates: list[int]) -> dict:
    from worker.embedding import get_embedder
    from worker.search import search
    from worker.settings import get_settings
    from worker.store import open_store

    use_store(url, workdir)
    docs, queries, qrels = load_cranfield(cranfield)
    chunks, seconds = ingest_cranfield(docs)
    analyze(url)
    print(f"  ingested {len(docs)} abstracts, {chunks} chunks, in {seconds:.0f}s", flush=True)
    sums: dict[str, dict[str, float]] = {}
    counted = 0
    embedder = get_embedder()
    settings = get_settings()
    with open_store(settings.store_url, dim=embedder.dim) as store:
        for n, query in enumerate(queries, 1):
            judged = qrels.get(n, {})
            if not any(1 <= c <= 4 for c in judged.values()):
                continue
            counted += 1
            runs = {}
            for mode in MODES:
                top = documents_of(search(query, 15, mode))
                deep = documents_of(search(query, 150, mode))
                runs[mode] = top[:10] + [d for d in deep if d not in top[:10]]
            vector = embedder.embed([query])[0]
            for c in candidates:  # @10 figures only (15 chunks asked for)
                hits = store.search(vector, 15, model=embedder.model_name, text=query, mode="hybrid", candidates=c)
                runs[f"hybrid, {c} a side"] = documents_of(hits)
            for name, ranked in runs.items():
                for metric, value in metrics(ranked, judged).items():
                    sums.setdefault(name, {}).setdefault(metric, 0.0)
                    sums[name][metric] += value
    table = {name: {m: round(v / counted, 3) for m, v in ms.items()} for name, ms in sums.items()}
    return {"queries": counted, "chunks": chunks, "table": table}


# -- latency --------------------------------------------------------------------------------------


def synthetic_documents(texts: list[str], n: int, dim: int, model: str, seed: int = 7) -> Iterator[dict]:
    """`add_document` arguments of n chunks of random unit vectors and windows of Cranfield words,
    1,000 chunks a document."""
    from worker.store import Chunk

    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    words = [t.split() for t in texts if len(t.split()) > 60]
    per_doc = 1000
    for d in range(0, n, per_doc):
        chunks = []
        for i in range(min(per_doc, n - d)):
            w = pick.choice(words)
            size = pick.randint(60, 200)
            start = pick.randint(0, max(0, len(w) - 60))
            text = " ".join((w * 4)[start : start + size])
            chunks.append(Chunk(i, text, i // 3 + 1, i // 3 + 1, 0, len(text), size))
        vectors = rng.normal(size=(len(chunks), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield {
            "document_id": f"synthetic-{d // per_doc}",
            "sha256": f"synthetic-{d // per_doc}",
            "model": model,
            "name": None,
            "meta": {},
            "pages": per_doc // 3 + 1,
            "pages_without_text": 0,
            "page_errors": [],
            "chunks": chunks,
            "vectors": vectors,
        }


# The chunks' indexes that are not a constraint's (the primary key and UNIQUE (document, seq) stay
# and are kept up to date by the load): the HNSW and GIN indexes, and whatever a later migration adds.
SECONDARY_INDEXES = """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
    WHERE i.indrelid = 'chunks'::regclass
    AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1"""


def synthesise(url: str, texts: list[str], n: int, dim: int, model: str) -> dict[str, float]:
    """Write the synthetic chunks; seconds taken by each step ("write", on PostgreSQL also "index")."""
    from worker.store import open_store

    documents = synthetic_documents(texts, n, dim, model)
    with open_store(url, dim=dim) as store:
        if store.kind != "postgresql":
            started = time.perf_counter()
            for doc in documents:
                store.add_document(**doc)
            return {"write": time.perf_counter() - started}
        return bulk_load(store, documents)


def bulk_load(store, documents: Iterable[dict]) -> dict[str, float]:
    """PostgreSQL: drop the chunks' secondary indexes, write every document through `add_document`
    (binary COPY; the generated tsvector column is computed row by row as on ingest), then create
    each index again from the definition the catalog held (the migrations' own DDL, options
    included; the caller runs ANALYZE). Building the HNSW graph once over all vectors is what
    pgvector advises for a bulk load: inserted one by one, 48,000 random vectors took 31 minutes."""
    conn = store.conn
    indexes = conn.execute(SECONDARY_INDEXES).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    started = time.perf_counter()
    for doc in documents:
        store.add_document(**doc)
    written = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '1GB'")  # the whole graph in memory while it is built
    for _, definition in indexes:
        conn.execute(definition)
    conn.execute("RESET maintenance_work_mem")
    rebuilt = conn.execute(SECONDARY_INDEXES).fetchall()
    if rebuilt != indexes:
        raise RuntimeError(f"indexes after the load {rebuilt} differ from the schema's {indexes}")
    return {"write": written - started, "index": time.perf_counter() - written}


def check_loaded(url: str, texts: list[str], n: int, dim: int, model: str) -> None:
    """The store answers as after an ingest: every chunk and document counted, every generated
    tsvector filled, every index valid, and a known chunk (the middle one of the first document,
    made again) found first by its own vector and text (dense, hybrid), and among the 50 chunks a
    hybrid search takes from the keyword side for its text (other windows of the same abstract
    may rank above it there). AssertionError otherwise."""
    from worker.store import open_store
    from worker.store.hybrid import CANDIDATES

    first = next(synthetic_documents(texts, n, dim, model))
    seq = len(first["chunks"]) // 2
    text, vector = first["chunks"][seq].text, first["vectors"][seq]
    with open_store(url, dim=dim) as store:
        counts = store.counts()
        assert counts == {"documents": math.ceil(n / 1000), "chunks": n}, counts
        if store.kind == "postgresql":
            empty, invalid = store.conn.execute(
                "SELECT (SELECT count(*) FROM chunks WHERE tsv IS NULL OR length(tsv) = 0),"
                " (SELECT count(*) FROM pg_index WHERE indrelid = 'chunks'::regclass AND NOT indisvalid)"
            ).fetchone()
            assert (empty, invalid) == (0, 0), f"{empty} chunks without lexemes, {invalid} invalid indexes"
        for mode in MODES:
            hits = store.search(vector, 10 if mode != "keyword" else CANDIDATES, model=model, text=text, mode=mode)
            found = [(h["document"], h["text"]) for h in hits]
            assert ("synthetic-0", text) in found[: 1 if mode != "keyword" else None], (mode, found[:3])


def latency(url: str, workdir: Path, cranfield: Path, n: int, n_queries: int) -> dict:
    from worker.embedding import get_embedder
    from worker.store import open_store

    use_store(url, workdir)
    docs, queries, _ = load_cranfield(cranfield)
    embedder = get_embedder()
    texts = list(docs.values())
    took = synthesise(url, texts, n, embedder.dim, embedder.model_name)
    analyze(url)
    built = f", indexes built after in {took['index']:.0f}s" if "index" in took else ""
    print(f"  {n} chunks written through the store API in {took['write']:.0f}s{built}", flush=True)
    check_loaded(url, texts, n, embedder.dim, embedder.model_name)
    chosen = queries[:n_queries]
    sets = {"cranfield": chosen, "short": [" ".join(q.split()[:3]) for q in chosen]}
    out: dict = {"chunks": n, **{f"{step}_s": round(t) for step, t in took.items()}}
    t = time.perf_counter()
    vectors = embedder.embed(chosen + sets["short"])
    out["embed_query_ms"] = round((time.perf_counter() - t) * 1000 / len(vectors), 1)
    with open_store(url, dim=embedder.dim) as store:
        for name, texts in sets.items():
            times: dict[str, list[float]] = {m: [] for m in MODES}
            offset = 0 if name == "cranfield" else len(chosen)
            for i, text in enumerate(texts):
                for mode in MODES:
                    if i == 0:  # a warm-up query per mode, not counted
                        store.search(vectors[offset], 10, model=embedder.model_name, text=text, mode=mode)
                    t = time.perf_counter()
                    store.search(vectors[offset + i], 10, model=embedder.model_name, text=text, mode=mode)
                    times[mode].append((time.perf_counter() - t) * 1000)
            row = {m: (round(statistics.median(v), 1), round(float(np.percentile(v, 95)), 1)) for m, v in times.items()}
            row["hybrid/dense p50"] = round(row["hybrid"][0] / row["dense"][0], 2)
            out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--cranfield", type=Path, default=DEFAULT_CRANFIELD)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", default="20,50,100")
    args = parser.parse_args()
    both = not (args.quality or args.latency)
    kinds = args.stores.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        try:
            if args.quality or both:
                for kind, url in store_urls(kinds, workdir, "quality").items():
                    print(f"quality on Cranfield, {kind}:", flush=True)
                    result = quality(url, workdir, args.cranfield, [int(c) for c in args.candidates.split(",")])
                    print(f"  {result['queries']} queries with judgments, {result['chunks']} chunks")
                    print(f"  {'run':<22} {'nDCG@10':>8} {'R@10':>6} {'R@100':>6}")
                    for name, ms in result["table"].items():
                        deep = f"{ms['recall@100']:>6.3f}" if name in MODES else f"{'-':>6}"
                        print(f"  {name:<22} {ms['ndcg@10']:>8.3f} {ms['recall@10']:>6.3f} {deep}")
            if args.latency or both:
                for kind, url in store_urls(kinds, workdir, "latency").items():
                    print(f"latency at {args.chunks} chunks, {kind}:", flush=True)
                    result = latency(url, workdir, args.cranfield, args.chunks, args.queries)
                    print(f"  query embedding {result['embed_query_ms']} ms (not in the figures below)")
                    for name in ("cranfield", "short"):
                        row = result[name]
                        shown = ", ".join(f"{m} p50 {row[m][0]} ms p95 {row[m][1]} ms" for m in MODES)
                        print(f"  {name} queries: {shown}; hybrid/dense p50 {row['hybrid/dense p50']}")
        finally:
            if _PG is not None:
                _PG.stop("immediate")


if __name__ == "__main__":
    main()
