"""Periodic work of the main loop, each task behind one error guard.

`guarded` is the boundary every step of the daemon's own work sits in: a Redis error that
means Redis is unusable propagates (the loop backs off, /readyz says 503); anything else is
tied to one job or one entry, so it is logged (once a minute per place at most, with its
traceback the first time) and the daemon goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import rq.scheduler
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.utils import now

from worker import lifecycle, recovery
from worker.errors import redis_unusable
from worker.safe import safe_text

if TYPE_CHECKING:
    from worker.daemon.worker import DaemonWorker

log = logging.getLogger("worker.daemon")

LOG_EVERY = 60.0  # seconds between two log lines of the same guarded place
_last_logged: dict[str, float] = {}
errors: dict[str, int] = {}  # guarded failures by place, for /metrics


def guarded(where: str, step: Callable[[], object]) -> object:
    """Run `step`; Redis-unusable errors propagate, any other Exception is logged and counted."""
    try:
        return step()
    except Exception as exc:
        if redis_unusable(exc):
            raise
        report(where, exc)
        return None


def report(where: str, exc: BaseException) -> None:
    errors[where] = errors.get(where, 0) + 1
    now = time.monotonic()
    first = where not in _last_logged
    if first or now - _last_logged[where] >= LOG_EVERY:
        _last_logged[where] = now
        log.error(
            "%s failed (%d so far), the worker goes on: %s",
            where,
            errors[where],
            safe_text(f"{type(exc).__name__}: {exc}", 500),
            exc_info=exc if first else None,
        )


class Backoff:
    def __init__(self, first: float = 0.5, factor: float = 2.0, cap: float = 30.0) -> None:
        self.first, self.factor, self.cap = first, factor, cap
        self.current = first

    def next(self) -> float:
        value = self.current
        self.current = min(self.current * self.factor, self.cap)
        return value

    def reset(self) -> None:
        self.current = self.first


@dataclass
class Task:
    name: str
    interval: float  # seconds
    run: Callable[[], object]
    due: Callable[[], bool] | None = None  # instead of the interval, when given
    last: float = float("-inf")


class Housekeeping:
    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks

    def run_due(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for task in self.tasks:
            is_due = task.due() if task.due is not None else now - task.last >= task.interval
            if is_due:
                task.last = now
                guarded(task.name, task.run)


def tasks(worker: DaemonWorker) -> Housekeeping:
    """The main loop's periodic work: worker heartbeat, RQ maintenance (after our own sweep),
    due scheduled jobs, recovery of dead workers' jobs."""
    interval = worker.settings.heartbeat_interval
    return Housekeeping(
        [
            Task("heartbeat", interval, worker.heartbeat),
            Task("maintenance", 0, lambda: maintenance(worker), due=lambda: worker.should_run_maintenance_tasks),
            Task("scheduler", 1.0, lambda: enqueue_due_jobs(worker)),
            Task("recovery sweep", interval, lambda: sweep(worker)),
            Task("memory", interval, lambda: check_memory(worker)),
        ]
    )


def maintenance(worker: DaemonWorker) -> None:
    sweep(worker, force=True)  # before RQ's clean-up, which would fail or drop them
    try:
        guarded("RQ's registry maintenance", worker.run_maintenance_tasks)
    finally:
        worker.last_cleaned_at = now()  # whatever happened, not again before the next interval


def sweep(worker: DaemonWorker, current_job_id: str | None = None, force: bool = False) -> None:
    recovery.sweep(
        worker.connection,
        worker.queues,
        worker.name,
        current_job_id,
        worker.settings.dead_worker_after,
        worker.settings.max_attempts,
        job_class=worker.job_class,
        serializer=worker.serializer,
        force=force,
    )


def enqueue_due_jobs(worker: DaemonWorker) -> None:
    """Move due scheduled jobs (retries with a delay) to their queues, as RQ's scheduler
    does, without a separate scheduler process; RQ's locks keep it to one worker per queue."""
    if worker._scheduler is None:
        # RQ's scheduler reads due jobs with the module's `Job`, not the worker's job class: ours
        # checks a hash's size before reading it and unpacks `data` with a bound (GuardedJob).
        rq.scheduler.Job = worker.job_class
        worker._scheduler = RQScheduler(
            worker.queue_names(), connection=worker.connection, serializer=worker.serializer, name=worker.name
        )
    sched = worker._scheduler
    if sched.should_reacquire_locks:
        sched.acquire_locks()
    elif sched.acquired_locks:
        sched.heartbeat()
    if sched.acquired_locks:
        try:
            sched.enqueue_scheduled_jobs()
        except Exception as exc:  # a scheduled job's hash RQ cannot read: fail it, keep the others
            if redis_unusable(exc):
                raise
            log.warning("scheduled jobs could not be moved (%s)", safe_text(f"{type(exc).__name__}: {exc}"))
            fail_unreadable_scheduled(worker)


def fail_unreadable_scheduled(worker: DaemonWorker) -> None:
    for queue in worker.queues:
        for job_id in queue.scheduled_job_registry.get_jobs_to_schedule():
            guarded("scheduled entry", lambda q=queue, j=job_id: check_scheduled(worker, q, j))


def check_scheduled(worker: DaemonWorker, queue: Queue, job_id: str) -> None:
    try:
        worker.job_class.fetch(job_id, connection=worker.connection, serializer=worker.serializer)
    except Exception as exc:  # gone (its entry dropped), or a hash RQ cannot read (failed)
        if redis_unusable(exc):
            raise
        lifecycle.fail_unreadable(worker.connection, queue, job_id, exc, worker.serializer)


def resident_mb() -> float:
    """This process's resident memory, MiB (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def check_memory(worker: DaemonWorker) -> None:
    """DAEMON_MEMORY_MB: past it, a warm stop (the job in hand finishes) and exit 4, so that the
    supervisor starts a fresh process before the container's limit kills this one mid-job."""
    limit = worker.settings.daemon_memory_mb
    if limit <= 0 or worker.over_memory:
        return
    rss = resident_mb()
    if rss > limit:
        log.error("the daemon holds %.0f MiB, over DAEMON_MEMORY_MB=%d: stopping (warm), exit 4", rss, limit)
        worker.over_memory = True
        worker.request_stop()
