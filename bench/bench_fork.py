"""What a fork costs the worker, with the daemon's memory in 4 KiB pages and in huge pages.

Each job forks twice: the daemon forks the work-horse, the horse forks a PDFium child. Both
copy the page tables of a process that holds the model. Each round runs two fresh processes in
turn (the order alternating), each loading the model as the daemon does, one of them then
collapsing its memory into huge pages (worker/hugepages.py), and measures, medians of 40:

- fork: fork, an immediate `os._exit` in the child, waitpid (the daemon's side of a horse, bare);
- extract: a one-page PDF opened and read through the PDFium child (`open_pdf`), as a horse does;
- exit after embed: a child that embeds a page's worth of chunks and exits, from its
  `os._exit` to the parent's waitpid returning (a horse's end, which the daemon waits for).

Run: .venv/bin/python bench/bench_fork.py [--rounds 3] [--pdf FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 40


def one_page_pdf() -> bytes:
    from tests.pdfs import make_pdf

    return make_pdf(["A page of text about turbulent boundary layers on swept wings. " * 40])


def measure(huge: bool, pdf: bytes) -> dict[str, float]:
    """In this process: load the model as the daemon does, maybe collapse, then time the three."""
    from worker import hugepages
    from worker.embedding import preload
    from worker.pdf import open_pdf

    embedder = preload()
    collapsed = hugepages.collapse() if huge else 0
    texts = ["the quick brown fox jumps over the lazy dog " * 25] * 4  # four chunks of ~250 word pieces

    def fork() -> float:
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return time.perf_counter() - t

    def extract() -> float:
        t = time.perf_counter()
        with open_pdf(pdf) as doc:
            list(doc.child.pages(1 << 30))
        return time.perf_counter() - t

    def exit_after_embed() -> float:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            embedder.embed(texts)
            os.write(w, str(time.monotonic_ns()).encode())
            os._exit(0)
        os.close(w)
        ended = int(os.read(r, 64))
        os.close(r)
        os.waitpid(pid, 0)
        return (time.monotonic_ns() - ended) / 1e9

    out = {"collapsed_mib": float(collapsed)}
    for name, f in (("fork", fork), ("extract", extract), ("exit_after_embed", exit_after_embed)):
        f()
        out[name] = statistics.median(f() for _ in range(SAMPLES)) * 1000
    with open("/proc/self/statm") as f:
        out["rss_mib"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pdf", type=Path, help="a one-page PDF (default: one made here)")
    parser.add_argument("--child", choices=["4k", "huge"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pdf = args.pdf.read_bytes() if args.pdf else one_page_pdf()
        print(json.dumps(measure(args.child == "huge", pdf)))
        return 0
    runs: dict[str, list[dict[str, float]]] = {"4k": [], "huge": []}
    for r in range(args.rounds):
        for variant in ("4k", "huge") if r % 2 == 0 else ("huge", "4k"):
            cmd = [sys.executable, __file__, "--child", variant] + (["--pdf", str(args.pdf)] if args.pdf else [])
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            env.setdefault("EMBED_MODEL_DIR", str(ROOT / "var" / "model"))
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(done.stdout.splitlines()[-1]))
    med = {v: {k: statistics.median(run[k] for run in rs) for k in rs[0]} for v, rs in runs.items()}
    print(f"medians of {args.rounds} rounds (each a median of {SAMPLES}), ms:")
    print(f"  {'':18s} {'4 KiB pages':>12s} {'huge pages':>12s} {'ratio':>7s}")
    for k in ("fork", "extract", "exit_after_embed"):
        print(f"  {k:18s} {med['4k'][k]:12.2f} {med['huge'][k]:12.2f} {med['4k'][k] / med['huge'][k]:6.2f}x")
    rss, huge = med["4k"]["rss_mib"], med["huge"]["rss_mib"]
    print(f"  RSS {rss:.0f} / {huge:.0f} MiB; collapsed {med['huge']['collapsed_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
