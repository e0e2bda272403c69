"""Dequeue, put-back and recovery, in process against the real test Redis (no worker process).

The end-to-end versions (a worker SIGKILLed mid-job, a Redis restart) are in test_recovery.py;
these pin down each step on its own, fast.
"""

from __future__ import annotations

import pickle
import time

import pytest
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat
from rq.worker import Worker

from tests.conftest import queue
from worker import progress, recovery
from worker.allowlist import GuardedJob
from worker.dequeue import Dequeuer, Mover, inflight_key


def ids(conn, key: str) -> list[str]:
    return [x.decode() for x in conn.lrange(key, 0, -1)]


def register_started(conn, job: Job, worker_name: str) -> None:
    """What a worker leaves in Redis when it dies mid-job: the started-registry entry."""
    with conn.pipeline() as pipe:
        Execution.create(job, ttl=600, pipeline=pipe, worker_name=worker_name)
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        pipe.execute()


def live_worker(conn, name: str) -> None:
    conn.hset(Worker.redis_worker_namespace_prefix + name, mapping={"last_heartbeat": utcformat(now())})


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


def test_restore_inflight_puts_ids_back_at_the_front_in_order(redis_conn):
    q = queue(redis_conn)
    jobs = [q.enqueue("worker.jobs.ping", str(i)) for i in range(4)]
    waiting = q.enqueue("worker.jobs.ping", "waiting")
    key = inflight_key("ghost")
    for _ in jobs:
        redis_conn.lmove(q.key, key, "LEFT", "RIGHT")
    jobs[2].set_status(JobStatus.FINISHED)  # ended after all: not put back
    assert recovery.restore_inflight(redis_conn, key) == 3
    assert q.job_ids == [jobs[0].id, jobs[1].id, jobs[3].id, waiting.id]
    assert redis_conn.llen(key) == 0
    assert jobs[0].get_status(refresh=True) == JobStatus.QUEUED


def test_sweep_puts_back_the_job_of_a_dead_worker_and_leaves_a_live_ones(redis_conn):
    q = queue(redis_conn)
    orphan = q.enqueue("worker.jobs.ping", "orphan")
    busy = q.enqueue("worker.jobs.ping", "running elsewhere")
    waiting = q.enqueue("worker.jobs.ping", "waiting")
    for job in (orphan, busy):
        assert redis_conn.lrem(q.key, 1, job.id) == 1
    register_started(redis_conn, orphan, "dead-worker")
    register_started(redis_conn, busy, "live-worker")
    live_worker(redis_conn, "live-worker")
    done = recovery.sweep(redis_conn, [q], "me", None, 30, 3, job_class=GuardedJob, serializer=JSONSerializer)
    assert done == [(orphan.id, "requeued")]
    assert q.job_ids == [orphan.id, waiting.id]  # at the front
    assert orphan.get_status(refresh=True) == JobStatus.QUEUED
    assert orphan.get_meta(refresh=True)["abandoned"] == 1
    assert busy.get_status(refresh=True) == JobStatus.STARTED
    assert q.started_job_registry.get_job_ids() == [busy.id]


def test_sweep_puts_back_a_job_registered_but_never_started_by_a_dead_worker(redis_conn):
    """A worker killed between registering a job and its horse starting it leaves the job in the
    started registry with status still QUEUED (seen in the chaos run). RQ's own clean-up skips
    such an entry yet drops it: the job would be lost."""
    q = queue(redis_conn)
    limbo = q.enqueue("worker.jobs.ping", "orphan in limbo")
    assert redis_conn.lpop(q.key).decode() == limbo.id
    with redis_conn.pipeline() as pipe:
        Execution.create(limbo, ttl=600, pipeline=pipe, worker_name="ghost-worker")
        pipe.execute()
    assert limbo.get_status(refresh=True) == JobStatus.QUEUED and q.started_job_registry.count == 1
    done = recovery.sweep(redis_conn, [q], "me", None, 30, 3, job_class=GuardedJob, serializer=JSONSerializer)
    assert done == [(limbo.id, "requeued")]
    assert q.job_ids == [limbo.id] and q.started_job_registry.count == 0


def test_sweep_fails_a_job_that_killed_its_worker_max_attempts_times(redis_conn):
    q = queue(redis_conn)
    poison = q.enqueue("worker.jobs.ping", "poison", meta={"abandoned": 1})
    redis_conn.lrem(q.key, 1, poison.id)
    register_started(redis_conn, poison, "dead-worker")
    done = recovery.sweep(redis_conn, [q], "me", None, 30, 2, job_class=GuardedJob, serializer=JSONSerializer)
    assert done == [(poison.id, "failed")]
    assert poison.get_status(refresh=True) == JobStatus.FAILED
    assert "died 2 times" in poison.latest_result().exc_string
    assert len(q) == 0 and q.started_job_registry.count == 0


def test_sweep_skips_the_job_the_sweeper_itself_runs(redis_conn):
    q = queue(redis_conn)
    mine = q.enqueue("worker.jobs.ping", "mine")
    redis_conn.lrem(q.key, 1, mine.id)
    register_started(redis_conn, mine, "me")
    assert recovery.sweep(redis_conn, [q], "me", mine.id, 30, 3, serializer=JSONSerializer, force=True) == []
    assert mine.get_status(refresh=True) == JobStatus.STARTED


def test_sweep_ignores_a_claim_left_by_the_sweepers_own_ended_horse(redis_conn):
    """A horse that lost Redis while writing its job's end leaves its claim behind. Its own worker
    runs one horse at a time, so that horse is gone: the job goes back at once, not after
    DEAD_WORKER_AFTER. A fresh claim of another worker's horse still holds."""
    q = queue(redis_conn)
    mine = q.enqueue("worker.jobs.ping", "mine, its end half-written")
    theirs = q.enqueue("worker.jobs.ping", "a dead worker's horse, writing its end")
    for job, owner in ((mine, "me"), (theirs, "dead-worker")):
        assert redis_conn.lrem(q.key, 1, job.id) == 1
        register_started(redis_conn, job, owner)
    for composite in q.started_job_registry.get_job_and_execution_ids(cleanup=False):
        key = Execution.from_composite_key(":".join(composite), redis_conn).key
        assert recovery.claim_ending(redis_conn, key)
    done = recovery.sweep(redis_conn, [q], "me", None, 30, 3, job_class=GuardedJob, serializer=JSONSerializer)
    assert done == [(mine.id, "requeued")]
    assert q.job_ids == [mine.id] and mine.get_status(refresh=True) == JobStatus.QUEUED
    assert theirs.get_status(refresh=True) == JobStatus.STARTED
    assert q.started_job_registry.get_job_ids() == [theirs.id]


def test_put_back_writes_nothing_until_its_transaction_runs_and_counts_once(redis_conn):
    """A put-back whose transaction fails (Redis went away) and is retried counts `requeued`
    once: the meta is part of the transaction, not written on the side."""
    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.ping", "interrupted", meta={"requeued": 2, "mine": "kept"})
    redis_conn.lrem(q.key, 1, job.id)
    register_started(redis_conn, job, "me")
    meta, raw = recovery.counted(job, "requeued")
    assert meta["requeued"] == 3 and job.meta["requeued"] == 2  # the job object is untouched
    with redis_conn.pipeline() as pipe:  # first attempt: queued, never executed
        recovery.put_back(pipe, job.id, q.key, raw)
        pipe.reset()
    assert job.get_meta(refresh=True)["requeued"] == 2 and len(q) == 0
    assert job.get_status(refresh=True) == JobStatus.STARTED
    with redis_conn.pipeline() as pipe:  # the retry
        recovery.put_back(pipe, job.id, q.key, raw)
        pipe.execute()
    assert job.get_meta(refresh=True) == {"requeued": 3, "mine": "kept"}
    assert q.job_ids == [job.id] and job.get_status(refresh=True) == JobStatus.QUEUED


@pytest.mark.parametrize(
    "meta",
    [{"requeued": "many"}, {"requeued": None}, {"requeued": [1]}],
)
def test_counted_survives_whatever_a_producer_put_in_meta(redis_conn, meta):
    job = queue(redis_conn).enqueue("worker.jobs.ping", "x", meta=meta)
    assert recovery.counted(job, "requeued")[0]["requeued"] == 1


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


def test_a_silent_plain_rq_worker_is_judged_by_rqs_rules_ours_by_heartbeat(redis_conn):
    """A plain `rq worker` heartbeats every 30 s mid-job: silence is not death for it. Ours
    heartbeat from the main loop, so for them it is."""
    from datetime import timedelta

    stale = utcformat(now() - timedelta(seconds=20))
    prefix = Worker.redis_worker_namespace_prefix
    redis_conn.hset(prefix + "plain", mapping={"last_heartbeat": stale})
    redis_conn.hset(prefix + "ours", mapping={"last_heartbeat": stale, recovery.OURS_FIELD: "1"})
    later, earlier = time.time() + 60, time.time() - 1
    assert not recovery.owner_dead(redis_conn, "plain", 5, later)  # its entry has not expired
    assert recovery.owner_dead(redis_conn, "plain", 5, earlier)  # RQ's own rule: the entry expired
    assert recovery.owner_dead(redis_conn, "ours", 5, later)
    assert not recovery.owner_dead(redis_conn, "ours", 60, later)
    assert recovery.owner_dead(redis_conn, "gone", 5, later)  # its worker key expired
    redis_conn.hset(prefix + "plain", "death", utcformat(now()))
    assert recovery.owner_dead(redis_conn, "plain", 5, later)


def test_rq_internals_this_package_uses_are_all_there():
    """RQ is pinned; an upgrade that removes or renames an internal we override fails here."""
    from worker import rqcompat

    assert rqcompat.missing() == []
