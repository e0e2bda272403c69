"""Taking jobs off the queues (worker/dequeue.py), in process against the real test Redis."""

from __future__ import annotations

import pytest
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

from tests.conftest import ids, queue
from worker.allowlist import GuardedJob
from worker.dequeue import Dequeuer, Mover, inflight_key


def test_mover_takes_in_strict_priority_order(redis_conn):
    for name, n in (("low", 2), ("high", 1), ("default", 1)):
        for i in range(n):
            redis_conn.rpush(f"rq:queue:{name}", f"{name}-{i}")
    move = Mover(redis_conn)
    keys = ["rq:queue:high", "rq:queue:default", "rq:queue:low"]
    taken = [move(keys, "worker:inflight:me") for _ in range(5)]
    assert [t[1] if t else None for t in taken] == ["high-0", "default-0", "low-0", "low-1", None]
    assert ids(redis_conn, "worker:inflight:me") == ["high-0", "default-0", "low-0", "low-1"]


def test_dequeuer_hands_jobs_in_order_and_keeps_them_in_flight(redis_conn):
    high, low = queue(redis_conn, "high"), queue(redis_conn, "low")
    a = low.enqueue("worker.jobs.ping", "a")
    b = high.enqueue("worker.jobs.ping", "b")
    d = Dequeuer(redis_conn, inflight_key("me"), 1, GuardedJob, JSONSerializer)
    job, q = d.next([high, low], burst=True)
    assert (job.id, q.name) == (b.id, "high")
    assert ids(redis_conn, inflight_key("me")) == [b.id]  # until prepare_execution takes it out
    job, q = d.next([high, low], burst=True)
    assert (job.id, q.name) == (a.id, "low")
    assert d.next([high, low], burst=True) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", "abc"),
        ("status", "bogus"),
        ("created_at", "yesterday"),
        ("retries_left", "x"),
        ("retry_intervals", "["),
        ("description", b"\xff\xfe"),
    ],
)
def test_dequeuer_fails_an_unreadable_job_visibly_and_skips_a_deleted_one(redis_conn, field, value):
    q = queue(redis_conn)
    gone = q.enqueue("worker.jobs.ping", "deleted while queued")
    bad = q.enqueue("worker.jobs.ping", "garbled")
    good = q.enqueue("worker.jobs.ping", "fine")
    redis_conn.delete(gone.key)
    redis_conn.hset(bad.key, field, value)
    d = Dequeuer(redis_conn, inflight_key("me"), 1, GuardedJob, JSONSerializer)
    job, _ = d.next([q], burst=True)
    assert job.id == good.id
    assert ids(redis_conn, inflight_key("me")) == [good.id]
    # the client polling the bad job sees it failed, and why; it is in the failed registry
    assert redis_conn.hget(bad.key, "status") == b"failed"
    exc_string = Result.fetch_latest(Job(bad.id, connection=redis_conn), serializer=JSONSerializer).exc_string
    assert exc_string.startswith("worker.errors.UnreadableJobError: this worker cannot read")
    assert bad.id in q.failed_job_registry
