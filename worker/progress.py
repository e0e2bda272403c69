"""Progress and counters a job reports through RQ's `job.meta`.

Jobs stay plain functions: outside an RQ work-horse these calls do nothing. Inside one,
they write to the current job's meta, which `enqueue --wait`, dashboards and the daemon
(for its metrics, since a horse's memory dies with it) read back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job

log = logging.getLogger(__name__)

# The counters a job may report; the daemon adds these (and only these) to its metrics.
COUNTERS = ("pages", "pages_without_text", "chunks", "embedding_tokens", "embedding_texts")

REPORT_INTERVAL = 0.25  # seconds: a job writes its progress to Redis at most this often

# Stages of one job may report from several threads: one writer at a time, so that RQ never
# serializes a meta dict another thread is growing.
_lock = threading.Lock()


def report(stage: str, done: int | None = None, total: int | None = None, **extra: object) -> None:
    """Record progress, e.g. report("extract", done=3, total=10).

    `meta["progress"]` is the latest report of any stage; `meta["stages"]` keeps the latest report
    of each stage, so that stages running at once (extract while embed) can all be shown.
    """
    job = get_current_job()
    if job is None:
        return
    progress: dict[str, object] = {"stage": stage}
    if done is not None:
        progress["done"] = done
    if total is not None:
        progress["total"] = total
    progress.update(extra)
    with _lock:
        stages = job.meta.get("stages")
        # a new dict rather than an update in place: the old one may be in the middle of a save
        job.meta["stages"] = {**(stages if isinstance(stages, dict) else {}), stage: progress}
        job.meta["progress"] = progress
        _save(job)


def count(**counters: float) -> None:
    """Add to named counters (pages, chunks, tokens...) that the daemon turns into metrics."""
    job = get_current_job()
    if job is None:
        return
    with _lock:
        current = job.meta.get("counters")
        if not isinstance(current, dict):
            current = job.meta["counters"] = {}
        for name, value in counters.items():
            current[name] = current.get(name, 0) + value
        _save(job)


def _save(job) -> None:
    try:
        job.save_meta()
    except RedisError as exc:  # progress is best effort; never fail a job for it
        log.warning("could not save progress of job %s: %s", job.id, exc)


def reset_counters(job: Job) -> None:
    """Start an attempt with no counters: a producer may have written some, and an attempt
    killed before it ended (then put back) left its own, which must not be counted twice.
    That attempt's per-stage progress goes too, or `enqueue --wait` would show its stages.
    Meta that is not a dict (a producer may write JSON null, a list, a number) becomes an empty
    dict: jobs report progress into it."""
    if not isinstance(job.meta, dict):
        job.meta = {}
        _save(job)
        return
    stale = [key for key in ("counters", "stages") if key in job.meta]
    for key in stale:
        del job.meta[key]
    if stale:
        _save(job)


def read_counters(job: Job) -> dict[str, float]:
    """The counters in a job's meta, fetched anew: known names with finite numbers only.
    The meta belongs to whoever wrote the job, so anything else there is ignored, never raised."""
    try:
        counters = job.get_meta(refresh=True).get("counters")
    except RedisError:
        raise
    except Exception:  # meta this worker cannot decode (a pickle payload under JSON, garbage)
        return {}
    if not isinstance(counters, dict):
        return {}
    found = {}
    for name in COUNTERS:
        value = counters.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            found[name] = value
    return found


class Throttle:
    """Calls `fn(*args)` at most every `interval` seconds, and whenever `always(*args)` is true
    (e.g. for a stage's last item, so that its end is always reported)."""

    def __init__(
        self,
        fn: Callable[..., None],
        interval: float = REPORT_INTERVAL,
        always: Callable[..., bool] | None = None,
    ) -> None:
        self.fn, self.interval, self.always = fn, interval, always
        self.last = float("-inf")

    def __call__(self, *args: object) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval or (self.always is not None and self.always(*args)):
            self.last = now
            self.fn(*args)
