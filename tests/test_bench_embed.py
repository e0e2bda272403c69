"""The embeddings benchmark's chunk-length corpus is what it says: texts of 150 to 256 word pieces
as the model sees them, cut by the worker's own Chunker, the same every time."""

from __future__ import annotations

from bench import bench_embed
from tests.conftest import MODEL_DIR
from worker.embedding import Embedder


def test_chunk_corpus_lengths_and_determinism() -> None:
    texts = bench_embed.chunk_corpus(60)
    assert len(texts) == 60
    lengths = Embedder(MODEL_DIR, "fp32").count_tokens(texts)
    low, high = bench_embed.CHUNK_RANGE
    assert all(low <= n <= high for n in lengths), (min(lengths), max(lengths))
    assert sum(lengths) / len(lengths) > 200  # chunks, not sentences (the short corpus has mean ~34)
    assert bench_embed.chunk_corpus(60) == texts
    short = bench_embed.corpus(100)
    assert max(Embedder(MODEL_DIR, "fp32").count_tokens(short)) <= high and not set(short) & set(texts)
