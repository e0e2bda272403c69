"""Ingest scaling: pages/s with 1, 2 and 4 worker processes, PostgreSQL store against SQLite.

Run: .venv/bin/python bench/bench_scaling.py [--docs 12] [--pages 4] [--rounds 2] [--workers 1,2,4]

One throwaway Redis, one private PostgreSQL 18 + pgvector (tests/pgserver.py, fsync off as in the
tests) and the same generated PDFs for every configuration. For each number of processes N and
each store, in one run and interleaved (N=1 PostgreSQL, N=1 SQLite, N=2 PostgreSQL, ...): a fresh
store, `--docs` ingest_pdf jobs enqueued, then N `python -m worker run --burst` processes with
WORKERS_PER_HOST=N (each gets cores/N embedding threads, at least 1, as a deployment would).
Throughput counts pages from the first job's start to the last job's end (RQ's timestamps), so
process start-up is left out. `--rounds` rounds, the order reversed every other round; medians.
Scaling efficiency = pages/s at N / (N x pages/s at 1). The store
stage's share is the sum of the jobs' own `store` timings over their `total`.

Search latency and recall at 100k (and 1M) chunks: bench/bench_store_pg.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pdfs  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402
from worker.devredis import RedisServer, free_port  # noqa: E402


def make_documents(directory: Path, docs: int, pages: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(docs):
        path = directory / f"doc{d:03d}.pdf"
        path.write_bytes(pdfs.make_pdf([pdfs.long_page(f"scaling doc {d} page {p}", 30) for p in range(pages)]))
        paths.append(path)
    return paths


def run_once(redis_url: str, store_url: str, documents: list[Path], pages: int, n: int, workdir: Path) -> dict:
    conn = Redis.from_url(redis_url)
    conn.flushall()
    q = Queue("default", connection=conn, serializer=JSONSerializer)
    jobs = [q.enqueue("worker.jobs.ingest_pdf", str(p), job_timeout=1200, result_ttl=3600) for p in documents]
    base = dict(
        os.environ,
        REDIS_URL=redis_url,
        STORE_URL=store_url,
        INPUT_ROOTS=str(documents[0].parent),
        EMBED_MODEL_DIR=str(ROOT / "var" / "model"),
        WORKERS_PER_HOST=str(n),
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--burst"],
            env={**base, "HEALTH_PORT": str(free_port()), "WORKER_NAME": f"scaling-{n}-{i}-{time.time_ns()}"},
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    for p in procs:
        p.wait()
    fetched = Job.fetch_many([j.id for j in jobs], connection=conn, serializer=JSONSerializer)
    bad = [j.id for j in fetched if j is None or j.get_status() != "finished"]
    if bad:
        raise SystemExit(f"{len(bad)} jobs did not finish (N={n}, {store_url.split(':')[0]})")
    start = min(j.started_at for j in fetched)
    end = max(j.ended_at for j in fetched)
    seconds = (end - start).total_seconds()
    results = [j.return_value() for j in fetched]
    store = sum(r["timings"]["store"] for r in results)
    total = sum(r["timings"]["total"] for r in results)
    return {
        "seconds": seconds,
        "pages_per_s": len(documents) * pages / seconds,
        "chunks": sum(r["chunks"] for r in results),
        "store_share": store / total,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=12)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="rounds, in alternating order; medians are reported")
    parser.add_argument("--workers", default="1,2,4", help="process counts to measure, the first being the base")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        documents = make_documents(workdir / "docs", args.docs, args.pages)
        (workdir / "pg").mkdir()
        pg = PgServer(workdir / "pg").start()
        redis = RedisServer(directory=workdir / "redis").start()
        runs: dict[tuple[str, int], list[dict]] = {}
        order = [(kind, n) for n in counts for kind in ("postgresql", "sqlite")]
        try:
            for round_ in range(args.rounds):
                for kind, n in order if round_ % 2 == 0 else order[::-1]:  # ABBA: drift hits both alike
                    url = pg.new_database() if kind == "postgresql" else f"sqlite:///{workdir}/store-{round_}-{n}.db"
                    r = run_once(redis.url, url, documents, args.pages, n, workdir)
                    runs.setdefault((kind, n), []).append(r)
                    print(
                        f"  round {round_ + 1} N={n} {kind:<10} {r['pages_per_s']:6.2f} pages/s ({r['seconds']:.1f} s,"
                        f" {r['chunks']} chunks, store stage {100 * r['store_share']:.1f}%)",
                        flush=True,
                    )
        finally:
            redis.stop()
            pg.stop()
    figures = {
        key: {
            "pages_per_s": statistics.median(r["pages_per_s"] for r in rs),
            "store_share": statistics.median(r["store_share"] for r in rs),
        }
        for key, rs in runs.items()
    }
    pages = args.docs * args.pages
    print(f"\ningest, {args.docs} PDFs x {args.pages} pages = {pages} pages, {cores} cores, median of {args.rounds}:")
    print("| processes | PostgreSQL pages/s | efficiency | SQLite pages/s | efficiency | PostgreSQL / SQLite |")
    print("|---|---|---|---|---|---|")
    base = {k: figures[k, counts[0]]["pages_per_s"] / counts[0] for k in ("postgresql", "sqlite")}
    for n in counts:
        pg_r, sq_r = figures["postgresql", n]["pages_per_s"], figures["sqlite", n]["pages_per_s"]
        print(
            f"| {n} | {pg_r:.2f} | {pg_r / (n * base['postgresql']):.2f} | {sq_r:.2f} |"
            f" {sq_r / (n * base['sqlite']):.2f} | {pg_r / sq_r:.2f}x |"
        )
    shares = ", ".join(f"{k} N={n} {100 * f['store_share']:.1f}%" for (k, n), f in sorted(figures.items()))
    print(f"store stage share of an ingest: {shares}")
    for kind in ("postgresql", "sqlite"):
        best = max(counts, key=lambda n: figures[kind, n]["pages_per_s"])
        print(f"{kind}: most pages/s at N={best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
