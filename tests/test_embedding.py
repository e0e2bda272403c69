"""The embedding engine against sentence-transformers' own vectors, and through a real worker."""

from __future__ import annotations

import faulthandler
import io
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import MODEL_DIR, ROOT, queue, wait_for, worker_env
from worker import jobs
from worker.embedding import (
    MODEL_FILES,
    Embedder,
    choose_graph,
    cpu_flags,
    get_embedder,
    int8_decision,
    int8_here,
    model_available,
    precision_choice,
    preload,
    token_batches,
)
from worker.errors import EmbeddingError, InputTooLargeError, InvalidArgumentsError, ModelUnavailableError
from worker.settings import Settings, get_settings, set_settings

GOLDEN = ROOT / "tests" / "golden"
META = json.loads((GOLDEN / "texts.json").read_text(encoding="utf-8"))
TEXTS: list[str] = META["texts"]
GOLD = np.load(GOLDEN / "vectors.npy")

# The stated bound of int8 (SmoothQuant, weights per channel, activations per token) against the
# golden fp32 vectors, whatever the batching: met by the 8-bit graph where onnxruntime's int8
# matmul is exact (VNNI) and by the 7-bit graph on every x86-64 with AVX2; not by the 8-bit graph
# forced on an AVX2 CPU without VNNI (its u8 x s8 kernel saturates), which is why such CPUs run
# the 7-bit graph. The measured cosines: docs/design/embeddings.md, "int8 by CPU".
INT8_MIN_COSINE = 0.99
INT8_MEAN_COSINE = 0.997


def settings_for(**changes) -> Settings:
    """Settings for the test model, fp32 (the golden vectors' precision) unless `changes` say otherwise."""
    return Settings.from_env({}).override(**{"embed_model_dir": MODEL_DIR, "embed_precision": "fp32", **changes})


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return Embedder(MODEL_DIR, "fp32", threads=2)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [
        "the",
        "a",
        "report",
        "revenue",
        "model",
        "worker",
        "queue",
        "page",
        "chunk",
        "vector",
        "search",
        "redis",
        "python",
        "fast",
        "slow",
    ]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]


def test_fp32_matches_sentence_transformers(fp32: Embedder) -> None:
    vectors = fp32.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * GOLD).sum(axis=1)
    assert cosine.min() >= 0.9999, dict(zip(TEXTS, cosine.round(6), strict=True))
    assert (fp32.model_name, fp32.dim, fp32.precision) == ("sentence-transformers/all-MiniLM-L6-v2", 384, "fp32")


def test_int8_within_stated_bound(caplog: pytest.LogCaptureFixture) -> None:
    """EMBED_PRECISION=int8 meets its stated bound on the CPU the test runs on: the int8 graph that
    is exact and fast here, fp32 (and a warning) where there is none. The 7-bit graph is held to
    the bound everywhere, the 8-bit one only where `int8_decision` lets it run."""
    graph_here, why = int8_decision(cpu_flags(), platform.machine())
    with caplog.at_level(logging.WARNING, logger="worker.embedding"):
        asked = Embedder(MODEL_DIR, "int8", threads=2)
    cosine = (asked.embed(TEXTS) * GOLD).sum(axis=1)
    assert cosine.min() >= INT8_MIN_COSINE and cosine.mean() >= INT8_MEAN_COSINE, (cosine.min(), cosine.mean())
    assert asked.requested_precision == "int8"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if graph_here:
        assert (asked.precision, asked.graph, asked.model_path.name) == ("int8", graph_here, MODEL_FILES[graph_here])
        assert not warnings
    else:
        assert asked.precision == "fp32" and asked.model_path.name == "model.onnx"
        assert warnings == [f"EMBED_PRECISION=int8 asked for, running fp32 instead: {why}"]
    for graph in ("int8", "int8-w7"):
        forced = Embedder(MODEL_DIR, graph, threads=2, check_cpu=False)
        assert (forced.precision, forced.model_path.name) == ("int8", MODEL_FILES[graph])
        cos = (forced.embed(TEXTS) * GOLD).sum(axis=1)
        if graph == graph_here:
            np.testing.assert_array_equal(cos, cosine)
        if graph == "int8-w7" or graph == graph_here:
            assert cos.min() >= INT8_MIN_COSINE and cos.mean() >= INT8_MEAN_COSINE, (graph, cos.min(), cos.mean())
        else:  # it runs, and is close, but not within the bound everywhere (see INT8_MIN_COSINE)
            assert cos.min() >= 0.95, cos.min()


def _matmul_integer(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The int8 graphs' product, as they call it: onnxruntime's MatMulIntegerToFloat on uint8 `a`
    (zero point 128) and int8 `w`, with scales of 1 (so the floats are the int32 sums, exact below 2^24)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    ones = {"a_scale": np.ones((1, 1), np.float32), "b_scale": np.ones(w.shape[1], np.float32)}
    node = helper.make_node(
        "MatMulIntegerToFloat", ["a", "w", "a_scale", "b_scale", "zero"], ["y"], domain="com.microsoft"
    )
    graph = helper.make_graph(
        [node],
        "mm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["n", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "zero")]
        + [numpy_helper.from_array(v, k) for k, v in ones.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a})[0]


def test_int8_graph_is_exact_on_this_cpu() -> None:
    """The int8 graph this CPU runs multiplies exactly: onnxruntime's integer product on a real
    layer's weights equals the integer product, with activations at the extremes of uint8 (where
    vpmaddubsw's 16-bit pair sums would saturate). With 7-bit weights it is exact on any CPU; with
    8-bit weights, not on x86-64 without VNNI (why such CPUs run the 7-bit graph)."""
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(7)
    a = rng.choice(np.array([0, 1, 127, 128, 254, 255], np.uint8), size=(64, 384))
    exact_here = {}
    for graph in ("int8", "int8-w7"):
        model = onnx.load(str(MODEL_DIR / MODEL_FILES[graph]))
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight_q")}
        w = weights["encoder.layer.0.attention.self.query.weight_q"]
        limit = {"int8": 127, "int8-w7": 63}[graph]
        assert max(int(np.abs(v).max()) for v in weights.values()) == limit, graph
        expected = (a.astype(np.int32) - 128) @ w.astype(np.int32)
        exact_here[graph] = bool((_matmul_integer(a, w) == expected).all())
    assert exact_here["int8-w7"]
    graph_here = int8_here()[0]
    if graph_here:
        assert exact_here[graph_here], graph_here
    if graph_here == "int8-w7":  # x86-64 without VNNI: 8-bit weights saturate here
        assert not exact_here["int8"]


def test_int8_decision_by_cpu(tmp_path: Path) -> None:
    avx2 = {"sse4_2", "avx", "avx2", "fma"}
    w7 = "x86-64 with avx2, no VNNI: int8 with 7-bit weights, exact there"
    assert int8_decision(avx2, "x86_64") == ("int8-w7", w7)  # AMD EPYC Zen 3: 8-bit weights saturate
    assert int8_decision(avx2 | {"avx512f", "avx512bw"}, "x86_64") == ("int8-w7", w7)  # vpmaddubsw too
    assert int8_decision(avx2 | {"avx512f", "avx512bw", "avx512_vnni"}, "x86_64") == (
        "int8",
        "x86-64 with avx512_vnni",
    )
    assert int8_decision(avx2 | {"avx_vnni"}, "AMD64")[0] == "int8"  # Alder Lake and later; Windows' name
    assert int8_decision({"sse4_2", "avx"}, "x86_64")[0] is None  # no AVX2: not measured
    assert int8_decision({"fp", "asimd", "asimddp", "i8mm"}, "aarch64")[0] == "int8"
    assert int8_decision({"fp", "asimd"}, "aarch64")[0] is None
    assert int8_decision(set(), "arm64")[0] is None  # no /proc/cpuinfo (macOS): not known, so fp32
    assert int8_decision({"avx512_vnni"}, "riscv64")[0] is None
    # /proc/cpuinfo: `flags` on x86, `Features` on arm64; unreadable means no flags.
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512_vnni\n\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n")
    assert cpu_flags(x86) == {"fpu", "sse", "avx2", "avx512_vnni"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    # This machine: the cached decision is the function's.
    assert int8_here() == int8_decision(cpu_flags(), platform.machine())


def test_auto_precision_by_cpu() -> None:
    """auto runs an int8 graph where `int8_decision` says the CPU computes it exactly and faster,
    fp32 elsewhere; fp32 and int8 asked for explicitly are honoured as before."""
    base = {"sse4_2", "avx", "avx2", "fma"}
    cpus = {
        "AMD EPYC, AVX-512 + VNNI": (base | {"avx512f", "avx512bw", "avx512_vnni"}, "x86_64", "int8"),
        "Intel Xeon, AVX-512 + VNNI + AMX": (
            base | {"avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"},
            "x86_64",
            "int8",
        ),
        "AMD EPYC, AVX2 only": (base, "x86_64", "int8-w7"),
        "AVX-512BW without VNNI": (base | {"avx512f", "avx512bw"}, "x86_64", "int8-w7"),
        "x86-64 without AVX2": ({"sse4_2", "avx"}, "x86_64", "fp32"),
        "arm64 with dot product": ({"fp", "asimd", "asimddp"}, "aarch64", "int8"),
        "arm64 without": ({"fp", "asimd"}, "aarch64", "fp32"),
    }
    for cpu, (flags, machine, expected) in cpus.items():
        graph, why = int8_decision(flags, machine)
        assert choose_graph("auto", graph, why) == (expected, f"auto: {why}"), cpu
        assert choose_graph("fp32", graph, why) == ("fp32", "EMBED_PRECISION=fp32"), cpu
        assert choose_graph("int8", graph, why)[0] == expected, cpu
    with pytest.raises(ValueError, match="auto, fp32, int8"):
        choose_graph("int4", "int8", "")
    assert Settings.from_env({}).embed_precision == "auto"


def test_auto_precision_on_this_cpu(tmp_path: Path) -> None:
    """The real rule on the CPU the tests run on: an x86-64 machine with AVX2 or VNNI runs int8
    with no setting."""
    graph = int8_here()[0] or "fp32"
    if platform.machine() == "x86_64" and "avx512_vnni" in cpu_flags():
        assert graph == "int8"
    elif platform.machine() == "x86_64" and "avx2" in cpu_flags():
        assert graph == "int8-w7"
    expected = "fp32" if graph == "fp32" else "int8"
    auto = Embedder(MODEL_DIR, "auto", threads=2)
    assert (auto.requested_precision, auto.precision, auto.graph) == ("auto", expected, graph)
    assert auto.precision_reason == f"auto: {int8_here()[1]}"
    assert auto.model_path.name == MODEL_FILES[graph]
    assert get_embedder(settings_for(embed_precision="auto")).precision == expected
    # A model directory of one's own without an int8 graph: auto runs fp32 there, and says why.
    for name in ("model.onnx", "tokenizer.json"):
        (tmp_path / name).symlink_to(MODEL_DIR / name)
    no_int8 = f"auto: no {MODEL_FILES[graph]} in the model directory"
    assert precision_choice("auto", tmp_path) == ("fp32", no_int8 if graph != "fp32" else auto.precision_reason)
    assert Embedder(tmp_path, "auto").precision == "fp32"
    assert model_available(Settings.from_env({}).override(embed_model_dir=tmp_path)) == (True, "ok")


def test_order_preserved_under_length_sorting(fp32: Embedder) -> None:
    order = np.random.default_rng(1).permutation(len(TEXTS))
    shuffled = fp32.embed([TEXTS[i] for i in order])
    np.testing.assert_allclose(shuffled, fp32.embed(TEXTS)[order], atol=1e-5)
    # Equal lengths keep their input order too (a stable sort).
    same = ["alpha beta", "gamma delta", "beta alpha"]
    np.testing.assert_allclose(fp32.embed(same), np.stack([fp32.embed([t])[0] for t in same]), atol=1e-5)


def test_batching_does_not_change_results() -> None:
    embedder = Embedder(MODEL_DIR, "fp32", threads=2, batch_tokens=256)
    # lengths from 2 to 62 pieces, mixed (padding all to the 256-piece window costs seconds)
    texts = [t for t, n in zip(TEXTS, embedder.count_tokens(TEXTS), strict=True) if n < 100][::2] + sentences(8)
    tight = embedder.embed(texts)
    embedder.batch_tokens = 100_000  # one batch, everything padded to the longest text
    loose = embedder.embed(texts)
    single = np.stack([embedder.embed([t])[0] for t in texts[:6]])
    np.testing.assert_allclose(tight, loose, atol=1e-5)
    np.testing.assert_allclose(tight[:6], single, atol=1e-5)
    # int8 scales activations per token, so its vectors do not depend on the batch either.
    int8 = Embedder(MODEL_DIR, "int8", threads=2, batch_tokens=256, check_cpu=False)
    tight = int8.embed(texts)
    int8.batch_tokens = 100_000
    np.testing.assert_allclose(tight, int8.embed(texts), atol=1e-4)


def test_token_batches_cover_every_row_and_shrink_at_the_end() -> None:
    """Each row once, longest first, within the budget; with threads taking the batches in turn,
    the last batches shrink so that no thread waits long for the others at the end of a call."""
    rng = np.random.default_rng(3)
    chunks = np.full(64, 250)  # a document's chunks
    mixed = rng.integers(1, 257, size=300)
    for lengths, budget in ((chunks, 1024), (mixed, 1024), (mixed, 100), (np.array([300, 5]), 256)):
        for workers in (1, 2, 4):
            batches = list(token_batches(lengths, budget, workers))
            rows = np.concatenate(batches)
            assert sorted(rows.tolist()) == list(range(len(lengths)))
            assert (np.diff(lengths[rows]) <= 0).all()  # longest first
            assert all(len(b) == 1 or len(b) * lengths[b].max() <= budget for b in batches)
    assert [len(b) for b in token_batches(chunks, 1024, 1)] == [4] * 16
    shares = [len(b) for b in token_batches(chunks, 1024, 2)]
    assert shares[:10] == [4] * 10 and shares[-4:] == [1, 1, 1, 1], shares  # 4 rows, then fewer
    assert [len(b) for b in token_batches(np.array([40, 30, 20]), 10_000, 2)] == [1, 1, 1]


def test_empty_string_long_text_and_empty_list(fp32: Embedder) -> None:
    empty = fp32.embed([""])[0]
    assert np.dot(empty, GOLD[TEXTS.index("")]) >= 0.9999  # the vector sentence-transformers gives ""
    assert np.allclose(np.linalg.norm(empty), 1.0)
    assert fp32.embed([]).shape == (0, 384)
    long_text = " ".join(["word"] * 1000)
    assert fp32.count_tokens(["", "hello world", long_text]) == [2, 4, 256]  # [CLS] ... [SEP], capped at 256
    # The chunking tokenizer never truncates, and gives offsets for every word piece.
    encoding = fp32.tokenizer.encode(long_text, add_special_tokens=False)
    assert len(encoding.ids) == 1000 and encoding.offsets[-1] == (len(long_text) - 4, len(long_text))
    # A long text is embedded from its first 256 word pieces.
    head = " ".join(["word"] * 254)
    assert np.dot(fp32.embed([long_text])[0], fp32.embed([head])[0]) >= 0.99999
    with pytest.raises(TypeError):
        fp32.embed("not a list")


def test_very_long_texts(fp32: Embedder) -> None:
    """Megabytes of text are embedded from a prefix, with the vector of the whole text's first 256 pieces."""
    sentence = "The quarterly report shows revenue growth in every region. "
    huge = sentence * 20_000  # 1.2 MB
    assert len(fp32._head(huge)) < 20_000  # tokenizing it in full would take ~0.6 s a MB
    vector = fp32.embed([huge])[0]
    np.testing.assert_allclose(vector, fp32.embed([sentence * 60])[0], atol=1e-6)  # ~660 pieces: truncated too
    assert fp32.count_tokens([huge]) == [256]
    # Mostly whitespace: the prefix holds too few pieces, so the whole text is tokenized.
    sparse = "alpha" + " " * 50_000 + "beta gamma"
    assert fp32._head(sparse) == sparse
    np.testing.assert_allclose(fp32.embed([sparse])[0], fp32.embed(["alpha beta gamma"])[0], atol=1e-6)


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="make model"):
        Embedder(tmp_path, "fp32")
    ok, why = model_available(Settings.from_env({}).override(embed_model_dir=tmp_path))
    assert not ok and "model.onnx" in why and "make model" in why
    assert model_available(settings_for()) == (True, "ok")
    assert model_available(settings_for(embed_precision="int8")) == (True, "ok")


def _in_child(work) -> np.ndarray:
    """Run `work()` in a forked child; return the array it produced."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        faulthandler.dump_traceback_later(60, exit=True)  # a hung child fails the test, not the suite
        try:
            buffer = io.BytesIO()
            np.save(buffer, work())
            with os.fdopen(write_fd, "wb") as out:
                out.write(buffer.getvalue())
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return np.load(io.BytesIO(data))


def test_forked_child_computes_correctly() -> None:
    # As the daemon does: a single-threaded session loaded before the fork.
    parent = preload(settings_for(embed_threads=2))
    assert parent._session_threads == 1 and parent.threads == 2

    def embed_and_note(texts: list[str]) -> np.ndarray:
        loaded = parent._session
        vectors = parent.embed(texts)
        same = parent._session is loaded and parent._session_threads == 1
        return np.concatenate([vectors, [[float(same)]] * len(texts)], axis=1)

    small = _in_child(lambda: embed_and_note(TEXTS[:3]))
    np.testing.assert_allclose(small[:, :384], GOLD[:3], atol=1e-4)
    assert (small[:, 384] == 1).all()  # the inherited session, no model load
    big = _in_child(lambda: embed_and_note(TEXTS * 2))  # 2,240 tokens: still the inherited session, batches shared
    np.testing.assert_allclose(big[:, :384], np.concatenate([GOLD] * 2), atol=1e-4)
    assert (big[:, 384] == 1).all()
    assert parent._session_threads == 1 and parent._session_pid == os.getpid()  # the parent's is untouched
    # An embedder with a thread pool, forked: the child replaces its session and still computes right.
    pooled = Embedder(MODEL_DIR, "fp32", threads=2)
    np.testing.assert_allclose(_in_child(lambda: pooled.embed(TEXTS[:5])), GOLD[:5], atol=1e-4)


def test_forked_child_shares_small_input_among_its_threads() -> None:
    """A horse's inherited session has one thread; a small input (one page) is cut into batches
    that run at the same time on EMBED_THREADS threads, with the same vectors, and a failure on
    any of them is the call's failure."""
    import threading

    parent = preload(settings_for(embed_threads=2))
    run_batch = Embedder._run_batch

    def concurrently(work):
        def child() -> np.ndarray:
            together = threading.Barrier(2, timeout=20)  # passes only if two batches run at once
            seen: set[int] = set()

            def batch(session, id_lists, lengths):
                if threading.get_ident() not in seen:
                    seen.add(threading.get_ident())
                    together.wait()
                return work(session, id_lists, lengths)

            parent._run_batch = batch
            return parent.embed(TEXTS[:6])

        return child

    shared = _in_child(concurrently(lambda *args: run_batch(parent, *args)))
    np.testing.assert_allclose(shared, GOLD[:6], atol=1e-4)

    def fails_off_the_main_thread(*args):
        if threading.current_thread() is not threading.main_thread():
            raise EmbeddingError("the model failed on a helper thread")
        return run_batch(parent, *args)

    def child_fails() -> np.ndarray:
        try:
            concurrently(fails_off_the_main_thread)()
        except EmbeddingError as exc:
            return np.array([str(exc) == "the model failed on a helper thread"])
        return np.array([False])

    assert _in_child(child_fails).all()


def test_embed_texts_job_in_process_and_bad_input() -> None:
    saved = get_settings()
    set_settings(settings_for(max_embed_texts=5))
    try:
        result = jobs.embed_texts(["hello world", ""])
        assert set(result) == {"model", "dim", "vectors"} and result["dim"] == 384
        assert np.allclose(np.array(result["vectors"]), get_embedder().embed(["hello world", ""]), atol=1e-6)
        assert jobs.embed_texts([])["vectors"] == []
        with pytest.raises(InvalidArgumentsError, match="list of strings"):
            jobs.embed_texts("just a string")
        with pytest.raises(InvalidArgumentsError, match=r"texts\[1\] must be a string"):
            jobs.embed_texts(["ok", 3])
        with pytest.raises(InvalidArgumentsError):
            jobs.embed_texts({"a": 1})
        with pytest.raises(InputTooLargeError, match="MAX_EMBED_TEXTS"):
            jobs.embed_texts(["x"] * 6)
    finally:
        set_settings(saved)


def test_job_through_real_worker_equals_in_process(redis_conn, start_worker) -> None:
    worker = start_worker()
    status, body = worker.get("/readyz")
    assert status == 200, body
    q = queue(redis_conn)
    small = ["One sentence to embed."]
    big = TEXTS * 2  # 2,240 tokens: enough for the horse to load its own multi-threaded session
    huge = ["a" * 5_000_000]  # one word of 5 MB: the tokenizer sees a bounded prefix (it took 70 s at 50 MB)
    jobs_ = [q.enqueue("worker.jobs.embed_texts", texts) for texts in (small, big, huge)]
    bad = [q.enqueue("worker.jobs.embed_texts", arg) for arg in ("not a list", ["ok", None])]
    wait_for(
        lambda: all(j.get_status(refresh=True) in ("finished", "failed") for j in jobs_ + bad), 60, message="embed jobs"
    )
    same = get_embedder(settings_for(embed_precision="auto"))  # the worker's: EMBED_PRECISION's default
    for job, texts in zip(jobs_, (small, big, huge), strict=True):
        assert job.get_status() == "finished", worker.log()
        result = job.return_value()
        assert result["model"] == "sentence-transformers/all-MiniLM-L6-v2" and result["dim"] == 384
        np.testing.assert_allclose(np.array(result["vectors"], np.float32), same.embed(texts), atol=1e-5)
        counters = Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer).meta["counters"]
        assert counters["embedding_texts"] == len(texts)
        assert counters["embedding_tokens"] == sum(same.count_tokens(texts))
    for job in bad:
        assert job.get_status() == "failed"
        assert "InvalidArgumentsError" in job.latest_result().exc_string
    # The horses' counts reach the daemon's /metrics.
    tokens = sum(sum(same.count_tokens(texts)) for texts in (small, big, huge))

    def metric_line() -> str | None:
        text = worker.get("/metrics")[1]
        line = next((x for x in text.splitlines() if x.startswith("worker_embedding_tokens_total")), "")
        return line if line.endswith(f" {tokens}") else None

    wait_for(metric_line, 10, message=f"worker_embedding_tokens_total {tokens}")


def test_worker_says_which_precision_runs(start_worker, redis_url: str, tmp_path: Path) -> None:
    """The precision that runs and why, in the start line, /healthz, /metrics and `status`: auto
    (the default) as the CPU rule decides, fp32 when asked for."""
    runs, why = ("int8" if int8_here()[0] else "fp32"), f"auto: {int8_here()[1]}"
    auto = start_worker()
    explicit = start_worker({"EMBED_PRECISION": "fp32"})
    for worker, precision, asked, reason in (
        (auto, runs, "auto", why),
        (explicit, "fp32", "fp32", "EMBED_PRECISION=fp32"),
    ):
        body = worker.get("/healthz")[1]
        assert body["embedding"] == {"precision": precision, "asked": asked, "reason": reason}, body
        reason_label = reason.replace('"', '\\"')
        sample = (
            f'worker_embed_precision_info{{worker="{body["worker"]}",precision="{precision}",asked="{asked}",'
            f'reason="{reason_label}"}} 1'
        )
        assert sample in worker.get("/metrics")[1].splitlines()
        assert f"embeddings {precision} ({reason})" in worker.log()  # the start line
    env = worker_env(redis_url, tmp_path, 0, "")
    run = subprocess.run(
        [sys.executable, "-m", "worker", "status"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert f"    embeddings {runs} ({why})" in run.stdout.splitlines(), run.stdout
    assert "    embeddings fp32 (EMBED_PRECISION=fp32)" in run.stdout.splitlines(), run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "worker", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    workers = {w["name"]: w for w in json.loads(run.stdout)["workers"]}
    assert workers[auto.get("/healthz")[1]["worker"]]["embed_precision"] == runs
    assert workers[explicit.get("/healthz")[1]["worker"]]["embed_precision_reason"] == "EMBED_PRECISION=fp32"


def test_readyz_reports_missing_model(start_worker, tmp_path: Path) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    worker = start_worker({"EMBED_MODEL_DIR": str(empty)})
    status, body = worker.get("/readyz")
    assert status == 503 and any("make model" in r for r in body["reasons"]), body


def test_cli_embed(tmp_path: Path, fp32: Embedder) -> None:
    source = tmp_path / "texts.json"
    source.write_text(json.dumps(TEXTS[:6]), encoding="utf-8")
    env = dict(os.environ, EMBED_MODEL_DIR=str(MODEL_DIR))
    env.pop("EMBED_PRECISION", None)
    out = tmp_path / "vectors.npy"
    run = subprocess.run(
        [sys.executable, "-m", "worker", "embed", str(source), "--out", str(out)],
        env=dict(env, EMBED_PRECISION="fp32"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(np.load(out), GOLD[:6], atol=1e-4)
    run = subprocess.run(
        [sys.executable, "-m", "worker", "embed", str(source)], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and len(json.loads(run.stdout)["vectors"]) == 6
    cosine = (np.array(json.loads(run.stdout)["vectors"]) * GOLD[:6]).sum(axis=1)
    assert cosine.min() >= INT8_MIN_COSINE, cosine
    assert run.stderr.rstrip().endswith(f"all-MiniLM-L6-v2 {'int8' if int8_here()[0] else 'fp32'}"), run.stderr
    source.write_text('["fine", 7]', encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "worker", "embed", str(source)], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "texts[1] must be a string" in run.stderr


@pytest.mark.slow  # a second full build; `make test` builds the model once already
def test_model_build_is_deterministic_and_complete(tmp_path: Path) -> None:
    """`make model` again into another directory gives byte-identical files; a complete one is a no-op."""
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    if MODEL_DIR.resolve() != (ROOT / "var" / "model").resolve():
        pytest.skip("EMBED_MODEL_DIR is a user's own model directory")
    tool = [sys.executable, str(ROOT / "tools" / "build_model.py"), "--cache", str(ROOT / "var" / "cache")]
    run = subprocess.run([*tool, "--out", str(MODEL_DIR)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "is complete" in run.stdout
    run = subprocess.run([*tool, "--out", str(tmp_path / "model")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rebuilt = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert rebuilt == manifest
    assert manifest["source"]["model.safetensors_sha256"] == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    )
    tokenizer = json.loads((tmp_path / "model" / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == 256 and tokenizer["padding"] is None


FORK_AND_EXIT = """
import multiprocessing, sys
from worker.embedding import Embedder

embedder = Embedder(sys.argv[1], "fp32", threads=2, session_threads=int(sys.argv[3]))
embedder.embed(["warm the thread pool up"] * 20)

def child():
    if sys.argv[2] == "use":
        assert embedder.embed(["in the child"] * 400).shape == (400, 384)

process = multiprocessing.get_context("fork").Process(target=child)
process.start()
process.join(60)
sys.exit(process.exitcode)
"""


@pytest.mark.parametrize("child", ["use", "idle"])
@pytest.mark.parametrize("parent_threads", [1, 2])
def test_forked_child_exits_cleanly(child: str, parent_threads: int) -> None:
    """No hang and no crash when a forked child (RQ's horse, multiprocessing) ends, used or not.

    Both leave with os._exit. A forked child that runs a normal interpreter exit instead hangs
    or aborts in onnxruntime's static destructors (onnxruntime 1.32), whatever we do.
    """
    run = subprocess.run(
        [sys.executable, "-c", FORK_AND_EXIT, str(MODEL_DIR), child, str(parent_threads)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr


def _full_ids(embedder: Embedder, text: str) -> list[int]:
    """The ids the model would get from tokenizing the whole text (no prefix shortcut)."""
    return embedder._encoder.encode(text).ids


def test_prefix_gives_the_ids_of_the_whole_text(fp32: Embedder) -> None:
    """Edge cases of `_head`: the ids (hence the vectors) equal a full tokenization's."""
    from worker.embedding import HEAD_CHARS

    word99, word101 = "b" * 99, "c" * 101  # 100 characters is WordPiece's limit; past it, one [UNK]
    cases = {
        "words": "river stone market signal garden " * 4000,
        "cut inside a word": "x" * (HEAD_CHARS - 3) + " unbelievably " + "long text " * 3000,
        "long words": (word99 + " " + word101 + " ") * 400,  # few pieces in the first 16 K: the prefix grows
        "blank run": " " * 30_000 + "after the blanks " * 2000,
        "punctuation": "a,b.c;d!" * 5000,
        "cjk": "富士山は日本で最も高い山です。" * 3000,
        "accents and marks": ("e\u0301te\u0301 " * 5000),
    }
    for name, text in cases.items():
        assert len(text) > HEAD_CHARS, name
        head = fp32._head(text)
        assert fp32._encoder.encode(head).ids == _full_ids(fp32, text), name
    np.testing.assert_allclose(
        fp32.embed([cases["long words"]])[0], fp32.embed([cases["long words"][:20_000]])[0], atol=1e-6
    )


def test_one_huge_word_is_bounded(fp32: Embedder) -> None:
    """50 million characters without a blank: one [UNK], tokenized from a bounded prefix."""
    from worker.embedding import MAX_HEAD_CHARS

    huge = "a" * 50_000_000
    assert len(fp32._head(huge)) <= MAX_HEAD_CHARS
    assert fp32.count_tokens([huge]) == [3]  # [CLS] [UNK] [SEP]
    np.testing.assert_allclose(fp32.embed([huge])[0], fp32.embed(["a" * 101])[0], atol=1e-6)
    # The chunker sees whole pages (bounded by MAX_PAGE_CHARS): a page of one huge word is one chunk.
    from worker.chunking import Chunker

    page = "a" * get_settings().max_page_chars
    chunks = Chunker(fp32.tokenizer).chunk_pages([page])
    assert [(c.n_tokens, len(c.text)) for c in chunks] == [(3, len(page))]
    np.testing.assert_allclose(fp32.embed([chunks[0].text])[0], fp32.embed(["a" * 101])[0], atol=1e-6)
