"""Jobs on this worker's queues that it cannot run: a look at start, for a shared Redis.

The worker takes every job on its queues, whoever put it there. A job it cannot run (data that
is not JSON, such as another RQ app's pickled job, or a function that is not registered) is
taken and failed with a typed error, never run. On a Redis shared with other programs that is
their job lost to them, so at start the worker looks at the head of each queue (a bounded peek,
nothing taken) and warns, naming the queue and the fix: queues of its own (WORKER_QUEUES).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.queue import Queue

from worker.allowlist import GuardedJob
from worker.errors import redis_unusable
from worker.safe import safe_text

log = logging.getLogger(__name__)

PEEK = 20  # jobs looked at from the head of each queue


@dataclass
class Unrunnable:
    queue: str
    count: int  # of `peeked`
    peeked: int
    example: str  # why one of them cannot run: "not JSON", or the function it names


def why_not_runnable(job_id: str, conn: Redis, serializer) -> str | None:
    """Why this worker would fail the job instead of running it; None when it can run it (or
    the job is gone)."""
    try:
        job = GuardedJob.fetch(job_id, connection=conn, serializer=serializer)
    except NoSuchJobError:
        return None
    except Exception as exc:  # a hash RQ cannot read
        if redis_unusable(exc):
            raise
        return f"unreadable job ({type(exc).__name__})"
    try:
        name = job.func_name
    except Exception:  # noqa: BLE001 - data this serializer cannot read: a pickle, most likely
        return "data not JSON (another RQ app's pickled job?)"
    try:
        job.func  # noqa: B018 - the allowlist and argument check, as when the job runs
    except Exception as exc:  # noqa: BLE001 - ForbiddenJobError, InvalidArgumentsError
        return f"{safe_text(name, 100)} ({type(exc).__name__})"
    return None


def unrunnable_jobs(conn: Redis, queues: list[str], serializer, peek: int = PEEK) -> list[Unrunnable]:
    """For each queue whose first `peek` jobs hold some this worker cannot run: how many, and
    why one of them cannot. Reads only; RedisError is the caller's."""
    found = []
    for name in queues:
        ids = [raw.decode("utf-8", "replace") for raw in conn.lrange(Queue(name, connection=conn).key, 0, peek - 1)]
        reasons = [why for job_id in ids if (why := why_not_runnable(job_id, conn, serializer))]
        if reasons:
            found.append(Unrunnable(name, len(reasons), len(ids), reasons[0]))
    return found


def warn_unrunnable(conn: Redis, queues: list[str], serializer) -> list[Unrunnable]:
    """Log a WARNING for each queue whose head holds jobs this worker cannot run (see above)."""
    try:
        found = unrunnable_jobs(conn, queues, serializer)
    except RedisError as exc:  # the main loop reports an unreachable Redis; this look is optional
        log.debug("could not look at the queues: %s", exc)
        return []
    except Exception as exc:  # noqa: BLE001 - whatever a queue holds, the worker starts
        log.warning("could not look at the queues: %s: %s", type(exc).__name__, safe_text(str(exc), 200))
        return []
    for entry in found:
        log.warning(
            "queue %s: %d of its first %d jobs cannot run here (e.g. %s): this worker would take and fail them."
            " If another program uses this queue, give this worker queues of its own"
            " (WORKER_QUEUES=ingest-high,ingest,ingest-low) and enqueue there",
            entry.queue,
            entry.count,
            entry.peeked,
            entry.example,
        )
    return found
