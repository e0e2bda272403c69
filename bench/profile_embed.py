"""Where fp32 inference spends its time, and which session or graph choice makes it faster.

Run: .venv/bin/python bench/profile_embed.py --profile            # op-type breakdown, short vs chunk texts
     .venv/bin/python bench/profile_embed.py --variants base,opt  # side by side, interleaved, medians

--profile: onnxruntime's own profiler (SessionOptions.enable_profiling) over the benchmark's two
corpora (bench_embed.py: short texts, mean ~34 word pieces; chunk-length texts, mean ~230),
batched as the worker batches them; the time of each operator type, summed over its nodes, as a
share of all node time, and microseconds per token.

--variants: each variant embeds both corpora in this process, in turn, `--rounds` times (the
order rotating each round); tokens/s medians, the ratio to the first variant, and the cosine of
its vectors to the first one's. Variants:
  base      the shipped model.onnx, ORT_ENABLE_ALL, EMBED_BATCH_TOKENS 2048 (what the worker runs)
  opt       model.onnx through onnxruntime.transformers.optimizer (model_type bert)
  extended  ORT_ENABLE_EXTENDED instead of ALL
  b256, b512, b1024, b4096   another batch budget, in tokens
  one       every text alone (batches of one: no padding at all)
  spin      intra-op spinning on
  int8      model-int8.onnx (the int8 graph, for reference)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_embed import LINEAR_FLOP_PER_TOKEN, MODEL_DIR, chunk_corpus, corpus, onnxruntime_matmul_gflops  # noqa: E402

from worker.embedding import MODEL_FILES, Embedder  # noqa: E402


def session(path: Path, threads: int, level: str = "ALL", spin: str = "0", profile: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimized(path: Path, out: Path) -> Path:
    """`path` through onnxruntime's transformer optimizer for BERT (fusions only, no float16)."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(path), model_type="bert", num_heads=12, hidden_size=384, opt_level=0)
    print(f"  optimizer: {json.dumps(model.get_fused_operator_statistics())}")
    model.save_model_to_file(str(out))
    return out


def embedder_with(sess, precision: str, threads: int, batch_tokens: int = 2048) -> Embedder:
    embedder = Embedder(MODEL_DIR, precision, threads=threads, batch_tokens=batch_tokens, check_cpu=False)
    embedder._session = sess
    return embedder


def profile(threads: int, corpora: dict[str, list[str]], precision: str) -> None:
    path = MODEL_DIR / MODEL_FILES[precision]
    for name, texts in corpora.items():
        with tempfile.TemporaryDirectory() as tmp:
            sess = session(path, threads, profile=str(Path(tmp) / "p"))
            embedder = embedder_with(sess, precision, threads)
            embedder.embed(texts[:16])  # warm up, profiled too, removed below by the run count
            started = time.perf_counter()
            _, tokens = embedder.embed_counted(texts)
            wall = time.perf_counter() - started
            events = json.loads(Path(sess.end_profiling()).read_text())
        by_op: dict[str, float] = defaultdict(float)
        runs = [e for e in events if e.get("name") == "model_run"]
        first_run_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first_run_end:
                op = e["args"]["op_name"]
                if op == "MatMul":  # the builder names the linear layers' products "<layer>.matmul"
                    op += " (linear layers)" if ".matmul" in e["name"] else " (attention)"
                by_op[op] += e["dur"]
        total = sum(by_op.values())
        print(
            f"{precision} {name}: {len(texts)} texts, {tokens} tokens, {tokens / wall:,.0f} tokens/s "
            f"({wall * 1e6 / tokens:.0f} us a token; node time {total / tokens:.0f} us a token)"
        )
        for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {op:<28} {us / total:6.1%}  {us / tokens:7.1f} us/token")
        linear = by_op.get("MatMul (linear layers)", 0.0)
        if linear:
            rate = LINEAR_FLOP_PER_TOKEN * tokens / linear / 1e3
            print(f"  the linear layers' MatMuls run at {rate:.0f} GFLOP/s, all nodes at {rate * linear / total:.0f}")
        rate = onnxruntime_matmul_gflops(threads)
        print(f"  onnxruntime's 2048^3 float32 matmul, {threads} threads: {rate:.0f} GFLOP/s")


def variants(names: list[str], threads: int, corpora: dict[str, list[str]], rounds: int, tmp: Path) -> None:
    fp32 = MODEL_DIR / "model.onnx"
    builders = {
        "base": lambda: embedder_with(session(fp32, threads), "fp32", threads),
        "opt": lambda: embedder_with(session(optimized(fp32, tmp / "opt.onnx"), threads), "fp32", threads),
        "extended": lambda: embedder_with(session(fp32, threads, "EXTENDED"), "fp32", threads),
        "b1024": lambda: embedder_with(session(fp32, threads), "fp32", threads, 1024),
        "b512": lambda: embedder_with(session(fp32, threads), "fp32", threads, 512),
        "b4096": lambda: embedder_with(session(fp32, threads), "fp32", threads, 4096),
        "b256": lambda: embedder_with(session(fp32, threads), "fp32", threads, 256),
        "one": lambda: embedder_with(session(fp32, threads), "fp32", threads, 1),
        "spin": lambda: embedder_with(session(fp32, threads, spin="1"), "fp32", threads),
        "int8": lambda: embedder_with(session(MODEL_DIR / "model-int8.onnx", threads), "int8", threads),
    }
    engines = {name: builders[name]() for name in names}
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    vectors: dict[tuple[str, str], np.ndarray] = {}
    tokens: dict[str, int] = {}
    for engine in engines.values():
        engine.embed(corpora["short"][:16])
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for corpus_name, texts in corpora.items():
                started = time.perf_counter()
                vectors[name, corpus_name], tokens[corpus_name] = engines[name].embed_counted(texts)
                times[name, corpus_name].append(time.perf_counter() - started)
    print(f"{threads} threads, {rounds} rounds interleaved, medians (ratio to {names[0]}):")
    for corpus_name in corpora:
        base = statistics.median(times[names[0], corpus_name])
        for name in names:
            t = statistics.median(times[name, corpus_name])
            cos = (vectors[name, corpus_name] * vectors[names[0], corpus_name]).sum(axis=1)
            print(
                f"  {corpus_name:<7} {name:<9} {tokens[corpus_name] / t:8,.0f} tokens/s  {base / t:5.2f}x"
                f"  cosine to {names[0]} min {cos.min():.7f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--precision", default="fp32", choices=list(MODEL_FILES), help="the graph to profile")
    ap.add_argument("--variants", default="")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--texts", type=int, default=800)
    ap.add_argument("--chunks", type=int, default=240)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    corpora = {"short": corpus(args.texts), "chunks": chunk_corpus(args.chunks)}
    if args.profile:
        profile(args.threads, corpora, args.precision)
    if args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            variants(args.variants.split(","), args.threads, corpora, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
