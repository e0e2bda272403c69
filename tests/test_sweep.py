"""Recovery sweeps (worker/recovery.py), in process against the real test Redis; the end-to-end
versions (a worker SIGKILLed mid-job, a Redis restart) are in test_recovery.py."""

from __future__ import annotations

import time

from rq.executions import Execution
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat
from rq.worker import Worker

from tests.conftest import live_worker, queue, register_started
from worker import recovery
from worker.allowlist import GuardedJob


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
