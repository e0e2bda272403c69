"""Find jobs whose worker died (SIGKILL, OOM, power loss) and put them back on their queue.

RQ alone notices such a job only when its started-registry entry expires (90 s after the
last heartbeat) *and* a worker runs maintenance (every 10 minutes by default), and then it
only marks the job failed. Here every live worker sweeps the started registries of its
queues every few seconds (one at a time, under a short Redis lock): an entry whose worker
has not heartbeated for `DEAD_WORKER_AFTER` seconds, or whose worker registered its death,
is put back at the front of its queue. Ingestion is idempotent, so a re-run is safe. A job
that keeps killing its worker (a poison input) is failed after `MAX_ATTEMPTS` with the reason.

A worker cut off from Redis (a network partition) looks dead too, while its horse may still be
running the job; when the link comes back, that horse must not end the job a second time. So
ending a job and taking it over exclude each other: the horse first claims its execution (an
`ending` stamp on the execution's hash, set only while the execution exists, `claim_ending`),
and a sweep takes a job in one transaction that watches that hash and the job's, and leaves
it alone while a fresh claim stands. A horse whose execution was taken drops its outcome.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.queue import Queue
from rq.utils import as_text, now, parse_composite_key, utcparse
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS

from worker.dequeue import INFLIGHT_PREFIX, inflight_key
from worker.errors import Outcome

log = logging.getLogger("worker.recovery")

LOCK_KEY = "worker:recovery:lock"
TERMINAL = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


# A field our workers add to their RQ worker hash: they heartbeat from the main loop even while
# a job runs, so silence means death after DEAD_WORKER_AFTER. Other RQ workers (a plain `rq
# worker`, a SimpleWorker) may be silent for minutes mid-job and are judged by RQ's own rules.
OURS_FIELD = "heartbeats_while_busy"


# A field of an execution's hash: when its horse claimed the right to end the job (epoch seconds).
ENDING_FIELD = "ending"
# "id" is written when the execution is created; a hash without it is the stub a late heartbeat
# of the cut-off worker (HSET last_heartbeat) leaves after a sweep deleted the execution.
_CLAIM = """
if redis.call('hexists', KEYS[1], 'id') == 1 then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


def claim_ending(conn: Redis, execution_key: str) -> bool:
    """Claim the right to end an execution's job: False when the execution is gone (a sweep
    took the job over while this worker looked dead, or its key expired), and then the caller
    must write nothing about the job."""
    return bool(conn.eval(_CLAIM, 1, execution_key, ENDING_FIELD, repr(time.time())))


def owner_dead(conn: Redis, owner: str, dead_after: float, entry_expires_at: float) -> bool:
    """Whether the worker that owns a started-registry entry is dead. Any worker: it registered
    its death, or its worker key expired. Ours: also silent for `dead_after`. Others: also its
    entry expired (RQ's own rule; it refreshes the entry while the job runs)."""
    key = Worker.redis_worker_namespace_prefix + owner
    last, death, ours = (
        as_text(v) if v is not None else None for v in conn.hmget(key, ["last_heartbeat", "death", OURS_FIELD])
    )
    if death or not last:
        return True
    if ours:
        return now() - utcparse(last) >= timedelta(seconds=dead_after)
    return entry_expires_at < time.time()


def worker_alive(conn: Redis, name: str, dead_after: float) -> bool:
    if not name:
        return False
    data = conn.hmget(Worker.redis_worker_namespace_prefix + name, ["last_heartbeat", "death"])
    last, death = (as_text(v) if v is not None else None for v in data)
    if death or not last:
        return False
    return now() - utcparse(last) < timedelta(seconds=dead_after)


def put_back(pipe: Pipeline, job_id: str, queue_key: str, meta: bytes | None = None) -> None:
    """The one way a job goes back: status QUEUED, at the front of its queue, and its new meta
    when given, queued on `pipe`. The caller adds what takes the job out of where it was (an
    in-flight list, the started registry) and executes: one MULTI/EXEC, all or nothing."""
    job_key = Job.key_for(job_id)
    if meta is not None:
        pipe.hset(job_key, "meta", meta)
    pipe.hset(job_key, "status", JobStatus.QUEUED.value)
    pipe.lpush(queue_key, job_id)


def counted(job: Job, counter: str) -> tuple[dict, bytes]:
    """The job's meta with `counter` bumped, and its bytes, without touching `job` or Redis:
    written only by the transaction that puts the job back, so a failed attempt counts nothing."""
    meta = dict(job.meta)
    try:
        meta[counter] = int(meta.get(counter, 0)) + 1
    except (TypeError, ValueError):  # a producer wrote something else there
        meta[counter] = 1
    try:
        return meta, job.serializer.dumps(meta)
    except Exception:  # meta this serializer cannot write back (e.g. a pickle payload under JSON)
        meta = {counter: meta[counter]}
        return meta, job.serializer.dumps(meta)


def restore_inflight(conn: Redis, key: str) -> int:
    """Put the ids left in an in-flight list back at the front of their queues.

    An id there was taken off its queue but never registered as started: no horse ever ran it.
    """
    restored = 0
    for raw in reversed(conn.lrange(key, 0, -1)):  # reversed + LPUSH keeps their order
        job_id = as_text(raw)
        job_key = Job.key_for(job_id)
        origin, status = (as_text(v) if v is not None else None for v in conn.hmget(job_key, ["origin", "status"]))
        with conn.pipeline() as pipe:
            pipe.lrem(key, 0, job_id)
            if origin and status not in TERMINAL:
                put_back(pipe, job_id, Queue.redis_queue_namespace_prefix + origin)
                restored += 1
            pipe.execute()
        log.warning("job %s taken off %s by a worker that died before starting it: put back", job_id, origin)
    return restored


def sweep_inflight(conn: Redis, me: str, dead_after: float, scan: bool = False) -> int:
    """Restore the in-flight lists of dead workers, and our own.

    Ours is empty whenever this runs (from the main loop, never between taking a job and
    registering it), so anything in it is a leftover: an id moved by a script whose reply was
    lost, or one from an earlier process of the same name. Dead workers are found in RQ's set
    of registered workers (a killed worker stays there); `scan` also walks the keyspace for
    lists of workers no longer in that set, which is costly and done only at maintenance.
    """
    if scan:
        keys = {as_text(k) for k in conn.scan_iter(match=INFLIGHT_PREFIX + "*", count=500)}
    else:
        prefix = Worker.redis_worker_namespace_prefix
        keys = {inflight_key(as_text(k)[len(prefix) :]) for k in conn.smembers(REDIS_WORKER_KEYS)}
        keys.add(inflight_key(me))
    restored = 0
    for key in keys:
        owner = key[len(INFLIGHT_PREFIX) :]
        if (owner == me or not worker_alive(conn, owner, dead_after)) and conn.llen(key):
            restored += restore_inflight(conn, key)
    return restored


def sweep(
    conn: Redis,
    queues: list[Queue],
    me: str,
    my_job_id: str | None,
    dead_after: float,
    max_attempts: int,
    job_class: type[Job] = Job,
    serializer=None,
    lock_seconds: int = 5,
    force: bool = False,
) -> list[tuple[str, str]]:
    """Recover abandoned jobs; returns (job id, what happened) pairs. One worker sweeps at a
    time (a short lock) unless `force`: before RQ's own registry clean-up, which must not see
    an abandoned entry first."""
    if not force and not conn.set(LOCK_KEY, me, nx=True, ex=lock_seconds):
        return []
    sweep_inflight(conn, me, dead_after, scan=force)
    done: list[tuple[str, str]] = []
    for queue in queues:
        registry = queue.started_job_registry
        for raw, expires_at in conn.zrange(registry.key, 0, -1, withscores=True):
            composite = as_text(raw)
            job_id = parse_composite_key(composite)[0]
            if job_id == my_job_id:
                continue
            execution_key = Execution.from_composite_key(composite, conn).key
            owner = as_text(conn.hget(execution_key, "worker_name") or b"")
            if owner and owner != me and not owner_dead(conn, owner, dead_after, expires_at):
                continue
            # A job of this very worker other than the one it runs now: its horse is gone (one at a
            # time), so a claim it left (it lost Redis while writing the end) binds nobody.
            claim_lasts = 0.0 if owner == me else dead_after
            outcome = _recover(
                conn, queue, registry, composite, job_id, owner, max_attempts, job_class, serializer, claim_lasts
            )
            if outcome:
                done.append((job_id, outcome))
    return done


def _fresh(stamp: bytes, seconds: float) -> bool:
    try:
        return time.time() - float(as_text(stamp)) < seconds
    except ValueError:
        return False


def _recover(
    conn, queue, registry, composite, job_id, owner, max_attempts, job_class, serializer, claim_lasts: float
) -> str | None:
    execution_key = Execution.from_composite_key(composite, conn).key
    who = owner or "an unknown worker"
    with conn.pipeline() as pipe:
        try:
            # Watched: a horse that claims its execution, or writes its job, after this point
            # makes the transaction fail, and the job is left to it.
            pipe.watch(execution_key, Job.key_for(job_id))
            try:
                job = job_class.fetch(job_id, connection=conn, serializer=serializer)
            except Exception:  # gone, or a payload we cannot read: drop the stale entry
                pipe.reset()
                conn.zrem(registry.key, composite)
                return None
            status, ending = pipe.hget(job.key, "status"), pipe.hget(execution_key, ENDING_FIELD)
            if as_text(status) in TERMINAL or pipe.lpos(queue.key, job.id) is not None:
                pipe.multi()
                pipe.zrem(registry.key, composite)  # ended after all, or already back in its queue: a leftover
                pipe.execute()
                return None
            if ending is not None and _fresh(ending, claim_lasts):
                return None  # its horse is writing the outcome right now
            # STARTED, or still QUEUED: the worker died after registering the job but before its
            # horse marked it started. Either way nobody else will run it: put it back. (RQ's own
            # cleanup skips a non-STARTED job yet still drops its entry, which loses it.)
            meta, meta_bytes = counted(job, "abandoned")
            attempts = meta["abandoned"]
            pipe.multi()
            pipe.zrem(registry.key, composite)
            pipe.delete(execution_key)
            if attempts >= max_attempts:
                reason = (
                    f"worker.errors.WorkerDiedError: the worker running this job ({who}) died {attempts} times; "
                    "not retried again (a poison input?)"
                )
                pipe.hset(job.key, "meta", meta_bytes)
                record_job_failure(job, reason, pipe)
                outcome = Outcome.FAILED
            else:
                put_back(pipe, job.id, queue.key, meta_bytes)
                outcome = Outcome.REQUEUED
            pipe.execute()
        except WatchError:
            return None  # its horse or another sweep got there first; the next sweep looks again
    job.meta = meta
    log.warning(
        "job %s abandoned by dead worker %s (attempt %d): %s",
        job_id,
        who,
        attempts,
        outcome,
        extra={"job_id": job_id, "queue": queue.name, "outcome": f"recovered-{outcome}"},
    )
    return outcome
