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
from datetime import datetime, timedelta

from redis import Redis
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text, now, utcparse
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS

from worker.errors import redis_unusable
from worker.lifecycle import (
    ENDING_FIELD,
    INFLIGHT_PREFIX,
    claim_ending,
    counted,
    decoded,
    fail_unreadable,
    inflight_key,
    is_job_id,
    put_back,
    quarantine,
    restore_inflight,
    take_over,
)
from worker.safe import safe_text

# The transitions live in worker.lifecycle; these names stay importable from here.
__all__ = [
    "ENDING_FIELD",
    "claim_ending",
    "counted",
    "owner_dead",
    "put_back",
    "restore_inflight",
    "sweep",
    "worker_alive",
]

log = logging.getLogger("worker.recovery")

LOCK_KEY = "worker:recovery:lock"


# A field our workers add to their RQ worker hash: they heartbeat from the main loop even while
# a job runs, so silence means death after DEAD_WORKER_AFTER. Other RQ workers (a plain `rq
# worker`, a SimpleWorker) may be silent for minutes mid-job and are judged by RQ's own rules.
OURS_FIELD = "heartbeats_while_busy"


def parse_heartbeat(raw: bytes | None) -> datetime | None:
    """A worker hash's last_heartbeat, or None when missing or unreadable (anyone can write it:
    a heartbeat nobody can read proves nothing, and the worker's next heartbeat rewrites it)."""
    try:
        return utcparse(as_text(raw)) if raw else None
    except (ValueError, OverflowError):  # UnicodeDecodeError is a ValueError
        return None


def owner_dead(conn: Redis, owner: str, dead_after: float, entry_expires_at: float) -> bool:
    """Whether the worker that owns a started-registry entry is dead. Any worker: it registered
    its death, or its worker key expired. Ours: also silent for `dead_after`. Others: also its
    entry expired (RQ's own rule; it refreshes the entry while the job runs)."""
    key = Worker.redis_worker_namespace_prefix + owner
    raw_last, death, ours = conn.hmget(key, ["last_heartbeat", "death", OURS_FIELD])
    last = parse_heartbeat(raw_last)
    if death or last is None:
        return True
    if ours:
        return now() - last >= timedelta(seconds=dead_after)
    return entry_expires_at < time.time()


def worker_alive(conn: Redis, name: str, dead_after: float) -> bool:
    if not name:
        return False
    raw_last, death = conn.hmget(Worker.redis_worker_namespace_prefix + name, ["last_heartbeat", "death"])
    last = parse_heartbeat(raw_last)
    if death or last is None:
        return False
    return now() - last < timedelta(seconds=dead_after)


def sweep_inflight(conn: Redis, me: str, dead_after: float, scan: bool = False) -> int:
    """Restore the in-flight lists of dead workers, and our own.

    Ours is empty whenever this runs (from the main loop, never between taking a job and
    registering it), so anything in it is a leftover: an id moved by a script whose reply was
    lost, or one from an earlier process of the same name. Dead workers are found in RQ's set
    of registered workers (a killed worker stays there); `scan` also walks the keyspace for
    lists of workers no longer in that set, which is costly and done only at maintenance.
    Each list is its own boundary: what one holds cannot stop the others' recovery.
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
        try:
            if (owner == me or not worker_alive(conn, owner, dead_after)) and conn.llen(key):
                restored += restore_inflight(conn, key)
        except Exception as exc:
            if redis_unusable(exc):
                raise
            log.warning("in-flight list %s skipped: %s", safe_text(key), safe_text(f"{type(exc).__name__}: {exc}"))
    return restored


def parse_entry(composite: str) -> tuple[str, str] | None:
    """(job id, execution id) of a started-registry member, or None when it is none RQ wrote."""
    parts = composite.split(":")
    if len(parts) > 2 or not is_job_id(parts[0]) or (len(parts) == 2 and parts[1] and not is_job_id(parts[1])):
        return None
    return parts[0], parts[1] if len(parts) == 2 else ""


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
    an abandoned entry first. Each entry is its own boundary: an entry that is no job goes to
    quarantine, a job whose hash breaks the take-over is failed with why, and the sweep goes on;
    only a Redis error ends it (Redis is unusable: the caller backs off)."""
    if not force and not conn.set(LOCK_KEY, me, nx=True, ex=lock_seconds):
        return []
    sweep_inflight(conn, me, dead_after, scan=force)
    done: list[tuple[str, str]] = []
    for queue in queues:
        registry_key = queue.started_job_registry.key
        for raw, expires_at in conn.zrange(registry_key, 0, -1, withscores=True):
            try:
                outcome = _sweep_entry(
                    conn, queue, raw, expires_at, me, my_job_id, dead_after, max_attempts, job_class, serializer
                )
            except Exception as exc:
                if redis_unusable(exc):
                    raise
                _entry_failed(conn, queue, raw, exc, serializer)
                continue
            if outcome:
                done.append(outcome)
    return done


def _sweep_entry(
    conn, queue, raw, expires_at, me, my_job_id, dead_after, max_attempts, job_class, serializer
) -> tuple[str, str] | None:
    composite = decoded(raw)
    parsed = parse_entry(composite)
    if parsed is None:
        registry_key = queue.started_job_registry.key
        quarantine(conn, registry_key, raw, "not a job:execution entry", remove=lambda p: p.zrem(registry_key, raw))
        return None
    job_id = parsed[0]
    if job_id == my_job_id:
        return None
    execution_key = Execution.from_composite_key(composite, conn).key
    owner = as_text(conn.hget(execution_key, "worker_name") or b"")
    if owner and owner != me and not owner_dead(conn, owner, dead_after, expires_at):
        return None
    # A job of this very worker other than the one it runs now: its horse is gone (one at a
    # time), so a claim it left (it lost Redis while writing the end) binds nobody.
    claim_lasts = 0.0 if owner == me else dead_after
    outcome = take_over(conn, queue, composite, job_id, owner, max_attempts, job_class, serializer, claim_lasts)
    return (job_id, outcome) if outcome else None


def _entry_failed(conn: Redis, queue: Queue, raw: bytes, exc: Exception, serializer) -> None:
    """An entry whose take-over raised: its job is failed with the reason, the entry removed."""
    composite = decoded(raw)
    log.warning("started entry %s: %s", safe_text(composite), safe_text(f"{type(exc).__name__}: {exc}"))
    conn.zrem(queue.started_job_registry.key, raw)
    parsed = parse_entry(composite)
    if parsed is not None:
        fail_unreadable(conn, queue, parsed[0], exc, serializer)
