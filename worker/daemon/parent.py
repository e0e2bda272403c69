"""The parent's side of one job: start it and fork its horse, watch the horse, then read how
it ended, fail a dead horse's job clearly, put back a job the worker could not finish, count
and log the end.

Each step that reads what a job carries is guarded: an error tied to the job is reported and
the daemon goes on; whatever is left of the job in Redis, the next recovery sweep settles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

import redis.exceptions
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.utils import now
from rq.worker.base import WorkerStatus

from worker import lifecycle, progress
from worker.daemon import horse, housekeeping
from worker.daemon.housekeeping import Backoff, guarded, report
from worker.daemon.watch import Ending, Verdict, watch
from worker.errors import Outcome, error_type, outcome_of, redis_unusable
from worker.safe import safe_text
from worker.state import CurrentJob

if TYPE_CHECKING:
    from worker.daemon.worker import DaemonWorker

log = logging.getLogger("worker.daemon")

NAME_LIMIT = 1000  # characters of a job's function or queue name kept for outputs (each escapes them)


def func_name(job: Job) -> str:
    """The job's function name (raw, at most NAME_LIMIT characters: each output escapes it,
    see worker.safe), or a placeholder when its payload cannot be read or names no function."""
    try:
        name = job.func_name
    except Exception:  # DeserializationError: e.g. a pickle payload sent to a JSON worker
        return "<undecodable>"
    return name[:NAME_LIMIT] if isinstance(name, str) and name else "<invalid>"


def execute(worker: DaemonWorker, job: Job, queue: Queue) -> None:
    timeout = worker.settings.capped_timeout(job.timeout)
    if timeout != job.timeout and job.timeout is not None:
        log.warning(
            "job %s asked for timeout %s; runs under %ss (MAX_JOB_TIMEOUT)", job.id, safe_text(job.timeout), timeout
        )
    job.timeout = timeout  # the horse's death penalty and our liveness check both read this
    try:
        execution = worker.prepare_execution(job)
    except Exception as exc:
        if not redis_unusable(exc):
            raise
        # Dequeued but not yet registered as started: put it back or it would be lost.
        log.warning("Redis failed before job %s started (%s); putting it back", job.id, type(exc).__name__)
        put_back(worker, job, queue, execution=None)
        return
    worker.live.job_started(
        CurrentJob(
            id=job.id,
            function=func_name(job),
            queue=queue.name[:NAME_LIMIT],
            started=time.monotonic(),
            timeout=float(job.timeout),
        )
    )
    worker.fork_work_horse(job, queue)
    log.info(
        "job %s started",
        job.id,
        extra={"job_id": job.id, "function": func_name(job), "queue": queue.name[:NAME_LIMIT], "worker": worker.name},
    )
    worker.monitor_work_horse(job, queue, execution)
    with contextlib.suppress(redis.exceptions.RedisError):
        worker.set_state(WorkerStatus.IDLE)


def watch_horse(worker: DaemonWorker, job: Job, queue: Queue, execution) -> None:
    started = time.monotonic()
    job.started_at = now()

    def periodic() -> None:
        try:
            worker.maintain_heartbeats(job, execution)
            guarded("recovery sweep", lambda: housekeeping.sweep(worker, job.id))
            # and keeps RQ's scheduler locks (61 s) through a long job
            guarded("scheduler", lambda: housekeeping.enqueue_due_jobs(worker))
        except Exception as exc:  # Redis away: the horse goes on, we beat again next time
            log.warning("heartbeat for job %s failed (%s)", job.id, safe_text(type(exc).__name__))

    ending = watch(
        worker._horse_pid,
        worker.signals,
        timeout=job.timeout,
        grace=worker.settings.job_grace,
        shutdown_timeout=worker.settings.shutdown_timeout,
        tick=lambda: guarded("tick", worker._tick),
        periodic=periodic,
        interval=worker.settings.heartbeat_interval,
        poll=worker.settings.poll_interval,
    )
    worker._horse_pid = 0
    worker.executions.pop(execution.id, None)
    horse_ended(worker, job, queue, execution, ending, time.monotonic() - started)


def horse_ended(worker: DaemonWorker, job: Job, queue: Queue, execution, ending: Ending, duration: float) -> None:
    if ending.verdict is Verdict.WAIT and _exit_code(ending.status) == horse.UNCLAIMED_EXIT:
        ending = Ending(ending.status, Verdict.PUT_BACK, "could not write its end while Redis was unusable")
    if ending.verdict is Verdict.PUT_BACK:
        log.warning("job %s %s: horse stopped, job put back", job.id, ending.why)
        put_back(worker, job, queue, execution)
        job_ended(worker, job, queue, Outcome.REQUEUED, duration, None)
        return
    if ending.verdict is Verdict.KILL:
        log.error("job %s %s; horse killed", job.id, ending.why)
    outcome, etype, counters = Outcome.UNKNOWN, None, {}
    try:
        # (the execution gone: not a job that called os._exit(75) itself)
        if _exit_code(ending.status) == horse.TAKEN_OVER_EXIT and not worker.connection.hexists(execution.key, "id"):
            job_ended(worker, job, queue, Outcome.TAKEN_OVER, duration, None)
            return
        if ending.status != 0:
            fail_dead_horse(worker, job, queue, execution, ending.status)
        outcome, etype = outcome_of_run(worker, job)
        counters = progress.read_counters(job)
    except Exception as exc:  # the job's end could not be read; a sweep settles what is left
        if redis_unusable(exc):
            log.warning("could not read the outcome of job %s (%s)", job.id, type(exc).__name__)
        else:
            report("ending a job", exc)
    job_ended(worker, job, queue, outcome, duration, etype, counters)


def fail_dead_horse(worker: DaemonWorker, job: Job, queue: Queue, execution, status: int | None) -> None:
    """The horse exited abnormally (killed, crashed, out of memory): fail the job clearly."""
    if worker._stopped_job_id == job.id:  # `rq`'s send_stop_job_command: RQ's own handling
        worker._handle_stopped_job(job, queue, execution)
        return
    try:
        job_status = job.get_status(refresh=True)
    except InvalidJobOperation:
        return
    except ValueError:  # a status someone wrote that is none of RQ's: the job has not ended
        job_status = None
    if job_status in (JobStatus.FINISHED, JobStatus.FAILED):
        return
    if not lifecycle.claim_ending(worker.connection, execution.key):
        log.warning("job %s: its horse died, and the job was taken over by another worker meanwhile", job.id)
        return
    job.ended_at = now()
    exc_string = f"worker.errors.WorkHorseDied: the work-horse running this job {_how_it_ended(status)}"
    log.warning("job %s: %s", job.id, exc_string)
    worker.handle_work_horse_killed(job, None, status, None)
    worker.handle_job_failure(job, queue=queue, exc_string=exc_string, execution=execution)


def outcome_of_run(worker: DaemonWorker, job: Job) -> tuple[Outcome, str | None]:
    try:
        outcome = outcome_of(job.get_status(refresh=True))
    except InvalidJobOperation:
        outcome = outcome_of(None)  # finished and already expired (result_ttl=0)
    if outcome in (Outcome.FAILED, Outcome.RETRIED):
        result = job.latest_result()
        return outcome, error_type(result.exc_string) if result is not None else None
    return outcome, None


def put_back(worker: DaemonWorker, job: Job, queue: Queue, execution) -> None:
    """Put a job we could not finish back at the front of its queue, retrying until Redis
    answers (a job in hand is never dropped). Gives up only on cold shutdown; then the
    job stays in the started registry, where recovery finds it."""
    meta, meta_bytes = lifecycle.counted(job, "requeued")
    backoff = Backoff()
    while True:
        try:
            ours = lifecycle.put_back_running(
                worker.connection,
                job,
                queue,
                execution,
                worker.inflight_key,
                meta_bytes,
                cleanup=lambda pipe: worker.cleanup_execution(job, pipeline=pipe, execution=execution),
            )
        except redis.exceptions.WatchError:
            continue  # a sweep took the job at this very moment: look again
        except Exception as exc:
            if not redis_unusable(exc):
                report("putting a job back", exc)  # left where it is: the sweep takes it
                return
            if worker.signals.cold and backoff.current >= 4:
                log.error("could not put job %s back (%s); recovery will", job.id, type(exc).__name__)
                return
            delay = backoff.next()
            log.warning("putting job %s back failed (%s); retrying in %.1fs", job.id, type(exc).__name__, delay)
            time.sleep(delay)
            worker.live.beat()
            continue
        if not ours:
            log.warning(
                "job %s was taken over by another worker while this one looked dead; not putting it back", job.id
            )
            return
        job.meta = meta
        log.info("job %s put back at the front of %s", job.id, safe_text(queue.name))
        return


def job_ended(worker: DaemonWorker, job, queue, outcome, duration, etype, counters=None) -> None:
    function = func_name(job)
    worker.live.job_ended(outcome, duration, counters)
    level = logging.INFO if outcome in (Outcome.OK, Outcome.REQUEUED) else logging.WARNING
    log.log(
        level,
        "job %s %s in %.3fs",
        job.id,
        outcome,
        duration,
        extra={
            "job_id": job.id,
            "function": function,
            "queue": queue.name[:NAME_LIMIT],
            "duration": round(duration, 6),
            "outcome": outcome,
            "error_type": safe_text(etype, 100) if etype else None,
            "worker": worker.name,
        },
    )


def _exit_code(status: int | None) -> int | None:
    return os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None


def _how_it_ended(status: int | None) -> str:
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by signal {sig} ({signal.Signals(sig).name})"
    code = _exit_code(status)
    if code == horse.BROKEN_EXIT:
        return f"failed before or after the job's own code ran (exit status {code}; the worker's log says why)"
    return f"exited with status {code if code is not None else '?'}"
