"""Sentence embeddings: all-MiniLM-L6-v2 as ONNX, run with onnxruntime, tokenizers and numpy.

What `embed` does, and why:
- Tokenize with the model's `tokenizer.json`, truncating at 256 word pieces (the model's
  window, as sentence-transformers does). Longer texts are embedded from their first 256
  pieces; chunk them first to embed all of them (the chunker uses `Embedder.tokenizer`, which
  never truncates). A very long text is tokenized from a prefix only (`_head`).
- An empty string (or one that is only whitespace) becomes `[CLS] [SEP]` and gets the same
  fixed vector sentence-transformers gives it: never an error, never a zero vector.
- Sort by length, then cut batches so that batch size x longest text stays within
  `EMBED_BATCH_TOKENS`: no padding beyond each batch, bounded memory; the vectors do
  not depend on how texts were batched (int8 too: its activation scales are per token).
- The graph returns the last hidden state; mean pooling over the attention mask and L2
  normalization happen here in numpy. Results come back in input order.

Threads: one session with ONE intra-op thread, and the batches of a call shared among
`threads` Python threads (`_share`; onnxruntime releases the GIL and Run is thread-safe). Each
batch runs whole on one core, so no core waits for another at every operator: int8 runs
clearly faster than on one session with an intra-op thread pool, fp32 no slower (docs/benchmarks.md,
"Threads"), and a thread the job takes for reading pages slows one batch, not all.

Fork: RQ forks a work-horse per job. An onnxruntime session created in the parent keeps
working in a forked child, but single-threaded whatever it was configured with; a single-threaded
session loses nothing. So the daemon `preload`s the session before forking, and every horse runs
on it, whatever the size of its input: no model load in a horse. A session with a thread pool
(only when asked for, `session_threads`) is replaced in a child, and an inherited session is
never destroyed in the child (see `_abandon`). The horse leaves with os._exit, as
multiprocessing's children do; that matters: a forked child that runs a normal interpreter exit
hangs or aborts in onnxruntime's static destructors (onnxruntime 1.32), whatever is done here.
The figures are in docs/benchmarks.md ("Embeddings", "Fork").
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import platform
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worker.errors import EmbeddingError, ModelUnavailableError
from worker.settings import MODEL_WINDOW, Settings, get_settings

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# The graphs `make model` builds, by name: fp32, int8 (8-bit weights) and int8 with 7-bit weights,
# which x86-64 CPUs without VNNI multiply exactly ("int8 by CPU" below).
MODEL_FILES = {"fp32": "model.onnx", "int8": "model-int8.onnx", "int8-w7": "model-int8-w7.onnx"}
PRECISION_OF = {"fp32": "fp32", "int8": "int8", "int8-w7": "int8"}  # what each graph reports
PRECISIONS = ("auto", "fp32", "int8")  # what EMBED_PRECISION accepts
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
DEFAULT_MAX_LENGTH = MODEL_WINDOW  # when the model's manifest does not say
# EMBED_BATCH_TOKENS's default, as its setting declares it (a dataclass field's default is the
# class attribute). Why that size: docs/design/embeddings.md ("Chunk-length texts").
DEFAULT_BATCH_TOKENS: int = Settings.embed_batch_tokens
# onnxruntime's intra-op threads spin between parallel sections by default. Spinning made embedding
# alone a little faster, but ingest_pdf slower: the spinning threads took the core pages were read
# on. CPU spent spinning also counts against a container's CPU limit. So it is off for a session
# given a thread pool (the default session has none; figures: docs/benchmarks.md, "Ingestion and search").
ALLOW_SPINNING = "0"
# Texts longer than this are tokenized from a prefix when it holds enough word pieces: the model
# keeps only its window's worth, and tokenizing a huge text in full takes seconds, deaf to the job
# timeout while in Rust (docs/benchmarks.md, "Embeddings"). The prefix grows 4x at a time up to
# MAX_HEAD_CHARS.
HEAD_CHARS = 16_384
MAX_HEAD_CHARS = 262_144


# -- int8 by CPU ---------------------------------------------------------------------------
# The int8 graphs multiply uint8 activations by int8 weights (MatMulIntegerToFloat). onnxruntime computes
# that exactly with VNNI (x86-64: avx512_vnni or avx_vnni) and on arm64 (32-bit dot products;
# speed not measured by us: only with asimddp, whose SDOT/UDOT make int8 worthwhile): there the
# graph with 8-bit weights, model-int8.onnx, runs. On x86-64 without VNNI (AVX2, or AVX-512BW
# without VNNI) its u8 x s8 kernel (vpmaddubsw) adds pairs of products in saturating 16-bit
# lanes: 8-bit weights drift below the stated accuracy there, 7-bit ones cannot saturate
# (2 x 255 x 63 < 32,767). So those CPUs run model-int8-w7.onnx: exact, a little less accurate
# than 8-bit weights and faster than fp32 since a batch runs whole on one core (`_share`).
# x86-64 without AVX2 and other machines run fp32. The figures per CPU are in
# docs/design/embeddings.md, "int8 by CPU".
X86_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
X86_INT8_W7_FLAGS = frozenset({"avx2"})
ARM_INT8_FLAGS = frozenset({"asimddp"})  # SDOT/UDOT (ARMv8.2 dot product)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags: `flags` (x86) or `Features` (arm64) in /proc/cpuinfo; empty if unreadable."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def int8_decision(flags: set[str] | frozenset[str], machine: str) -> tuple[str | None, str]:
    """(the int8 graph this CPU runs exactly and faster than fp32, or None; why), from its flags
    and `platform.machine()`."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64"):
        found = sorted(X86_INT8_FLAGS & set(flags))
        if found:
            return "int8", f"x86-64 with {', '.join(found)}"
        if set(flags) >= X86_INT8_W7_FLAGS:
            return "int8-w7", "x86-64 with avx2, no VNNI: int8 with 7-bit weights, exact there"
        return None, "x86-64 without AVX2: int8 not expected faster than fp32"
    if machine in ("aarch64", "arm64"):
        if ARM_INT8_FLAGS & set(flags):
            return "int8", "arm64 with asimddp"
        return None, "arm64 without the dot-product instructions (asimddp): int8 not expected faster than fp32"
    return None, f"int8 not validated on {machine or 'this machine'}"


@functools.cache
def int8_here() -> tuple[str | None, str]:
    """`int8_decision` for this machine (read once per process)."""
    return int8_decision(cpu_flags(), platform.machine())


def choose_graph(asked: str, int8_graph: str | None, why: str) -> tuple[str, str]:
    """(the graph that runs, a key of MODEL_FILES, and why) when `asked` (auto, fp32, int8) is
    asked for on a CPU where `int8_decision` said (`int8_graph`, `why`). auto: int8 where it is
    exact and faster, else fp32."""
    if asked == "fp32":
        return "fp32", "EMBED_PRECISION=fp32"
    if asked == "int8":
        if int8_graph:
            return int8_graph, f"EMBED_PRECISION=int8, {why}"
        return "fp32", f"EMBED_PRECISION=int8, but {why}"
    if asked == "auto":
        return (int8_graph or "fp32"), f"auto: {why}"
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {asked!r}")


def graph_choice(asked: str, model_dir: Path | str | None = None) -> tuple[str, str]:
    """`choose_graph` on this machine. auto runs fp32 when `model_dir` lacks the int8 graph (a
    model of one's own exported in fp32 only, or a directory built before the 7-bit graph)."""
    graph, why = choose_graph(asked, *int8_here())
    if asked == "auto" and graph != "fp32" and model_dir is not None and _missing_files(Path(model_dir), graph):
        return "fp32", f"auto: no {MODEL_FILES[graph]} in the model directory"
    return graph, why


def precision_choice(asked: str, model_dir: Path | str | None = None) -> tuple[str, str]:
    """(the precision that runs, fp32 or int8, and why) when `asked` is asked for on this machine."""
    graph, why = graph_choice(asked, model_dir)
    return PRECISION_OF[graph], why


def _missing_files(model_dir: Path, graph: str) -> list[str]:
    wanted = (MODEL_FILES.get(graph, MODEL_FILES["fp32"]), TOKENIZER_FILE)
    return [name for name in wanted if not (model_dir / name).is_file()]


def _unavailable(model_dir: Path, detail: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"embedding model unavailable in {model_dir}: {detail}; run `make model` "
        f"(or point EMBED_MODEL_DIR at a directory with model.onnx and tokenizer.json)"
    )


def load_tokenizer(model_dir: Path | str, max_length: int | None = None) -> Tokenizer:
    """The model's tokenizer, never padding, truncating at `max_length` word pieces when given
    (the embedder's encoder), else never (chunking, which needs every piece)."""
    from tokenizers import Tokenizer  # here: importing this module does not load tokenizers

    model_dir = Path(model_dir)
    try:
        tok = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        if max_length is None:
            tok.no_truncation()
        else:
            tok.enable_truncation(max_length)
        tok.no_padding()
    except Exception as exc:  # missing or unreadable: tokenizers raises plain Exception
        raise _unavailable(model_dir, f"cannot read {TOKENIZER_FILE}: {exc}") from None
    return tok


def model_available(settings: Settings | None = None) -> tuple[bool, str]:
    """Cheap readiness check (no I/O beyond stat): are the model files there?"""
    settings = settings or get_settings()
    model_dir = Path(settings.embed_model_dir)
    missing = _missing_files(model_dir, graph_choice(settings.embed_precision, model_dir)[0])
    if missing:
        return False, f"model files missing in {model_dir}: {', '.join(missing)} (run `make model`)"
    return True, "ok"


class Embedder:
    """One loaded model: `embed(texts)` -> (n, dim) float32, L2-normalized, in input order."""

    def __init__(
        self,
        model_dir: Path | str,
        precision: str = "fp32",
        threads: int = 1,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        session_threads: int | None = None,
        check_cpu: bool = True,
    ) -> None:
        """`precision` is what is asked for (auto, fp32, int8); `self.precision` is what runs, and
        `self.precision_reason` why (`precision_choice`); `self.graph` is the graph (a key of
        MODEL_FILES). int8 asked for on a CPU where no int8 graph is exact and faster
        (`int8_decision`) runs fp32, with a warning. With `check_cpu` False, the graph named runs
        whatever the CPU (tests and benchmarks that measure a graph itself: int8, int8-w7).
        `threads` batches run at once, each on one core; `session_threads` > 1 gives a session a
        thread pool instead (benchmarks compare the two)."""
        self.model_dir = Path(model_dir)
        if precision not in PRECISIONS and (check_cpu or precision not in MODEL_FILES):
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.requested_precision = precision
        if check_cpu or precision == "auto":
            graph, self.precision_reason = graph_choice(precision, self.model_dir)
        else:
            graph, self.precision_reason = precision, f"{precision}, CPU not checked"
        if self.requested_precision == "int8" and graph == "fp32":
            log.warning("EMBED_PRECISION=int8 asked for, running fp32 instead: %s", int8_here()[1])
        missing = _missing_files(self.model_dir, graph)
        if missing:
            raise _unavailable(self.model_dir, f"missing {', '.join(missing)}")
        manifest = self._read_manifest()
        self.graph = graph
        self.precision = PRECISION_OF[graph]
        self.threads = max(1, threads)
        self.batch_tokens = max(1, batch_tokens)
        self.model_name: str = manifest.get("model", self.model_dir.name)
        self.max_length: int = int(manifest.get("max_length", DEFAULT_MAX_LENGTH))
        files = manifest.get("precisions", MODEL_FILES)
        self.model_path = self.model_dir / files.get(graph, MODEL_FILES[graph])
        # `tokenizer` never truncates (chunking needs every token's offsets); `_encoder` does.
        self.tokenizer = load_tokenizer(self.model_dir)
        self._encoder = load_tokenizer(self.model_dir, self.max_length)
        self._session_threads = 0
        self._session_pid = 0
        self._session = self._new_session(session_threads or 1)
        _instances.add(self)
        inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise _unavailable(self.model_dir, f"model inputs {sorted(inputs)} lack input_ids/attention_mask")
        self._wants_token_types = "token_type_ids" in inputs
        output = self._session.get_outputs()[0]
        self._output = output.name
        shape_dim = output.shape[-1] if output.shape and isinstance(output.shape[-1], int) else None
        self.dim: int = int(manifest.get("dim") or shape_dim or self.embed([""]).shape[1])

    def _read_manifest(self) -> dict:
        path = self.model_dir / MANIFEST_FILE
        if not path.is_file():  # a user's own export may come without one
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise _unavailable(self.model_dir, f"bad {MANIFEST_FILE}: {exc}") from exc

    def _new_session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", ALLOW_SPINNING)
        started = time.perf_counter()
        try:
            session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types vary by version
            raise _unavailable(self.model_dir, f"cannot load {self.model_path.name}: {exc}") from exc
        self._session_threads, self._session_pid = threads, os.getpid()
        log.debug("loaded %s, %d threads, in %.3fs", self.model_path.name, threads, time.perf_counter() - started)
        return session

    def _session_for(self):
        """This process's session. One inherited across fork with a thread pool lost its threads:
        it is replaced by a single-threaded one (a single-threaded session works as it did)."""
        if self._session_pid != os.getpid() and self._session_threads > 1:
            _abandon(self._session)
            self._session = self._new_session(1)
        return self._session

    # -- public --------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model sees per text: special tokens included, truncated at max_length."""
        return [len(e.ids) for e in self._encode(list(texts))]

    def _head(self, text: str) -> str:
        """`text`, or a prefix of it that yields the same first `max_length` word pieces.

        Normalization and pre-tokenization work character by character and word by word, so a
        prefix tokenizes like the text except for its last, possibly cut, word: a prefix whose
        pieces before that word fill the window gives exactly the text's pieces. The prefix grows
        from HEAD_CHARS until it does, and stops at MAX_HEAD_CHARS whatever the text: a text with
        fewer pieces than that in its first 262,144 characters (huge "words", each one [UNK] past
        100 characters, or long runs of blanks) is embedded from those characters. The tokenizer
        never sees more than that, so a 50 MB word costs what 256 KB costs.
        """
        limit = HEAD_CHARS
        while len(text) > limit:
            head = text[:limit]
            if limit >= MAX_HEAD_CHARS or self._fills_window(head):
                return head
            limit *= 4
        return text

    def _fills_window(self, head: str) -> bool:
        """Do the word pieces of `head` before its last word fill the model's window?"""
        enc = self.tokenizer.encode(head, add_special_tokens=False)
        need = self.max_length - self._encoder.num_special_tokens_to_add(False)
        if len(enc.ids) <= need:
            return False
        word_ids = enc.word_ids
        return word_ids.index(word_ids[-1]) >= need  # pieces of one word are adjacent

    def _encode(self, texts: list[str]) -> list:
        texts = [self._head(t) for t in texts]
        # encode_batch runs on tokenizers' thread pool; once a process has used it, forked
        # children run single-threaded (and warn). Few texts (the parent's warm-up, a query)
        # don't need it.
        if len(texts) < 8:
            return [self._encoder.encode(t) for t in texts]
        return self._encoder.encode_batch(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_counted(texts)[0]

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Vectors (n, dim) float32 L2-normalized in input order, and the tokens processed."""
        if isinstance(texts, str):
            raise TypeError("embed takes a list of strings, not a string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32), 0
        return self.embed_ids([e.ids for e in self._encode(texts)])

    def embed_ids(self, id_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
        """`embed_counted` for texts already tokenized by this model's tokenizer, special tokens
        included (what `ChunkStream` hands out): the same vectors, without tokenizing again.
        A list longer than the model's window is cut as the tokenizer cuts it (its [SEP] kept)."""
        if not id_lists:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32), 0
        id_lists = [ids if len(ids) <= self.max_length else [*ids[: self.max_length - 1], ids[-1]] for ids in id_lists]
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        total = int(lengths.sum())
        session = self._session_for()
        # The single-threaded session runs batches on several threads at once (module docstring).
        # Cut the input so that each thread gets a batch: a one-page document uses every core.
        workers = self.threads if self._session_threads == 1 and len(id_lists) > 1 else 1
        # EMBED_BATCH_TOKENS bounds the padded tokens in flight: each of the threads' batches gets its share.
        budget = min(max(1, self.batch_tokens // workers), -(-total // workers))
        batches = list(token_batches(lengths, budget, workers))
        pooled: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, their vectors); append is thread-safe

        def run(rows: np.ndarray) -> None:
            pooled.append((rows, self._run_batch(session, [id_lists[i] for i in rows], lengths[rows])))

        _share(batches, run, min(workers, len(batches)))
        vectors = np.empty((len(id_lists), pooled[0][1].shape[1]), np.float32)
        for rows, part in pooled:
            vectors[rows] = part
        return l2_normalize(vectors), total

    def _run_batch(self, session, id_lists: list[Sequence[int]], lengths: np.ndarray) -> np.ndarray:
        """Mean-pooled (not yet normalized) vectors of one batch, padded to its longest text."""
        width = int(lengths.max())
        ids = np.zeros((len(id_lists), width), np.int64)
        mask = np.zeros((len(id_lists), width), np.int64)
        for r, (row, n) in enumerate(zip(id_lists, lengths, strict=True)):
            ids[r, :n] = row
            mask[r, :n] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._wants_token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        try:
            hidden = session.run([self._output], feeds)[0]
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise  # a job timeout, MemoryError: not the model's failure
            raise EmbeddingError(
                f"the model failed on {len(id_lists)} texts of up to {width} word pieces: {type(exc).__name__}: {exc}"
            ) from None
        return mean_pool(hidden, mask)


def _share(batches: list[np.ndarray], run, workers: int) -> None:
    """`run` every batch, on this thread and `workers - 1` more, each taking the next batch left.
    The first failure is raised here; the others stop taking batches (a job timeout raised in this
    thread stops them too, at the end of the batch they are running)."""
    if workers <= 1:
        for rows in batches:
            run(rows)
        return
    pending = list(reversed(batches))
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                if not pending:
                    return
                rows = pending.pop()
            try:
                run(rows)
            except BaseException:
                with lock:
                    pending.clear()
                raise

    pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="embed")
    try:
        helpers = [pool.submit(drain) for _ in range(workers - 1)]
        drain()
        for helper in helpers:
            helper.result()
    finally:
        with lock:
            pending.clear()
        pool.shutdown(wait=False)


def token_batches(lengths: np.ndarray, budget: int, workers: int = 1) -> Iterator[np.ndarray]:
    """Row indices, longest first, cut so that rows x longest row <= budget (at least one row).

    With `workers` threads taking the batches in turn (`_share`), the last batches shrink: none
    takes more than a (2 x workers)th of the tokens left. So the threads finish a call together,
    and its end leaves a core idle for the time of a short batch, not of a full one (ingest makes
    a call per document and more: docs/benchmarks.md, "Ingest with defaults against the plain script").
    """
    order = np.argsort(-lengths, kind="stable")
    left = int(lengths.sum())
    start = 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)
        tokens = budget if workers <= 1 else min(budget, max(width, left // (2 * workers)))
        rows = order[start : start + max(1, tokens // width)]
        yield rows
        left -= int(lengths[rows].sum())
        start += len(rows)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the tokens the attention mask keeps (as sentence-transformers' Pooling)."""
    weights = mask.astype(np.float32)
    summed = np.einsum("bsd,bs->bd", hidden, weights)
    return summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# -- fork safety -----------------------------------------------------------------------------
_instances: weakref.WeakSet[Embedder] = weakref.WeakSet()


def _abandon(session) -> None:
    """Never destroy a session inherited across fork: its destructor joins thread-pool threads that
    exist only in the parent, and hangs forever (seen here). One extra reference keeps it alive
    until the process ends; its memory is the parent's, shared copy-on-write."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(session))


def _after_fork_in_child() -> None:
    for embedder in list(_instances):
        if embedder._session_threads > 1:  # would hang if dropped here, even if never used here
            _abandon(embedder._session)


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- one embedder per process and model ----------------------------------------------------
_cache: dict[tuple[str, str], Embedder] = {}
_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_lock", threading.Lock()))


def _key(settings: Settings) -> tuple[str, str]:
    return str(Path(settings.embed_model_dir).resolve()), settings.embed_precision


def get_embedder(settings: Settings | None = None) -> Embedder:
    """The process's embedder for the settings' model and precision, loaded on first use.

    Inherited across fork: a forked horse reuses the parent's (see the module docstring).
    """
    return _cached(settings or get_settings())


def preload(settings: Settings | None = None) -> Embedder:
    """Load the model in a process that will fork (the daemon), warmed up.

    The parent itself never embeds; its horses inherit this embedder and its session.
    """
    return _cached(settings or get_settings(), warm=True)


def _cached(settings: Settings, warm: bool = False) -> Embedder:
    key = _key(settings)
    with _lock:
        embedder = _cache.get(key)
        if embedder is None:
            embedder = Embedder(
                key[0],
                settings.embed_precision,
                settings.threads_per_process(),
                settings.embed_batch_tokens,
            )
            if warm:
                embedder.embed(["warm up"])  # first run allocates; do it once here, not in every horse
            _cache[key] = embedder
        return embedder
