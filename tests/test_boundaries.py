"""Error boundaries: one job, one entry, one Redis reply, one command message or one
signal may fail that job or be set aside; it never ends the daemon nor stalls it.

Every test goes through a real worker process (`python -m worker run`), real Redis and real
signals, writing what a producer with RQ's own client, or anyone who can write to Redis, could
write. Each asserts the promise: the worker never exits, `/healthz` stays 200, the hostile job
ends (finished, or failed with a typed reason `worker.errors.<Name>: ...`) or the hostile entry
is set aside, and a normal job enqueued after it finishes. Waits are bounded, never timed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ResponseError
from rq.command import PUBSUB_CHANNEL_TEMPLATE, send_shutdown_command, send_stop_job_command
from rq.job import Job
from rq.queue import Queue
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend
from rq.worker import Worker

from tests.conftest import TEST_JOBS, WorkerProcess, queue, wait_for
from worker.devredis import RedisServer, free_port

FAST = {"DEAD_WORKER_AFTER": "2"}  # recovery sweeps every 0.5 s, a silent worker is dead after 2 s
HOLD = {"EXTRA_JOBS": TEST_JOBS + ",tests.jobs_for_tests.hold"}  # a job that runs until released
TYPED = re.compile(r"worker\.errors\.\w+: \S")
BAD_ID = "bad id!"  # rq.job.Job refuses it (ValueError): not a job id RQ can build a Job for


# -- helpers ----------------------------------------------------------------------------------
def raw_status(conn: Redis, job_id: str) -> str:
    """The status field as written (a garbled one too, which `Job.get_status` would raise on)."""
    raw = conn.hget(Job.key_for(job_id), "status")
    return raw.decode(errors="replace") if raw is not None else ""


def exc_string(conn: Redis, job_id: str) -> str:
    result = Result.fetch_latest(Job(job_id, connection=conn), serializer=JSONSerializer)
    return (result.exc_string or "") if result is not None else ""


def until(w: WorkerProcess, predicate: Callable[[], object], timeout: float = 20.0, message: str = "condition"):
    """`wait_for`, but failing at once, with the worker's log, if the worker exits meanwhile."""

    def check() -> object:
        if w.proc.poll() is not None:
            raise AssertionError(f"worker exited with {w.proc.returncode} while waiting for {message}:\n{w.log()}")
        return predicate()

    return wait_for(check, timeout=timeout, message=message)


def assert_serves(w: WorkerProcess, conn: Redis, label: str = "after") -> None:
    """The worker is alive and live, and a normal job enqueued now finishes."""
    job = queue(conn).enqueue("worker.jobs.ping", label)
    until(w, lambda: raw_status(conn, job.id) == "finished", timeout=30, message=f"a normal job ({label}) to finish")
    assert w.proc.poll() is None
    assert w.get("/healthz")[0] == 200


def assert_ended(w: WorkerProcess, conn: Redis, job_id: str, timeout: float = 20.0) -> str:
    """The job reaches an end: finished, or failed with a typed, readable reason."""
    status = until(
        w,
        lambda: (s := raw_status(conn, job_id)) in ("finished", "failed") and s,
        timeout=timeout,
        message=f"job {job_id} to end (status now {raw_status(conn, job_id)!r})",
    )
    if status == "failed":
        reason = exc_string(conn, job_id)
        assert TYPED.search(reason), f"failed without a typed reason: {reason!r}"
        assert conn.zscore("rq:failed:default", job_id) is not None, "not in the failed registry"
    return status


def logged(w: WorkerProcess, text: str) -> bool:
    """`text` is somewhere in the worker's whole log (`w.log()` keeps only its tail)."""
    return text in w.log_path.read_text(errors="replace")


def worker_name(w: WorkerProcess) -> str:
    return w.get("/healthz")[1]["worker"]


def suspend_workers(conn: Redis, *workers: WorkerProcess) -> None:
    """`rq suspend`, then wait until every worker shows it: none is about to take a job, so what
    is written into a queued job now is really read by the worker once resumed (`resume`)."""
    suspend(conn)
    for w in workers:
        key = Worker.redis_worker_namespace_prefix + worker_name(w)
        until(w, lambda k=key: conn.hget(k, "state") == b"suspended", message="the worker to be suspended")


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, read from /proc as `ps --ppid` does."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def horse_pid(w: WorkerProcess, timeout: float = 20.0) -> int:
    """The pid of the worker's work-horse (its one child process), once it has forked one."""
    return until(w, lambda: next(iter(children(w.proc.pid)), None), timeout=timeout, message="a work-horse")


def gone(pid: int) -> bool:
    """The process has ended (reaped, or a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def kill_worker_and_horse(w: WorkerProcess) -> None:
    """SIGKILL a worker and its horse, as an OOM kill or a power loss would (the horse leads its
    own process group: killing the worker alone leaves it running the job to its end)."""
    horse = horse_pid(w)
    os.kill(w.proc.pid, signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)
    w.proc.wait(10)
    wait_for(lambda: gone(horse), timeout=10, message="the horse to die")


def release(conn: Redis, marker: str) -> None:
    """Let a `hold(marker)` run end (a run that starts later ends at once)."""
    conn.lpush(f"test:release:{marker}", 1)


def plant_under_bad_id(conn: Redis, q: Queue) -> None:
    """A valid job's hash stored under BAD_ID, queued, as anyone who can write to Redis can."""
    template = q.create_job("worker.jobs.ping", args=("under a bad id",))
    template.save()
    fields = conn.hgetall(template.key)
    conn.delete(template.key)
    fields.update({b"status": b"queued", b"origin": q.name.encode()})
    conn.hset(Job.key_for(BAD_ID), mapping=fields)


def nowhere_queued(conn: Redis, q: Queue, job_id: str) -> bool:
    """`job_id` is in no queue list and no worker's in-flight list."""
    lists = [q.key, *(k.decode() for k in conn.scan_iter(match="worker:inflight:*"))]
    return all(job_id.encode() not in conn.lrange(key, 0, -1) for key in lists)


# -- 1: a horse never escapes into the daemon ------------------------------------------------
@pytest.mark.parametrize("meta", ["null", '["counters"]', "42"], ids=["null", "list", "number"])
def test_meta_that_is_not_a_dict_ends_its_job_and_the_worker_goes_on(start_worker, redis_conn, meta):
    """Item 1: `meta` rewritten while the job waits used to raise in the forked horse before RQ's
    own `try`; the horse ran the daemon's code and the parent waited for it until the job's
    timeout (600 s by default). The job must end at once, whatever its meta holds."""
    w = start_worker()
    suspend_workers(redis_conn, w)
    job = queue(redis_conn).enqueue("worker.jobs.ping", "odd meta")  # the default job timeout
    redis_conn.hset(job.key, "meta", meta)
    resume(redis_conn)
    assert_ended(w, redis_conn, job.id, timeout=20)
    assert_serves(w, redis_conn)


# -- 2: an id RQ refuses -------------------------------------------------------------------------
def test_a_queued_id_rq_refuses_is_set_aside(start_worker, redis_conn):
    """Item 2: failing it built `Job(id)` again, which raised the same ValueError: exit 1."""
    w = start_worker()
    q = queue(redis_conn)
    redis_conn.lpush(q.key, BAD_ID)
    assert_serves(w, redis_conn)
    until(w, lambda: nowhere_queued(redis_conn, q, BAD_ID), message="the bad id to leave the queues")
    assert logged(w, BAD_ID)  # set aside with a log line that names it


def test_a_refused_id_with_a_hash_ends_neither_this_start_nor_the_next(start_worker, redis_conn):
    """Item 2: with a hash under the id, the dying worker put it back at the front of its queue,
    so every restart exited 1 and the jobs behind it never ran."""
    q = queue(redis_conn)
    plant_under_bad_id(redis_conn, q)
    redis_conn.lpush(q.key, BAD_ID)
    behind = q.enqueue("worker.jobs.ping", "behind the bad id")
    w = start_worker()
    until(w, lambda: raw_status(redis_conn, behind.id) == "finished", message="the job behind it")
    until(w, lambda: nowhere_queued(redis_conn, q, BAD_ID), message="the bad id to leave the queues")
    assert w.get("/healthz")[0] == 200
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.log()
    again = start_worker()
    assert_serves(again, redis_conn, "after a restart")
    assert nowhere_queued(redis_conn, q, BAD_ID)


def test_a_refused_id_due_in_the_scheduled_registry_is_set_aside(start_worker, redis_conn):
    """Item 2: the same id (with a hash) due in a scheduled registry ended every start within a
    second. (Without a hash RQ's scheduler drops it by itself.)"""
    q = queue(redis_conn)
    plant_under_bad_id(redis_conn, q)
    key = q.scheduled_job_registry.key
    redis_conn.zadd(key, {BAD_ID: 1})  # due long ago
    w = start_worker()
    assert_serves(w, redis_conn)
    until(
        w,
        lambda: redis_conn.zscore(key, BAD_ID) is None and nowhere_queued(redis_conn, q, BAD_ID),
        message="the bad id to leave the scheduled registry",
    )
    assert_serves(w, redis_conn, "still serving")


# -- 3: Redis error replies mean "Redis unavailable" ----------------------------------------------
@contextlib.contextmanager
def read_only(conn: Redis, url: str) -> Iterator[None]:
    """What a failover does to the old primary: a replica (of a master that is not there), which
    answers READONLY to every write. Nothing is flushed: no sync ever happens."""
    conn.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        yield
    finally:
        conn.execute_command("REPLICAOF", "NO", "ONE")


@contextlib.contextmanager
def out_of_memory(conn: Redis, url: str) -> Iterator[None]:
    """A full Redis: every write that may grow memory is refused (OOM)."""
    before = {k: conn.config_get(k)[k] for k in ("maxmemory", "maxmemory-policy")}
    conn.config_set("maxmemory-policy", "noeviction")
    conn.config_set("maxmemory", 1)
    try:
        yield
    finally:
        conn.config_set("maxmemory", before["maxmemory"])
        conn.config_set("maxmemory-policy", before["maxmemory-policy"])


def busy(conn: Redis) -> bool:
    try:
        conn.ping()
    except ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def kill_script(conn: Redis) -> bool:
    with contextlib.suppress(ResponseError):  # NOTBUSY: no script running any more
        conn.script_kill()
    return not busy(conn)


@contextlib.contextmanager
def busy_script(conn: Redis, url: str) -> Iterator[None]:
    """A long script on another client: Redis answers BUSY to everyone else until it is killed."""
    before = conn.config_get("busy-reply-threshold")["busy-reply-threshold"]  # lua-time-limit before Redis 7
    conn.config_set("busy-reply-threshold", 50)
    runner = Redis.from_url(url)  # a client of its own: it blocks in EVAL

    def run() -> None:
        with contextlib.suppress(ResponseError):  # "Script killed by user with SCRIPT KILL"
            runner.eval("while true do end", 0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: busy(conn), timeout=10, message="Redis busy with the script")
        yield
    finally:
        wait_for(lambda: kill_script(conn), timeout=10, message="the script killed")
        thread.join(10)
        runner.close()
        conn.config_set("busy-reply-threshold", before)


FAULTS = {"READONLY": read_only, "BUSY": busy_script, "OOM": out_of_memory}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_redis_error_replies_are_an_outage_not_an_exit(start_worker, tmp_path, fault):
    """Item 3: only connection, timeout and loading errors counted as "Redis away": READONLY
    ended the worker in about a second, BUSY ended it, a full Redis ended it on its next write.
    A Redis of this test's own (its settings are changed; the session's server is shared)."""
    server = RedisServer(directory=tmp_path / "own-redis").start()
    try:
        conn = Redis.from_url(server.url)
        w = start_worker(extra_env={"REDIS_URL": server.url})
        with FAULTS[fault](conn, server.url):
            until(w, lambda: logged(w, "Redis unavailable"), timeout=30, message=f"the worker to report {fault}")
            until(w, lambda: w.get("/readyz")[0] == 503, timeout=10, message=f"/readyz 503 during {fault}")
            assert w.get("/healthz")[0] == 200
        until(w, lambda: w.get("/readyz")[0] == 200, timeout=30, message="/readyz 200 once Redis is restored")
        assert_serves(w, conn, f"after {fault}")
    finally:
        server.stop()


# -- 5: meta a list, then a warm stop past SHUTDOWN_TIMEOUT, or a dead worker ---------------------
def test_a_job_with_list_meta_is_put_back_on_a_warm_stop_past_the_timeout(start_worker, redis_conn):
    """Item 5: putting it back did `dict(job.meta)`: exit 1, and the job stayed `started`."""
    w = start_worker(extra_env={**HOLD, "SHUTDOWN_TIMEOUT": "1"})
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.hold", "listmeta", meta=[1, 2])
    until(w, lambda: redis_conn.llen("test:started:listmeta") == 1, message="the job to start")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.log()
    assert raw_status(redis_conn, job.id) == "queued"
    assert q.job_ids == [job.id]
    assert q.started_job_registry.count == 0
    assert redis_conn.llen("test:done:listmeta") == 0
    # and it runs to its end on the next worker
    release(redis_conn, "listmeta")
    nxt = start_worker(extra_env=HOLD)
    until(nxt, lambda: raw_status(redis_conn, job.id) == "finished", message="the put-back job to finish")


def test_a_job_with_list_meta_abandoned_by_a_dead_worker_is_put_back(start_worker, redis_conn):
    """Item 5: every other worker's sweep failed on it each pass, so it stayed `started` for good."""
    env = {**FAST, **HOLD}
    a = start_worker(extra_env=env)
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.hold", "orphan5", meta=[1, 2])
    until(a, lambda: redis_conn.llen("test:started:orphan5") == 1, message="the job to start")
    kill_worker_and_horse(a)
    assert raw_status(redis_conn, job.id) == "started"
    b = start_worker(extra_env=env)
    until(b, lambda: redis_conn.llen("test:started:orphan5") == 2, timeout=30, message="the job to run again")
    release(redis_conn, "orphan5")
    until(b, lambda: raw_status(redis_conn, job.id) == "finished", message="the recovered job to finish")
    assert_serves(b, redis_conn)


# -- 9: a garbled status, and signals the daemon does not use --------------------------------------
def test_status_garbled_mid_run_then_horse_killed(start_worker, redis_conn):
    """Item 9: the dead-horse path read the status with `JobStatus(...)`: ValueError, exit 1."""
    w = start_worker(extra_env=HOLD)
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.hold", "garbled")
    until(w, lambda: redis_conn.llen("test:started:garbled") == 1, message="the job to start")
    horse = horse_pid(w)
    redis_conn.hset(job.key, "status", "bogus")
    os.kill(horse, signal.SIGKILL)
    until(w, lambda: gone(horse), message="the horse to die")
    release(redis_conn, "garbled")  # only a later run (the job put back) can take it
    assert_ended(w, redis_conn, job.id)
    assert_serves(w, redis_conn)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1], ids=["SIGHUP", "SIGUSR1"])
def test_sighup_and_sigusr1_are_ignored_while_a_job_runs(start_worker, redis_conn, sig):
    """Item 9: their default action killed the daemon and left its horse running unsupervised.
    They are ignored (and logged): the job runs to its end, the worker goes on."""
    w = start_worker(extra_env=HOLD)
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.hold", "signalled")
    until(w, lambda: redis_conn.llen("test:started:signalled") == 1, message="the job to start")
    horse = horse_pid(w)
    try:
        w.signal(sig)
        # An answer from the daemon's own HTTP thread comes after the signal was delivered: had
        # its default action applied, the process would be gone.
        try:
            answered = w.get("/healthz")[0]
        except OSError:
            answered = None
        assert answered == 200 and w.proc.poll() is None, f"{sig.name} ended the daemon: exit {w.proc.wait(10)}"
        until(w, lambda: logged(w, sig.name), timeout=10, message=f"a log line about {sig.name}")
        release(redis_conn, "signalled")
        until(w, lambda: raw_status(redis_conn, job.id) == "finished", message="the job to finish")
        assert redis_conn.llen("test:started:signalled") == 1  # one run, supervised to its end
        assert w.get("/readyz")[0] == 200  # not a shutdown request either
        assert_serves(w, redis_conn)
    finally:
        if not gone(horse):
            os.kill(horse, signal.SIGKILL)


# -- 10: one bad entry does not switch recovery off for everyone -----------------------------------
def _stale_worker_hash(conn: Redis) -> None:
    """A registered worker whose heartbeat cannot be read, with the in-flight list a worker
    leaves (so that the sweeps that walk in-flight lists, not the worker set, meet it too)."""
    key = Worker.redis_worker_namespace_prefix + "ghost"
    conn.hset(key, mapping={"name": "ghost", "state": "busy", "birth": "yesterday", "last_heartbeat": "yesterday"})
    conn.sadd("rq:workers", key)
    conn.rpush("worker:inflight:ghost", "ghost-job")


def _odd_started_member(conn: Redis) -> None:
    conn.zadd("rq:wip:default", {"a:b:c": 1})  # first in the registry's order, and long expired


BAD_ENTRIES = {"worker-hash": _stale_worker_hash, "started-member": _odd_started_member}


@pytest.mark.parametrize("entry", list(BAD_ENTRIES))
def test_one_bad_entry_does_not_stop_dead_worker_recovery(start_worker, redis_conn, entry):
    """Item 10: one such entry aborted every sweep, so a killed worker's job stayed `started`."""
    env = {**FAST, **HOLD}
    a = start_worker(extra_env=env)
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.hold", "orphan10")
    until(a, lambda: redis_conn.llen("test:started:orphan10") == 1, message="the job to start")
    BAD_ENTRIES[entry](redis_conn)
    kill_worker_and_horse(a)
    b = start_worker(extra_env=env)
    # DEAD_WORKER_AFTER (2 s) plus a wide margin; 20 s with no bad entry at all in test_recovery.py
    until(b, lambda: redis_conn.llen("test:started:orphan10") == 2, timeout=30, message="the job to run again")
    release(redis_conn, "orphan10")
    until(b, lambda: raw_status(redis_conn, job.id) == "finished", message="the recovered job to finish")
    assert_serves(b, redis_conn)


# -- 11: a message on the command channel that is not JSON -------------------------------------------
def garble_commands(conn: Redis, name: str) -> None:
    """Publish one non-JSON message on the worker's command channel, once it listens there."""
    channel = PUBSUB_CHANNEL_TEMPLATE % name
    wait_for(lambda: dict(conn.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1, message="the worker to listen")
    assert conn.publish(channel, "not json {") == 1


def test_shutdown_command_still_works_after_a_non_json_message(start_worker, redis_conn):
    """Item 11: the bad message ended RQ's pubsub thread; later commands were silently ignored."""
    w = start_worker()
    name = worker_name(w)
    garble_commands(redis_conn, name)
    assert_serves(w, redis_conn, "between the messages")
    send_shutdown_command(redis_conn, name)
    wait_for(lambda: w.proc.poll() is not None, timeout=20, message="the worker to obey RQ's shutdown command")
    assert w.proc.returncode == 0, w.log()


def test_stop_job_command_still_works_after_a_non_json_message(start_worker, redis_conn):
    w = start_worker(extra_env=HOLD)
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.hold", "tostop")
    until(w, lambda: redis_conn.llen("test:started:tostop") == 1, message="the job to start")
    garble_commands(redis_conn, worker_name(w))
    send_stop_job_command(redis_conn, job.id, serializer=JSONSerializer)
    until(w, lambda: raw_status(redis_conn, job.id) == "stopped", message="the job to be stopped")
    assert redis_conn.llen("test:done:tostop") == 0
    assert_serves(w, redis_conn)
