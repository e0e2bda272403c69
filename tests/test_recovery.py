"""Jobs whose worker died are found and finished by another worker; dead horses fail clearly."""

from __future__ import annotations

import os
import signal
import time

import pytest
from rq.serializers import JSONSerializer

from tests.conftest import queue, wait_for
from worker import recovery

FAST = {"DEAD_WORKER_AFTER": "2"}


def test_job_of_a_killed_worker_is_requeued_and_finished_by_another(start_worker, redis_conn):
    a = start_worker(extra_env=FAST)
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.sleep", 3, marker="orphan")
    wait_for(lambda: redis_conn.llen("test:started:orphan") == 1, message="job started")
    horse = int(redis_conn.lindex("test:started:orphan", 0))
    # kill the worker and its horse (the horse is in its own process group: kill it too)
    os.kill(a.proc.pid, signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)
    a.proc.wait(5)
    killed_at = time.monotonic()
    assert job.get_status(refresh=True) == "started"  # RQ alone would leave it here
    start_worker(extra_env=FAST)
    wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30, message="orphan finished")
    recovered_in = time.monotonic() - killed_at
    assert recovered_in < 20
    assert redis_conn.llen("test:done:orphan") == 1
    assert q.started_job_registry.count == 0
    assert job.get_meta(refresh=True)["abandoned"] == 1


@pytest.mark.slow  # the rule itself is tested in process: test_sweep.py
def test_poison_job_stops_after_max_attempts(start_worker, redis_conn):
    env = {**FAST, "MAX_ATTEMPTS": "2"}
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.kill_worker")
    good = q.enqueue("worker.jobs.ping", "still served")
    for round_ in (1, 2):
        w = start_worker(extra_env=env, ready=False)
        wait_for(lambda r=round_: redis_conn.llen("test:poison") == r, timeout=30, message=f"poison run {round_}")
        w.proc.wait(10)
    start_worker(extra_env=env)
    wait_for(lambda: job.get_status(refresh=True) == "failed", timeout=30, message="poison job failed")
    wait_for(lambda: good.get_status(refresh=True) == "finished", timeout=30, message="good job served")
    exc = job.latest_result().exc_string
    assert "WorkerDiedError" in exc and "died 2 times" in exc
    assert redis_conn.llen("test:poison") == 2
    assert job.id in q.failed_job_registry


def test_dead_horse_fails_its_job_clearly_and_worker_goes_on(start_worker, redis_conn):
    w = start_worker()
    q = queue(redis_conn)
    crashed = q.enqueue("tests.jobs_for_tests.crash", 9)
    after = q.enqueue("worker.jobs.ping", "after the crash")
    wait_for(lambda: after.get_status(refresh=True) == "finished", message="job after crash")
    assert crashed.get_status(refresh=True) == "failed"
    assert "WorkHorseDied" in crashed.latest_result().exc_string
    assert "exited with status 9" in crashed.latest_result().exc_string
    wait_for(lambda: w.get("/healthz")[1]["jobs_failed"] == 1, timeout=5, message="failure counted")


def test_restart_with_same_name_after_kill_takes_over(start_worker, redis_conn):
    env = {**FAST, "WORKER_NAME": "fixed-name"}
    a = start_worker(extra_env=env)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(5)
    b = start_worker(extra_env=env, ready=False)
    b.wait_ready(timeout=30)
    job = queue(redis_conn).enqueue("worker.jobs.ping", "hi")
    wait_for(lambda: job.get_status(refresh=True) == "finished", message="served by the restarted worker")


def test_redis_restart_mid_job_loses_nothing(start_worker, tmp_path):
    """Redis dies while a job runs and comes back (with its append-only file): the job still ends finished."""
    from redis import Redis

    from worker.devredis import RedisServer, free_port

    port = free_port()
    server = RedisServer(port=port, directory=tmp_path / "aof", persist=True).start()
    try:
        w = start_worker(extra_env={**FAST, "REDIS_URL": server.url})
        conn = Redis.from_url(server.url)
        q = queue(conn)
        job = q.enqueue("tests.jobs_for_tests.sleep", 2, marker="outage")
        later = q.enqueue("worker.jobs.ping", "queued during the outage")
        wait_for(lambda: conn.llen("test:started:outage") == 1, message="job started")
        horse = int(conn.lindex("test:started:outage", 0))
        server.kill()
        # the horse finishes while Redis is away: it cannot record its result
        wait_for(lambda: not os.path.exists(f"/proc/{horse}"), timeout=20, message="the horse to end")
        assert w.proc.poll() is None
        server = RedisServer(port=port, directory=tmp_path / "aof", persist=True).start()
        conn = Redis.from_url(server.url)
        wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=40, message="job finished after outage")
        wait_for(lambda: later.get_status(refresh=True) == "finished", timeout=20, message="queued job finished")
        assert q.started_job_registry.count == 0 and len(q) == 0
        assert w.get("/healthz")[0] == 200
    finally:
        server.stop()


def test_horse_memory_limit_turns_a_runaway_job_into_a_clean_failure(start_worker, redis_conn):
    w = start_worker(extra_env={"HORSE_MEMORY_MB": "4096"})
    q = queue(redis_conn)
    small = q.enqueue("tests.jobs_for_tests.hog", 50)
    runaway = q.enqueue("tests.jobs_for_tests.hog", 8192)
    after = q.enqueue("worker.jobs.ping", "still here")
    wait_for(lambda: after.get_status(refresh=True) == "finished", timeout=30, message="job after the runaway")
    assert small.get_status(refresh=True) == "finished"
    assert runaway.get_status(refresh=True) == "failed"
    assert "MemoryError" in runaway.latest_result().exc_string
    assert w.proc.poll() is None


def test_job_taken_off_the_queue_by_a_worker_that_died_is_put_back(start_worker, redis_conn):
    """The gap plain RQ has between popping a job and registering it: here the id sits in the
    dead worker's in-flight list, and a live worker puts it back, at the front."""
    q = queue(redis_conn)
    first = q.enqueue("tests.jobs_for_tests.record", "taken")
    second = q.enqueue("tests.jobs_for_tests.record", "waiting")
    assert redis_conn.lmove(q.key, "worker:inflight:ghost-worker", "LEFT", "RIGHT").decode() == first.id
    start_worker(extra_env=FAST)
    wait_for(lambda: redis_conn.llen("test:order") == 2, timeout=20, message="both jobs ran")
    assert [x.decode() for x in redis_conn.lrange("test:order", 0, -1)] == ["taken", "waiting"]
    # The list is written inside the job; its status a moment later, when the horse ends it.
    wait_for(
        lambda: first.get_status(refresh=True) == second.get_status(refresh=True) == "finished",
        timeout=20,
        message="both jobs finished",
    )
    assert redis_conn.llen("worker:inflight:ghost-worker") == 0


def test_a_recovered_job_is_counted_once_in_metrics(start_worker, redis_conn):
    """The killed attempt's counters stay in the job's meta; the next attempt starts from none."""
    first = start_worker(extra_env=FAST, ready=False)
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.count_then_die_once", 7)
    first.proc.wait(30)  # the job killed it
    second = start_worker(extra_env=FAST)
    wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30, message="job recovered")

    def pages_total() -> str:
        line = next(x for x in second.get("/metrics")[1].splitlines() if x.startswith("worker_pages_total"))
        return line.rsplit(" ", 1)[1]

    wait_for(lambda: pages_total() != "0", timeout=5, message="pages counted")
    assert pages_total() == "7"


def test_a_job_taken_over_while_its_worker_looked_dead_is_ended_once(start_worker, redis_conn):
    """A worker cut off from Redis past DEAD_WORKER_AFTER looks dead, and another worker's sweep
    takes its job over while its horse still runs. That horse, ending later, must write nothing:
    the job ends once, by the run that owns it now (found by tests/test_multihost.py)."""
    w = start_worker(extra_env=FAST)
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.sleep", 2, marker="cut", result_ttl=600)
    wait_for(lambda: redis_conn.llen("test:started:cut") == 1, message="first run started")
    # Another worker's sweep, to which this one looks silent (dead_after=0, as after a cut link).
    taken = recovery.sweep(
        redis_conn, [q], "another-worker", None, dead_after=0, max_attempts=5, serializer=JSONSerializer, force=True
    )
    assert taken == [(job.id, "requeued")]
    # The same worker runs it again once its first horse has ended: two runs, one end.
    wait_for(lambda: redis_conn.llen("test:done:cut") == 2, timeout=30, message="both runs done")
    wait_for(lambda: job.get_status(refresh=True) == "finished", message="job finished")
    assert [r.type.name for r in job.results()] == ["SUCCESSFUL"]
    assert "taken over by another worker" in w.log()
    # counted by the parent once it has read the second horse's end, a moment after the job's status
    wait_for(
        lambda: all(f'outcome="{o}"' in w.get("/metrics")[1] for o in ("taken_over", "ok")), message="both counted"
    )
    assert q.started_job_registry.count == 0


def test_a_cold_stop_does_not_put_back_a_job_taken_over_while_its_worker_looked_dead(start_worker, redis_conn):
    """A worker cut off past DEAD_WORKER_AFTER had its job taken over, and another worker runs it
    now. Stopped cold before it noticed, it kills its horse and must not put the job back: that
    would queue a running job a second time."""
    w = start_worker(extra_env={**FAST, "SHUTDOWN_TIMEOUT": "60"})
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.sleep", 30, marker="gone", result_ttl=600)
    wait_for(lambda: redis_conn.llen("test:started:gone") == 1, message="job started")
    taken = recovery.sweep(
        redis_conn, [q], "another-worker", None, dead_after=0, max_attempts=5, serializer=JSONSerializer, force=True
    )
    assert taken == [(job.id, "requeued")]
    assert redis_conn.lrem(q.key, 0, job.id) == 1  # another worker took it from the queue and runs it
    redis_conn.hset(job.key, "status", "started")
    w.signal(signal.SIGTERM)
    time.sleep(0.5)
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert "taken over by another worker" in w.log()
    assert q.job_ids == [] and job.get_status(refresh=True) == "started"
    assert redis_conn.llen("test:started:gone") == 1


def test_claim_ending_needs_the_execution_itself(redis_conn):
    """A sweep deletes the execution; a late heartbeat of the cut-off worker may leave a stub hash
    (last_heartbeat only) in its place, which is no claim."""
    key = "rq:execution:job1:exec1"
    assert not recovery.claim_ending(redis_conn, key)
    redis_conn.hset(key, "last_heartbeat", "1")
    assert not recovery.claim_ending(redis_conn, key)
    assert redis_conn.hget(key, recovery.ENDING_FIELD) is None
    redis_conn.hset(key, mapping={"id": "exec1", "job_id": "job1"})
    assert recovery.claim_ending(redis_conn, key)
    assert float(redis_conn.hget(key, recovery.ENDING_FIELD)) == pytest.approx(time.time(), abs=5)
