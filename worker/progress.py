"""Progress and counters a job reports through RQ's `job.meta`.

Jobs stay plain functions: outside an RQ work-horse these calls do nothing. Inside one,
they write to the current job's meta, which `enqueue --wait`, dashboards and the daemon
(for its metrics, since a horse's memory dies with it) read back.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from rq import get_current_job

log = logging.getLogger(__name__)


def report(stage: str, done: int | None = None, total: int | None = None, **extra: object) -> None:
    """Record progress, e.g. report("extract", done=3, total=10)."""
    job = get_current_job()
    if job is None:
        return
    progress: dict[str, object] = {"stage": stage}
    if done is not None:
        progress["done"] = done
    if total is not None:
        progress["total"] = total
    progress.update(extra)
    job.meta["progress"] = progress
    _save(job)


def count(**counters: float) -> None:
    """Add to named counters (pages, chunks, tokens...) that the daemon turns into metrics."""
    job = get_current_job()
    if job is None:
        return
    current = job.meta.setdefault("counters", {})
    for name, value in counters.items():
        current[name] = current.get(name, 0) + value
    _save(job)


def _save(job) -> None:
    try:
        job.save_meta()
    except RedisError as exc:  # progress is best effort; never fail a job for it
        log.warning("could not save progress of job %s: %s", job.id, exc)
