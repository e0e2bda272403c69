"""What runs in the forked work-horse, and only there.

`run` is the whole life of the child between fork and exit, in one boundary that ends in
`os._exit`: whatever happens in it (a job hash RQ trips on, a bug of ours, a KeyboardInterrupt),
no path returns into the daemon's frames, whose loop, health server and Redis connections
belong to the parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import signal
import time
import traceback
from typing import TYPE_CHECKING, NoReturn

from rq.job import Job
from rq.queue import Queue

from worker import progress
from worker.allowlist import mark_work_horse
from worker.errors import BadInputError, is_transient, redis_unusable
from worker.lifecycle import claim_ending
from worker.safe import safe_text

if TYPE_CHECKING:
    from worker.daemon.worker import DaemonWorker

log = logging.getLogger("worker.horse")

# A horse exits with this when its job was taken over by another worker (see may_end_job).
TAKEN_OVER_EXIT = 75
# ... with this when something outside the job's own code failed in it (the parent fails the job).
BROKEN_EXIT = 70
# ... and with this when Redis stayed unusable while it tried to claim the job's end (put back).
UNCLAIMED_EXIT = 76
CLAIM_PATIENCE = 10.0  # seconds: a failover of a quick Sentinel setup; past it the job runs again


def run(worker: DaemonWorker, job: Job, queue: Queue) -> NoReturn:
    """The child's side of the fork. Never returns."""
    code = BROKEN_EXIT
    try:
        os.setpgrp()  # as RQ's horse: its own process group
        os.environ["RQ_WORKER_ID"] = worker.name
        os.environ["RQ_JOB_ID"] = job.id
        prepare(worker, job)
        worker.main_work_horse(job, queue)  # RQ's: runs the job and calls os._exit itself
        code = 0
    except BaseException:  # noqa: BLE001 (the boundary: nothing may unwind into the parent's frames)
        with contextlib.suppress(BaseException):
            log.error("work-horse for job %s failed outside the job:\n%s", job.id, traceback.format_exc(limit=8))
    finally:
        with contextlib.suppress(BaseException):
            logging.shutdown()
        os._exit(code)


def prepare(worker: DaemonWorker, job: Job) -> None:
    """Leave the parent's world behind: its signal pipe, its handlers; set the horse's own
    memory limit; start the attempt with clean counters."""
    random.seed()
    signal.set_wakeup_fd(-1)
    worker.signals.close_pipe()
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)  # as the parent: only SIGTERM/SIGKILL end a horse
    if worker.settings.horse_memory_mb > 0:
        limit = worker.settings.horse_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    mark_work_horse()
    # RQ's horse logs three lines a job ("Job OK", where the result is kept...); the parent logs
    # one line for each start and end, with the outcome: RQ's warnings and errors stay.
    logging.getLogger("rq.worker").setLevel(max(logging.WARNING, logging.getLogger("rq.worker").level))
    try:
        progress.reset_counters(job)
    except Exception as exc:  # progress is best effort; Redis away: RQ's own steps will say so
        if not redis_unusable(exc):
            raise


def may_end_job(worker: DaemonWorker, job: Job, execution) -> None:
    """Before anything about the job's end is written: claim the execution. If a sweep took the
    job over meanwhile (this worker was cut off from Redis for longer than DEAD_WORKER_AFTER, so
    it looked dead, and another worker runs the job again), the job is the other run's to end:
    write nothing and exit with TAKEN_OVER_EXIT. While Redis is unusable (a failover, say) the
    claim is tried again for CLAIM_PATIENCE seconds; past that the horse exits UNCLAIMED_EXIT
    and the parent puts the job back (ingestion is idempotent: a second run stores nothing twice)."""
    if execution is None:
        return
    deadline = time.monotonic() + CLAIM_PATIENCE
    delay = 0.25
    while True:
        try:
            if claim_ending(worker.connection, execution.key):
                return
            break
        except Exception as exc:
            if not redis_unusable(exc) or time.monotonic() + delay > deadline:
                log.warning("job %s: its end could not be claimed (%s); the worker puts it back", job.id, exc)
                logging.shutdown()
                os._exit(UNCLAIMED_EXIT)
            time.sleep(delay)
            delay = min(delay * 2, 4.0)
    log.warning(
        "job %s was taken over by another worker while this one could not reach Redis; this run's outcome is dropped",
        job.id,
    )
    logging.shutdown()
    os._exit(TAKEN_OVER_EXIT)


def retry_policy(job: Job, exc: BaseException | None, retry_intervals: tuple[float, ...]) -> None:
    """Bad input is final, whatever Retry the client asked for; a transient failure of a job
    that asked for no retry gets RETRY_INTERVALS. A job that will be retried keeps the error in
    `meta["retried_after"]` (RQ records no result for a retried attempt), for whoever waits on it."""
    if isinstance(exc, BadInputError):
        job.retries_left = 0
    elif is_transient(exc) and job.retries_left is None and retry_intervals:
        job.retries_left = len(retry_intervals)
        job.retry_intervals = list(retry_intervals)
    if exc is not None and job.retries_left and isinstance(job.meta, dict):  # saved with the job by its retry
        job.meta["retried_after"] = f"{type(exc).__name__}: {safe_text(' '.join(str(exc).split()), 300)}"
