"""A job's life in Redis: every transition this worker makes, and the keys they touch.

The invariant. A job id this worker takes is, at every moment, in exactly one of:

    its queue  ->  a worker's in-flight list  ->  the started registry  ->  ended
    (rq:queue:Q)   (worker:inflight:NAME)        (rq:wip:Q + execution)    (finished or failed
                                                                            registry, or back in
                                                                            its queue)

and exactly one party ends it: the horse that claimed its execution (`claim_ending`), or a
sweep that took the job over from a dead worker (`take_over`), never both. Each transition is
one Lua script or one MULTI/EXEC, so a crash between two leaves the id in exactly one place.

    take             queue -> in-flight                          Mover (script)
    start            in-flight -> started                        start
    claim the end    the horse's right to write the job's end    claim_ending (script)
    put back         in-flight or started -> front of queue      put_back_running, put_back
    take over        started, worker dead -> queue (or failed)   take_over (watched)
    restore          a dead worker's in-flight -> queue          restore_inflight
    fail unreadable  in-flight / scheduled -> failed             fail_unreadable
    quarantine       an entry that is no job -> worker:quarantine quarantine

An entry that is not a job at all (an id RQ refuses, a registry member it cannot parse) is
moved to a capped quarantine list, with why, so that nothing is silently dropped and no later
pass trips on it again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.executions import Execution
from rq.job import Job, JobStatus, validate_job_id
from rq.job_lifecycle import record_job_failure
from rq.queue import Queue
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.utils import as_text, now, utcformat

from worker.errors import Outcome
from worker.safe import safe_text

log = logging.getLogger("worker.lifecycle")

INFLIGHT_PREFIX = "worker:inflight:"
QUARANTINE_KEY = "worker:quarantine"
QUARANTINE_KEEP = 1000  # entries kept for inspection (LRANGE worker:quarantine 0 -1)
# A field of an execution's hash: when its horse claimed the right to end the job (epoch seconds).
ENDING_FIELD = "ending"
TERMINAL = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)

# Entries quarantined by this process (for /metrics).
quarantined = 0


def inflight_key(worker_name: str) -> str:
    return INFLIGHT_PREFIX + worker_name


def decoded(raw: bytes | str) -> str:
    """An entry as text, whatever bytes a producer wrote (invalid UTF-8 becomes U+FFFD)."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def is_job_id(value: object) -> bool:
    """Whether RQ accepts `value` as a job id (letters, digits, '_' and '-')."""
    try:
        validate_job_id(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


# -- take ------------------------------------------------------------------------------
_MOVE = """
local inflight = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  local id = redis.call('LMOVE', KEYS[i], inflight, 'LEFT', 'RIGHT')
  if id then return {KEYS[i], id} end
end
return false
"""


class Mover:
    """Take: the atomic priority move of one id from the first non-empty queue into an
    in-flight list, as a registered script (EVALSHA after the first call)."""

    def __init__(self, conn: Redis) -> None:
        self._script = conn.register_script(_MOVE)

    def __call__(self, queue_keys: list[str], inflight: str) -> tuple[str, str] | None:
        result = self._script(keys=[*queue_keys, inflight])
        if not result:
            return None
        queue_key, job_id = (as_text(v) for v in result)
        return queue_key, job_id


# -- start -----------------------------------------------------------------------------
def start(pipe: Pipeline, job: Job, inflight: str, ttl: int, worker_name: str) -> Execution:
    """Start: the job's execution and started-registry entry, and its removal from the
    in-flight list, queued on `pipe` (the caller adds its own worker state and executes)."""
    execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker_name)
    pipe.lrem(inflight, 0, job.id)
    return execution


# -- claim the end ----------------------------------------------------------------------
# "id" is written when the execution is created; a hash without it is the stub a late heartbeat
# of a cut-off worker (HSET last_heartbeat) leaves after a sweep deleted the execution. The
# shebang declares a writing script: a replica (an old primary after a failover, where the
# execution may not exist yet) refuses it with READONLY instead of answering "gone".
_CLAIM = """#!lua
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


# -- put back ----------------------------------------------------------------------------
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
    written only by the transaction that puts the job back, so a failed attempt counts nothing.
    Meta that is not a dict (a producer may write anything) is replaced by the counter alone."""
    meta = dict(job.meta) if isinstance(job.meta, dict) else {}
    try:
        meta[counter] = int(meta.get(counter, 0)) + 1
    except (TypeError, ValueError, OverflowError):  # a producer wrote something else there
        meta[counter] = 1
    try:
        return meta, job.serializer.dumps(meta)
    except Exception:  # meta this serializer cannot write back (e.g. a pickle payload under JSON)
        meta = {counter: meta[counter]}
        return meta, job.serializer.dumps(meta)


def put_back_running(
    conn: Redis,
    job: Job,
    queue: Queue,
    execution: Execution | None,
    inflight: str,
    meta_bytes: bytes,
    cleanup: Callable[[Pipeline], None],
) -> bool:
    """Put back a job this worker holds (in its in-flight list, or started with `execution`) in
    one watched transaction; `cleanup(pipe)` queues the removal of the execution. False, writing
    nothing but the in-flight entry's removal, when the job is no longer this worker's: a sweep
    took it over while the worker was cut off from Redis and looked dead (it deleted the
    execution, or emptied the in-flight list). Raises WatchError when a sweep acted at this very
    moment: the caller looks again."""
    with conn.pipeline() as pipe:
        if execution is not None:
            pipe.watch(execution.key)
            ours = bool(pipe.hexists(execution.key, "id"))
        else:
            pipe.watch(inflight)
            ours = pipe.lpos(inflight, job.id) is not None
        pipe.multi()
        pipe.lrem(inflight, 0, job.id)
        if ours:
            if execution is not None:
                cleanup(pipe)
            put_back(pipe, job.id, queue.key, meta_bytes)
        pipe.execute()
    return ours


# -- take over ---------------------------------------------------------------------------
def _fresh(stamp: bytes, seconds: float) -> bool:
    try:
        return time.time() - float(as_text(stamp)) < seconds
    except ValueError:
        return False


def take_over(
    conn: Redis,
    queue: Queue,
    composite: str,
    job_id: str,
    owner: str,
    max_attempts: int,
    job_class: type[Job],
    serializer,
    claim_lasts: float,
) -> str | None:
    """Take over a started job whose worker is dead: back to the front of its queue, or failed
    after `max_attempts` (a poison input). Returns the outcome, or None when there was nothing
    to take (already ended, back in its queue, its horse claiming the end right now, or the
    transaction lost a race: the next sweep looks again)."""
    registry = queue.started_job_registry
    execution_key = Execution.from_composite_key(composite, conn).key
    who = owner or "an unknown worker"
    with conn.pipeline() as pipe:
        try:
            # Watched: a horse that claims its execution, or writes its job, after this point
            # makes the transaction fail, and the job is left to it.
            pipe.watch(execution_key, Job.key_for(job_id))
            try:
                job = job_class.fetch(job_id, connection=conn, serializer=serializer)
            except Exception as exc:  # gone, or a hash we cannot read: fail it or drop the entry
                pipe.reset()
                _end_unfetchable(conn, queue, composite, job_id, exc, serializer)
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
            pipe.multi()
            outcome, meta = _queue_take_over(pipe, job, queue, composite, execution_key, who, max_attempts)
            pipe.execute()
        except WatchError:
            return None
    job.meta = meta
    log.warning(
        "job %s abandoned by dead worker %s (attempt %d): %s",
        job_id,
        safe_text(who),
        meta["abandoned"],
        outcome,
        extra={"job_id": job_id, "queue": queue.name, "outcome": f"recovered-{outcome}"},
    )
    return outcome


def _queue_take_over(
    pipe: Pipeline, job: Job, queue: Queue, composite: str, execution_key: str, who: str, max_attempts: int
) -> tuple[Outcome, dict]:
    """The writes of a take-over, queued on `pipe` in MULTI: the entry and execution gone, the
    job put back with its `abandoned` count, or failed once it reached `max_attempts`."""
    meta, meta_bytes = counted(job, "abandoned")
    attempts = meta["abandoned"]
    pipe.zrem(queue.started_job_registry.key, composite)
    pipe.delete(execution_key)
    if attempts < max_attempts:
        put_back(pipe, job.id, queue.key, meta_bytes)
        return Outcome.REQUEUED, meta
    reason = (
        f"worker.errors.WorkerDiedError: the worker running this job ({safe_text(who)}) died "
        f"{attempts} times; not retried again (a poison input?)"
    )
    pipe.hset(job.key, "meta", meta_bytes)
    record_job_failure(job, reason, pipe)
    return Outcome.FAILED, meta


def _end_unfetchable(conn: Redis, queue: Queue, composite: str, job_id: str, exc: Exception, serializer) -> None:
    """A started entry whose job cannot be fetched: the entry goes, the job (if it is still
    there) fails, so that whoever polls it sees why."""
    conn.zrem(queue.started_job_registry.key, composite)
    fail_unreadable(conn, queue, job_id, exc, serializer)


# -- restore -----------------------------------------------------------------------------
def restore_inflight(conn: Redis, key: str) -> int:
    """Put the ids left in an in-flight list back at the front of their queues.

    An id there was taken off its queue but never registered as started: no horse ever ran it.
    One that is no job id goes to quarantine.
    """
    restored = 0
    for raw in reversed(conn.lrange(key, 0, -1)):  # reversed + LPUSH keeps their order
        job_id = decoded(raw)
        if not is_job_id(job_id):
            quarantine(conn, key, raw, "not a job id RQ accepts", remove=lambda p, r=raw: p.lrem(key, 0, r))
            continue
        job_key = Job.key_for(job_id)
        origin, status = (v.decode(errors="replace") if v else None for v in conn.hmget(job_key, ["origin", "status"]))
        with conn.pipeline() as pipe:
            pipe.lrem(key, 0, job_id)
            if origin and status not in TERMINAL:
                put_back(pipe, job_id, Queue.redis_queue_namespace_prefix + origin)
                restored += 1
            pipe.execute()
        log.warning("job %s taken off %s by a worker that died before starting it: put back", job_id, safe_text(origin))
    return restored


# -- fail unreadable, quarantine ---------------------------------------------------------
def fail_unreadable(conn: Redis, queue: Queue, job_id: str, exc: Exception, serializer, inflight: str = "") -> None:
    """Fail a job whose hash we cannot read, so that a client polling it sees `failed` and why;
    it leaves the in-flight list and the scheduled registry in the same transaction (a job whose
    hash is gone only leaves them). An id RQ
    refuses cannot be failed through RQ (it builds no Job for it): it goes to quarantine."""
    why = safe_text(f"{type(exc).__name__}: {exc}", 500)
    scheduled = queue.scheduled_job_registry.key
    if not is_job_id(job_id):

        def remove(pipe: Pipeline) -> None:
            if inflight:
                pipe.lrem(inflight, 0, job_id)
            pipe.zrem(scheduled, job_id)

        quarantine(conn, inflight or scheduled, job_id, "not a job id RQ accepts", remove=remove)
        return
    if not conn.exists(Job.key_for(job_id)):  # gone meanwhile: nothing to fail, its entries go
        with conn.pipeline() as pipe:
            if inflight:
                pipe.lrem(inflight, 0, job_id)
            pipe.zrem(scheduled, job_id)
            pipe.execute()
        return
    log.error("job %s cannot be read (%s); failing it", job_id, why)
    exc_string = f"worker.errors.UnreadableJobError: this worker cannot read the job's hash ({why})"
    stub = Job(job_id, connection=conn, serializer=serializer)
    failed = FailedJobRegistry(queue.name, connection=conn, serializer=serializer)
    with conn.pipeline() as pipe:
        if inflight:
            pipe.lrem(inflight, 0, job_id)
        pipe.zrem(scheduled, job_id)
        pipe.hset(stub.key, mapping={"status": JobStatus.FAILED.value, "ended_at": utcformat(now())})
        pipe.zadd(failed.key, {job_id: time.time() + DEFAULT_FAILURE_TTL})
        Result.create_failure(stub, DEFAULT_FAILURE_TTL, exc_string, pipeline=pipe)
        pipe.execute()


def quarantine(conn: Redis, source: str, entry: object, why: str, remove: Callable[[Pipeline], object]) -> None:
    """Move an entry that is not a job out of `source` (`remove(pipe)` queues its removal) into
    the capped quarantine list, with where it was and why, in one transaction."""
    global quarantined
    shown = decoded(entry) if isinstance(entry, bytes | str) else entry
    record = {"from": source, "entry": safe_text(shown, 300), "why": why, "at": utcformat(now())}
    with conn.pipeline() as pipe:
        remove(pipe)
        pipe.lpush(QUARANTINE_KEY, json.dumps(record))
        pipe.ltrim(QUARANTINE_KEY, 0, QUARANTINE_KEEP - 1)
        pipe.execute()
    quarantined += 1
    log.warning("quarantined %s from %s: %s (see %s)", record["entry"], safe_text(source), why, QUARANTINE_KEY)
