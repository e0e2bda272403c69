"""The precision benchmark reads Cranfield as its files define it and scores nDCG@10 right; and on
a small slice of it, int8 retrieves what fp32 retrieves."""

from __future__ import annotations

import numpy as np
import pytest

from bench import bench_precision
from tests.conftest import MODEL_DIR
from worker.embedding import Embedder

DATA = bench_precision.DATA


def test_ndcg_by_hand() -> None:
    gains = {1: {2: 4, 3: 1}, 2: {}}  # query 2 has nothing relevant: left out of the mean
    perfect = np.array([[0.0, 0.9, 0.5, 0.1], [0.1, 0.2, 0.3, 0.4]])  # documents 1..4
    assert bench_precision.ndcg(perfect, gains, k=2) == pytest.approx(1.0)
    swapped = np.array([[0.0, 0.5, 0.9, 0.1], [0, 0, 0, 0]])
    ideal = 4 + 1 / np.log2(3)
    assert bench_precision.ndcg(swapped, gains, k=2) == pytest.approx((1 + 4 / np.log2(3)) / ideal)
    owner = np.array([0, 0, 1])  # document 1 has two chunks: its best one counts
    scores = bench_precision.doc_scores(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)[[0, 1, 1]], owner, 2)
    np.testing.assert_array_equal(scores, [[1, 0], [1, 1]])


@pytest.mark.skipif(not (DATA / "cranqrel").is_file(), reason="the Cranfield collection is not beside the repo")
def test_cranfield_as_read_and_int8_agrees_on_a_slice() -> None:
    texts, queries, gains = bench_precision.load(DATA)
    assert (len(texts), len(queries)) == (1400, 225)  # queries numbered 1..225 in file order
    assert sum(len(v) for v in gains.values()) == 1612  # grades 1..4; -1 (not relevant) dropped
    assert set().union(*(v.values() for v in gains.values())) == {1, 2, 3, 4}
    assert texts[0].startswith("experimental investigation of the aerodynamics of a wing in a slipstream .")
    # The first 20 queries against the documents judged for them: int8 ranks them as fp32 does.
    queries = queries[:20]
    docs = sorted({d for q in range(1, 21) for d in gains.get(q, {})})
    local = {q: {docs.index(d) + 1: g for d, g in gains[q].items()} for q in range(1, 21) if q in gains}
    ranks = {}
    for precision in ("fp32", "int8"):
        # as the worker runs it: the int8 graph this CPU runs exactly (8-bit weights with VNNI, 7-bit without)
        embedder = Embedder(MODEL_DIR, precision, threads=2)
        vectors = embedder.embed([texts[d - 1] for d in docs])
        ranks[precision] = bench_precision.ndcg(embedder.embed(queries) @ vectors.T, local)
    assert ranks["fp32"] > 0.5  # the model finds the judged documents among themselves
    assert abs(ranks["int8"] - ranks["fp32"]) <= 0.02, ranks
