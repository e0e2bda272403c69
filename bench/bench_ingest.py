"""Ingestion benchmark on real PDFs: the extract_text job against pypdf called directly, then
end-to-end ingest_pdf with the time per stage, then store search time by store size.

Run: .venv/bin/python bench/bench_ingest.py [--rounds 5] [--no-ingest] [--search-sizes 10000,100000]

The documents are real-world multi-page PDFs that ship in pypdf's source distribution on PyPI
(pypdf 7.1.1, pinned by sha256; fetched once with `pip download` into var/cache/bench), plus the
PDF manuals Debian installs under /usr/share/doc when present. Nothing third-party is committed.

Extraction: each round times both methods over the same files (order alternating between
rounds): pypdf directly (`PdfReader(path)`, `page.extract_text()` for every page) and
`worker.jobs.extract_text(path)` (source checks, sha256, typed errors, progress hooks).
Medians of pages per second; the ratio is ours / direct (target >= 0.95).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pypdf import PdfReader  # noqa: E402

from worker.settings import Settings, set_settings  # noqa: E402

CACHE = ROOT / "var" / "cache" / "bench"
SDIST = "pypdf-7.1.1.tar.gz"
SDIST_SHA256 = "2eff4e2fc5fb22a6d6711e6f1166cdc9ab5765d90cd0d77dfea3f4aa91a27b1d"
MIN_PAGES = 4  # multi-page documents only: one-page test fixtures say little about throughput

logging.getLogger("pypdf").setLevel(logging.ERROR)


def corpus() -> list[Path]:
    """Real multi-page PDFs: from pypdf's sdist (downloaded once) and /usr/share/doc."""
    out_dir = CACHE / "pdfs"
    sdist = CACHE / SDIST
    if not sdist.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "pypdf==7.1.1",
                "-d",
                str(CACHE),
                "-q",
            ],
            check=True,
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest} is not the pinned {SDIST_SHA256}")
    if not out_dir.exists():
        tmp = Path(tempfile.mkdtemp(dir=CACHE))
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pdf")]
            tar.extractall(tmp, members=members, filter="data")
        out_dir.mkdir()
        for pdf in tmp.rglob("*.pdf"):
            pdf.rename(out_dir / pdf.name)
    candidates = sorted(out_dir.glob("*.pdf")) + sorted(Path("/usr/share/doc").rglob("*.pdf"))
    chosen = []
    for path in candidates:
        try:
            reader = PdfReader(path)
            if reader.is_encrypted:
                continue
            if len(reader.pages) >= MIN_PAGES and path.resolve().is_file():
                chosen.append(path.resolve())
        except Exception:
            continue
    return chosen


def direct(paths: list[Path]) -> int:
    pages = 0
    for path in paths:
        reader = PdfReader(path)
        for page in reader.pages:
            page.extract_text()
            pages += 1
    return pages


def ours(paths: list[Path]) -> int:
    from worker.jobs import extract_text

    return sum(len(extract_text(str(p))["pages"]) for p in paths)


def bench_extract(paths: list[Path], rounds: int) -> dict:
    rates: dict[str, list[float]] = {"direct": [], "ours": []}
    methods = {"direct": direct, "ours": ours}
    for method in methods.values():  # warm up: imports and first-use costs are not per page
        method(paths[:1])
    for r in range(rounds):
        order = ("direct", "ours") if r % 2 == 0 else ("ours", "direct")
        for name in order:
            t = time.perf_counter()
            pages = methods[name](paths)
            rates[name].append(pages / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"pages_per_s": med, "ratio": med["ours"] / med["direct"], "rounds": rates}


def bench_ingest(paths: list[Path], workdir: Path) -> dict | None:
    try:
        from worker.embedding import get_embedder
    except ImportError:
        print("ingest: skipped, worker.embedding is not available on this branch")
        return None
    from worker.jobs import ingest_pdf

    get_embedder().embed(["warm up the session"])  # model load is a one-off per process
    stages = {"extract": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0}
    pages = chunks = 0
    t = time.perf_counter()
    for path in paths:
        summary = ingest_pdf(str(path))
        pages += summary["pages"]
        chunks += summary["chunks"]
        for k in stages:
            stages[k] += summary["timings"][k]
    total = time.perf_counter() - t
    from worker.settings import get_settings
    from worker.store import Store

    with Store.open(get_settings().store_url) as store:
        tokens = store.conn.execute("SELECT sum(n_tokens) FROM chunks").fetchone()[0] or 0
    return {
        "pages": pages,
        "chunks": chunks,
        "tokens": tokens,
        "seconds": total,
        "pages_per_s": pages / total,
        "stages": stages,
    }


def bench_search(sizes: list[int], workdir: Path, dim: int = 384, queries: int = 20) -> dict[int, float]:
    from worker.chunking import Chunk
    from worker.store import Store

    out = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        url = f"sqlite:///{workdir}/search-{n}.db"
        with Store.open(url) as store:
            per_doc = 1000
            for d in range(0, n, per_doc):
                m = min(per_doc, n - d)
                vectors = rng.standard_normal((m, dim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                chunks = [Chunk(i, "x" * 800, 1, 1, 0, 800, 200) for i in range(m)]
                store.add_document(
                    document_id=str(d),
                    sha256=str(d),
                    model="m",
                    name=None,
                    meta={},
                    pages=1,
                    pages_without_text=0,
                    page_errors=[],
                    chunks=chunks,
                    vectors=vectors,
                )
            times = []
            for _ in range(queries):
                q = rng.standard_normal(dim).astype(np.float32)
                t = time.perf_counter()
                store.search(q / np.linalg.norm(q), k=5, model="m")
                times.append(time.perf_counter() - t)
        out[n] = statistics.median(times)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-ingest", action="store_true")
    parser.add_argument("--search-sizes", default="10000,100000")
    args = parser.parse_args()

    paths = corpus()
    if not paths:
        raise SystemExit("no PDFs found")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    settings = Settings.from_env().override(
        input_roots=tuple(sorted({p.parent for p in paths})),
        store_url=f"sqlite:///{workdir}/store.db",
    )
    set_settings(settings)
    n_pages = sum(len(PdfReader(p).pages) for p in paths)
    print(f"corpus: {len(paths)} PDFs, {n_pages} pages: " + ", ".join(p.name for p in paths))

    ex = bench_extract(paths, args.rounds)
    print(
        f"extract, median of {args.rounds} rounds: pypdf direct {ex['pages_per_s']['direct']:.1f} pages/s, "
        f"extract_text job {ex['pages_per_s']['ours']:.1f} pages/s, ratio {ex['ratio']:.3f}x"
    )

    if not args.no_ingest:
        ing = bench_ingest(paths, workdir)
        if ing:
            split = ", ".join(f"{k} {v:.2f}s ({v / ing['seconds']:.0%})" for k, v in ing["stages"].items())
            print(
                f"ingest_pdf end to end: {ing['pages']} pages, {ing['chunks']} chunks in {ing['seconds']:.1f}s = "
                f"{ing['pages_per_s']:.1f} pages/s; {split}; embedding "
                f"{ing['tokens'] / ing['stages']['embed']:.0f} tokens/s"
            )

    sizes = [int(s) for s in args.search_sizes.split(",") if s.strip()]
    if sizes:
        for n, sec in bench_search(sizes, workdir).items():
            print(f"search, {n} stored chunks of 384 dims: {sec * 1000:.0f} ms per query (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
