"""The lifecycle's transitions against entries that are no job, in process against the real test
Redis: each one goes to quarantine or fails its job with a typed reason, and the rest goes on."""

from __future__ import annotations

import json

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import Worker

from tests.conftest import ids, live_worker, queue, register_started
from worker import lifecycle, recovery
from worker.allowlist import GuardedJob
from worker.dequeue import Dequeuer, inflight_key


def quarantined(conn) -> list[dict]:
    return [json.loads(x) for x in conn.lrange(lifecycle.QUARANTINE_KEY, 0, -1)]


def test_an_id_rq_refuses_is_quarantined_and_the_next_job_is_handed_out(redis_conn):
    q = queue(redis_conn)
    redis_conn.rpush(q.key, "bad id!")
    redis_conn.hset("rq:job:bad id!", mapping={"status": "queued", "origin": "default"})
    good = q.enqueue("worker.jobs.ping", "after")
    d = Dequeuer(redis_conn, inflight_key("me"), 1, GuardedJob, JSONSerializer)
    job, _ = d.next([q], burst=True)
    assert job.id == good.id
    assert ids(redis_conn, inflight_key("me")) == [good.id]
    [entry] = quarantined(redis_conn)
    assert entry["entry"] == "bad id!" and entry["from"] == inflight_key("me")


def test_restore_inflight_quarantines_an_id_rq_refuses_and_restores_the_rest(redis_conn):
    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.ping", "x")
    key = inflight_key("dead")
    redis_conn.lmove(q.key, key, "LEFT", "RIGHT")
    redis_conn.rpush(key, "bad id!")
    redis_conn.hset("rq:job:bad id!", mapping={"status": "queued", "origin": "default"})
    assert lifecycle.restore_inflight(redis_conn, key) == 1
    assert q.job_ids == [job.id]  # and "bad id!" never back at the front of the queue
    assert redis_conn.llen(key) == 0
    assert [e["entry"] for e in quarantined(redis_conn)] == ["bad id!"]


def test_fail_unreadable_of_a_scheduled_id_rq_refuses_quarantines_it(redis_conn):
    q = queue(redis_conn)
    redis_conn.zadd(q.scheduled_job_registry.key, {"bad id!": 1})
    lifecycle.fail_unreadable(redis_conn, q, "bad id!", ValueError("x"), JSONSerializer)
    assert redis_conn.zcard(q.scheduled_job_registry.key) == 0
    assert quarantined(redis_conn)[0]["from"] == q.scheduled_job_registry.key


def test_a_sweep_goes_past_entries_that_are_no_job_and_recovers_the_real_one(redis_conn):
    q = queue(redis_conn)
    orphan = q.enqueue("worker.jobs.ping", "orphan")
    redis_conn.lrem(q.key, 1, orphan.id)
    register_started(redis_conn, orphan, "dead-worker")
    registry = q.started_job_registry.key
    redis_conn.zadd(registry, {"a:b:c": 1, b"\xff\xfe:x": 2, "bad id!:x": 3})
    # a registered worker whose heartbeat nobody can read: dead, not a reason to stop the sweep
    garbled = Worker.redis_worker_namespace_prefix + "garbled"
    redis_conn.hset(garbled, mapping={"last_heartbeat": "yesterday", recovery.OURS_FIELD: "1"})
    redis_conn.sadd("rq:workers", garbled)
    redis_conn.rpush(inflight_key("garbled"), "bad id!")
    done = recovery.sweep(redis_conn, [q], "me", None, 30, 3, job_class=GuardedJob, serializer=JSONSerializer)
    assert done == [(orphan.id, "requeued")]
    assert q.job_ids == [orphan.id]
    assert redis_conn.zcard(registry) == 0
    assert len(quarantined(redis_conn)) == 4  # three registry members, one in-flight id


def test_a_started_job_whose_hash_cannot_be_read_is_failed_by_the_sweep(redis_conn):
    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.ping", "x")
    redis_conn.lrem(q.key, 1, job.id)
    register_started(redis_conn, job, "dead-worker")
    redis_conn.hset(job.key, "created_at", "yesterday")
    assert recovery.sweep(redis_conn, [q], "me", None, 30, 3, job_class=GuardedJob, serializer=JSONSerializer) == []
    assert redis_conn.hget(job.key, "status") == b"failed"
    assert job.id in q.failed_job_registry
    assert redis_conn.zcard(q.started_job_registry.key) == 0


def test_a_worker_whose_heartbeat_is_unreadable_counts_as_dead(redis_conn):
    live_worker(redis_conn, "fine")
    redis_conn.hset(Worker.redis_worker_namespace_prefix + "garbled", "last_heartbeat", b"\xff")
    assert recovery.worker_alive(redis_conn, "fine", 30)
    assert not recovery.worker_alive(redis_conn, "garbled", 30)
    assert recovery.owner_dead(redis_conn, "garbled", 30, float("inf"))


def test_counted_replaces_meta_that_is_not_a_dict(redis_conn):
    q = queue(redis_conn)
    for odd in ([1, 2], None, 3, "text"):
        job = q.enqueue("worker.jobs.ping", "x")
        redis_conn.hset(job.key, "meta", json.dumps(odd))
        job = Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer)
        meta, raw = lifecycle.counted(job, "requeued")
        assert meta == {"requeued": 1} and json.loads(raw) == meta, odd


def test_started_jobs_leave_the_inflight_list_in_the_same_transaction(redis_conn):
    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.ping", "x")
    key = inflight_key("me")
    redis_conn.lmove(q.key, key, "LEFT", "RIGHT")
    with redis_conn.pipeline() as pipe:
        execution = lifecycle.start(pipe, job, key, 60, "me")
        assert redis_conn.llen(key) == 1  # nothing written before the transaction runs
        pipe.execute()
    assert redis_conn.llen(key) == 0
    assert q.started_job_registry.get_job_ids() == [job.id]
    assert redis_conn.hget(execution.key, "worker_name") == b"me"
    assert Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer).get_status() == JobStatus.QUEUED


def test_a_queued_hash_without_data_is_failed_not_dropped(redis_conn):
    """RQ takes a hash with no `data` for no job at all: dropping its id lost the job (fuzzer)."""
    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.ping", "x")
    redis_conn.hdel(job.key, "data")
    d = Dequeuer(redis_conn, inflight_key("me"), 1, GuardedJob, JSONSerializer)
    assert d.next([q], burst=True) is None
    assert redis_conn.hget(job.key, "status") == b"failed"
    assert job.id in q.failed_job_registry and redis_conn.llen(inflight_key("me")) == 0


def test_retries_and_repeats_a_job_asks_for_are_bounded(redis_conn):
    from worker.allowlist import MAX_RETRIES_OR_REPEATS

    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.ping", "x")
    redis_conn.hset(job.key, mapping={"retries_left": 10**12, "repeats_left": 10**12})
    job = GuardedJob.fetch(job.id, connection=redis_conn, serializer=JSONSerializer)
    assert job.retries_left == job.repeats_left == MAX_RETRIES_OR_REPEATS


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
