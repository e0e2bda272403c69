"""How the embedder uses the cores: one session with an intra-op thread pool against one
single-threaded session whose batches run on several Python threads at once (what it does).

Run: .venv/bin/python bench/bench_threading.py [--rounds 5] [--threads 2]

Both embedders in this process, the same texts (bench_embed's corpora: 800 short texts, 240
chunk-length ones) tokenized once, `embed_ids` timed alternately, round by round; tokens/s
medians per precision and corpus, the ratio, and the largest difference between the vectors.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_embed import MODEL_DIR, chunk_corpus, corpus  # noqa: E402
from worker.embedding import Embedder  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n = args.threads
    print(f"{n} threads, {args.rounds} rounds, alternating; tokens/s medians")
    head = f"session with {n} intra-op threads | 1-thread session, batches on {n} threads"
    print(f"| precision | texts | {head} | ratio |")
    print("|---|---|---|---|---|")
    for precision in ("fp32", "int8"):
        pool = Embedder(MODEL_DIR, precision, threads=n, session_threads=n, check_cpu=False)
        shared = Embedder(MODEL_DIR, precision, threads=n, check_cpu=False)
        for name, texts in (("short", corpus(800)), ("chunks", chunk_corpus(240))):
            ids = [e.ids for e in pool._encode(texts)]
            rates: dict[str, list[float]] = {"pool": [], "shared": []}
            for r in range(args.rounds):
                for key, e in (("pool", pool), ("shared", shared))[:: 1 if r % 2 == 0 else -1]:
                    t = time.perf_counter()
                    _, tokens = e.embed_ids(ids)
                    rates[key].append(tokens / (time.perf_counter() - t))
            diff = float(np.abs(pool.embed_ids(ids)[0] - shared.embed_ids(ids)[0]).max())
            a, b = statistics.median(rates["pool"]), statistics.median(rates["shared"])
            print(f"| {precision} | {name} | {a:,.0f} | {b:,.0f} | **{b / a:.2f}x** | (vectors differ by {diff:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
