"""What a job reports through its meta (worker/progress.py), read back by the daemon."""

from __future__ import annotations

import pickle

from tests.conftest import queue
from worker import progress


def test_counters_read_back_are_known_finite_numbers_only(redis_conn):
    q = queue(redis_conn)
    job = q.enqueue(
        "worker.jobs.ping",
        "x",
        meta={"counters": {"pages": 3, "chunks": float("nan"), "bogus": 5, "embedding_tokens": -4, "chunks ": 1}},
    )
    assert progress.read_counters(job) == {"pages": 3}
    job.meta["counters"] = [1, 2]
    job.save_meta()
    assert progress.read_counters(job) == {}
    redis_conn.hset(job.key, "meta", pickle.dumps({"counters": {"pages": 1}}))  # pickle under JSON
    assert progress.read_counters(job) == {}
    job.meta = {"counters": {"pages": 7}, "other": 1}
    job.save_meta()
    progress.reset_counters(job)
    assert job.get_meta(refresh=True) == {"other": 1}
