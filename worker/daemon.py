"""The daemon: an RQ fork worker with a main loop we control.

`DaemonWorker` subclasses RQ's `Worker` and keeps its job semantics (fork a work-horse per
job, registries, results, retries, `rq info` visibility). It replaces three things:

- the loop: dequeue blocks at most `POLL_INTERVAL` seconds, so the in-memory heartbeat
  that liveness reads stays fresh while idle; Redis errors of any kind (connection or
  timeout, anywhere) are logged and retried with backoff instead of ending the worker;
- the horse monitor: it waits on a pidfd and a signal wake-up pipe, so it sees the horse
  exit at once and a shutdown request within a tick, and it enforces `SHUTDOWN_TIMEOUT`;
- signals: handlers only set flags. SIGTERM asks for a warm shutdown (finish the job,
  exit 0); past `SHUTDOWN_TIMEOUT`, or on a second SIGTERM or a SIGINT (cold shutdown),
  the horse is killed and its job put back at the front of its queue, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import signal
import time

import redis.exceptions
from rq import Worker
from rq.command import parse_payload
from rq.defaults import DEFAULT_SERIALIZER_CLASS
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.suspension import is_suspended
from rq.utils import import_job_class, now
from rq.worker.base import WorkerStatus

from worker import progress, recovery
from worker.allowlist import GuardedJob, mark_work_horse
from worker.dequeue import Dequeuer, fail_unreadable, inflight_key
from worker.errors import BadInputError, Outcome, error_type, is_transient, outcome_of
from worker.settings import Settings, get_settings
from worker.state import CurrentJob, LiveState, State

log = logging.getLogger("worker.daemon")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)
# A horse exits with this when its job was taken over by another worker (see _may_end_job).
TAKEN_OVER_EXIT = 75


def func_name(job: Job) -> str:
    """The job's function name, or a placeholder when its payload cannot be deserialized."""
    try:
        return job.func_name or "?"
    except Exception:  # DeserializationError: e.g. a pickle payload sent to a JSON worker
        return "<undecodable>"


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


class DaemonWorker(Worker):
    job_class = GuardedJob

    def __init__(
        self,
        queues,
        name: str | None = None,
        *args,
        settings: Settings | None = None,
        live: LiveState | None = None,
        **kwargs,
    ) -> None:
        """Built as RQ builds workers (`cls(queues, name, connection=...)`, `rq worker -w`,
        `Worker.all()`): settings then come from the environment.

        RQ's defaults do not switch off what this class is for. `rq worker` passes RQ's default
        job class (`rq.job.Job`) and serializer (pickle) explicitly, whatever the user typed:
        those mean "unset" here, so the allowlist stays on (`GuardedJob`) and the serializer is
        WORKER_SERIALIZER (JSON unless set to pickle). A job class that is not a `GuardedJob`
        is refused (ValueError). Any other serializer given is used."""
        self.settings = settings if settings is not None else get_settings()  # before RQ's __init__
        job_class = kwargs.get("job_class")
        if job_class is not None:
            if isinstance(job_class, str):
                job_class = import_job_class(job_class)
            kwargs["job_class"] = None if job_class is Job else job_class
        if kwargs.get("serializer") in (None, DEFAULT_SERIALIZER_CLASS):
            kwargs["serializer"] = JSONSerializer if self.settings.serializer == "json" else DefaultSerializer
        super().__init__(queues, name, *args, **kwargs)
        if not issubclass(self.job_class, GuardedJob):
            raise ValueError(
                f"job class {self.job_class.__module__}.{self.job_class.__qualname__} is not a "
                "worker.allowlist.GuardedJob: it would run any function a payload names"
            )
        self.live = live if live is not None else LiveState(self.name, self.settings.liveness_timeout)
        self.warm_stop_at: float | None = None
        self.cold_stop = False
        self._wake_r = self._wake_w = -1  # opened by run(): RQ also builds workers only to read them
        self._last_redis_beat = 0.0
        self._last_schedule = 0.0
        self._last_sweep = 0.0
        self._dequeuer: Dequeuer | None = None
        self._scheduler: RQScheduler | None = None
        self._backoff = Backoff()

    @property
    def connection_timeout(self) -> int:
        """RQ raises the socket timeout to this; ours blocks POLL_INTERVAL at most, so a frozen
        Redis costs the main loop seconds, not RQ's default of seven minutes."""
        return self.settings.poll_interval + 4

    # -- signals: flags only ---------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _restore_signal_handlers(self) -> None:
        """When run() returns: the process's own handlers back, the wake-up pipe closed (a
        program that calls work() again and again, as RQ's tests do, must not run out of fds)."""
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT or self.warm_stop_at is not None:
            self.cold_stop = True
        if self.warm_stop_at is None:
            self.warm_stop_at = time.monotonic()
        self._stop_requested = True

    def unsubscribe(self) -> None:
        """RQ's, without waiting a second for its pubsub thread (a daemon thread, blocked in a
        read) to notice: every stop would take a second longer."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop()

    def request_stop(self, signum=None, frame=None) -> None:
        self._on_signal(signal.SIGTERM, frame)

    def handle_payload(self, message) -> None:
        """RQ's commands, from its pubsub thread. RQ carries out `shutdown` by sending itself
        SIGINT, its warm stop; SIGINT is our cold one, so here it is a warm stop, as in RQ."""
        payload = parse_payload(message)
        if payload.get("command") == "shutdown":
            log.info("shutdown command received")
            self.request_stop()
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"s")  # wake the main loop
            return
        super().handle_payload(message)

    def _tick(self) -> None:
        """Called at least every POLL_INTERVAL by the main loop: proves it is alive."""
        self.live.beat()
        if self._stop_requested and self.live.state != State.DRAINING:
            self.live.set_state(State.DRAINING)
            log.info("shutdown requested: %s", "cold" if self.cold_stop else "warm, finishing the current job")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._wake_r, 512):
                pass

    def _sleep(self, seconds: float) -> None:
        """Sleep, ticking, but wake early on a signal."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            self._tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([self._wake_r], [], [], min(left, 1.0))
            self._drain_wakeups()

    def work(self, burst: bool = False, max_jobs: int | None = None, dequeue_strategy=None, **_rq_options) -> bool:
        """RQ's entry point (`rq worker -w worker.daemon.DaemonWorker`), running our loop; RQ's
        options for its own loop (logging, scheduler, idle time) do not apply."""
        if dequeue_strategy is not None:
            self.settings = self.settings.override(
                dequeue_strategy=str(getattr(dequeue_strategy, "value", dequeue_strategy))
            )
        return self.run(burst=burst, max_jobs=max_jobs) > 0

    # -- the main loop -----------------------------------------------------------------
    def run(self, burst: bool = False, max_jobs: int | None = None) -> int:
        """Run until stopped; returns the number of jobs executed."""
        self._install_signal_handlers()
        self._dequeue_strategy = self.settings.dequeue_strategy
        self._tick()
        if not self._bootstrap_with_retry():
            self._restore_signal_handlers()
            return 0
        self.live.set_state(State.IDLE)
        with contextlib.suppress(*REDIS_ERRORS):
            self.set_state(WorkerStatus.IDLE)  # as RQ shows a worker waiting for work
        completed = 0
        try:
            while not self._stop_requested:
                self._tick()
                try:
                    self._housekeeping()
                    if is_suspended(self.connection, self):
                        if burst:
                            log.info("queues suspended (rq suspend); burst mode exits")
                            break
                        if self.get_state() != WorkerStatus.SUSPENDED:
                            self.set_state(WorkerStatus.SUSPENDED)
                        self._sleep(self.settings.poll_interval)
                        continue
                    if self.get_state() == WorkerStatus.SUSPENDED:
                        self.set_state(WorkerStatus.IDLE)
                    result = self._dequeue(burst)
                    self._redis_back()
                except REDIS_ERRORS as exc:
                    self._redis_lost(exc)
                    continue
                if result is None:
                    if burst:
                        log.info("queues empty, burst mode exits")
                        break
                    continue
                job, queue = result
                self.reorder_queues(reference_queue=queue)  # DEQUEUE_STRATEGY round_robin / random
                self.execute_job(job, queue)
                completed += 1
                if max_jobs is not None and completed >= max_jobs:
                    log.info("executed %d jobs (--max-jobs), exiting", completed)
                    break
        finally:
            self.live.set_state(State.DRAINING)
            self._teardown_quietly()
            self._restore_signal_handlers()
        return completed

    def _bootstrap_with_retry(self) -> bool:
        while not self._stop_requested:
            self._tick()
            try:
                self.bootstrap(self.settings.log_level)
                self.connection.hset(self.key, recovery.OURS_FIELD, "1")
                self._redis_back()
                return True
            except REDIS_ERRORS as exc:
                self._redis_lost(exc)
            except ValueError as exc:  # RQ: "There exists an active worker named ... already"
                if recovery.worker_alive(self.connection, self.name, self.settings.dead_worker_after):
                    log.error("%s; waiting for it to go away", exc)
                    self._sleep(self.settings.heartbeat_interval)
                else:
                    log.warning("worker %s left a stale registration (it died); taking over", self.name)
                    self.connection.hset(self.key, "death", "stale")
        return False

    def _redis_lost(self, exc: BaseException) -> None:
        self.live.redis_ok = False
        delay = self._backoff.next()
        log.warning("Redis unavailable (%s); retrying in %.1fs", type(exc).__name__, delay)
        self._sleep(delay)

    def _redis_back(self) -> None:
        if self.live.redis_ok is False:
            log.info("Redis is back")
        self.live.redis_ok = True
        self._backoff.reset()

    def _housekeeping(self) -> None:
        """Periodic Redis work: worker heartbeat, RQ maintenance, due scheduled jobs."""
        t = time.monotonic()
        interval = self.settings.heartbeat_interval
        if t - self._last_redis_beat >= interval:
            self.heartbeat()
            self._last_redis_beat = t
        if self.should_run_maintenance_tasks:
            self._recover_abandoned(force=True)  # before RQ's clean-up, which would fail or drop them
            try:
                self.run_maintenance_tasks()
            except REDIS_ERRORS:
                raise
            except Exception:  # RQ's clean-up reads job hashes: whatever they hold, the worker goes on
                log.exception("RQ's registry maintenance failed")
                self.last_cleaned_at = now()
        if t - self._last_schedule >= 1:
            self._last_schedule = t
            self._enqueue_due_jobs()
        if t - self._last_sweep >= interval:
            self._last_sweep = t
            self._recover_abandoned()

    def _recover_abandoned(self, current_job_id: str | None = None, force: bool = False) -> None:
        try:
            recovery.sweep(
                self.connection,
                self.queues,
                self.name,
                current_job_id,
                self.settings.dead_worker_after,
                self.settings.max_attempts,
                job_class=self.job_class,
                serializer=self.serializer,
                force=force,
            )
        except REDIS_ERRORS:
            raise
        except Exception:  # a sweep must never take the worker down
            log.exception("recovery sweep failed")

    def _enqueue_due_jobs(self) -> None:
        """Move due scheduled jobs (retries with a delay) to their queues, as RQ's scheduler
        does, without a separate scheduler process; RQ's locks keep it to one worker per queue."""
        if self._scheduler is None:
            self._scheduler = RQScheduler(
                self.queue_names(), connection=self.connection, serializer=self.serializer, name=self.name
            )
        sched = self._scheduler
        if sched.should_reacquire_locks:
            sched.acquire_locks()
        elif sched.acquired_locks:
            sched.heartbeat()
        if sched.acquired_locks:
            try:
                sched.enqueue_scheduled_jobs()
            except REDIS_ERRORS:
                raise
            except Exception as exc:  # a scheduled job's hash RQ cannot read: fail it, keep the others
                log.warning("scheduled jobs could not be moved (%s: %s)", type(exc).__name__, exc)
                self._fail_unreadable_scheduled()

    def _fail_unreadable_scheduled(self) -> None:
        for queue in self.queues:
            for job_id in queue.scheduled_job_registry.get_jobs_to_schedule():
                try:
                    self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
                except NoSuchJobError:
                    self.connection.zrem(queue.scheduled_job_registry.key, job_id)
                except REDIS_ERRORS:
                    raise
                except Exception as exc:
                    fail_unreadable(self.connection, queue, job_id, exc, self.serializer)

    def _teardown_quietly(self) -> None:
        if self._dequeuer is not None:
            self._dequeuer.stop()
            self._dequeuer = None  # it holds this run's wake-up fd
        try:
            recovery.restore_inflight(self.connection, self.inflight_key)  # normally empty
            if self._scheduler is not None and self._scheduler.acquired_locks:
                self._scheduler.release_locks()
            self.teardown()
        except REDIS_ERRORS as exc:
            log.warning("could not register worker death in Redis (%s)", type(exc).__name__)

    def _dequeue(self, burst: bool) -> tuple[Job, Queue] | None:
        if self._dequeuer is None:
            self._dequeuer = Dequeuer(
                self.connection,
                self.inflight_key,
                self.settings.poll_interval,
                self.job_class,
                self.serializer,
                wake_fd=self._wake_r,
            )
        try:
            return self._dequeuer.next(self._ordered_queues, burst)
        finally:
            self._drain_wakeups()

    @property
    def inflight_key(self) -> str:
        return inflight_key(self.name)

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's, plus: the job leaves our in-flight list in the same transaction that puts it in
        the started registry, so it is always in one of the two."""
        with self.connection.pipeline() as pipeline:
            execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipeline, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            pipeline.lrem(self.inflight_key, 0, job.id)
            pipeline.execute()
        return execution

    # -- one job -----------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        timeout = self.settings.capped_timeout(job.timeout)
        if timeout != job.timeout and job.timeout is not None:
            log.warning("job %s asked for timeout %r; runs under %ss (MAX_JOB_TIMEOUT)", job.id, job.timeout, timeout)
        job.timeout = timeout  # the horse's death penalty and our liveness check both read this
        try:
            execution = self.prepare_execution(job)
        except REDIS_ERRORS as exc:
            # Dequeued but not yet registered as started: put it back or it would be lost.
            log.warning("Redis failed before job %s started (%s); putting it back", job.id, type(exc).__name__)
            self._put_back(job, queue, execution=None)
            return
        self.live.job_started(
            CurrentJob(
                id=job.id,
                function=func_name(job),
                queue=queue.name,
                started=time.monotonic(),
                timeout=float(job.timeout),
            )
        )
        self.fork_work_horse(job, queue)
        self.monitor_work_horse(job, queue, execution)
        with contextlib.suppress(*REDIS_ERRORS):
            self.set_state(WorkerStatus.IDLE)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.settings.horse_memory_mb > 0:
            limit = self.settings.horse_memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        mark_work_horse()
        with contextlib.suppress(*REDIS_ERRORS):
            progress.reset_counters(job)
        super().main_work_horse(job, queue)

    def _may_end_job(self, job: Job, execution) -> None:
        """In the horse, before anything about the job's end is written: claim the execution.
        If a sweep took the job over meanwhile (this worker was cut off from Redis for longer
        than DEAD_WORKER_AFTER, so it looked dead, and another worker runs the job again), the
        job is the other run's to end: write nothing and exit with TAKEN_OVER_EXIT."""
        if execution is None or recovery.claim_ending(self.connection, execution.key):
            return
        log.warning(
            "job %s was taken over by another worker while this one could not reach Redis; this run's outcome"
            " is dropped",
            job.id,
        )
        logging.shutdown()
        os._exit(TAKEN_OVER_EXIT)

    def _finalize_success(self, job, queue, execution, return_value) -> None:  # runs in the horse
        self._may_end_job(job, execution)
        super()._finalize_success(job, queue, execution, return_value)

    def _finalize_failure(self, job, queue, execution, exc_info) -> None:  # runs in the horse
        self._may_end_job(job, execution)
        exc = exc_info[1]
        if isinstance(exc, BadInputError):
            job.retries_left = 0  # bad input is final, whatever Retry the client asked for
        elif is_transient(exc) and job.retries_left is None and self.settings.retry_intervals:
            job.retries_left = len(self.settings.retry_intervals)
            job.retry_intervals = list(self.settings.retry_intervals)
        super()._finalize_failure(job, queue, execution, exc_info)

    def monitor_work_horse(self, job: Job, queue: Queue, execution) -> None:
        pid = self._horse_pid
        started = time.monotonic()
        job.started_at = now()
        pidfd = os.pidfd_open(pid)
        status: int | None = None
        put_back = False
        last_beat = started
        try:
            while True:
                self._tick()
                select.select([pidfd, self._wake_r], [], [], self.settings.poll_interval)
                self._drain_wakeups()
                wpid, wstatus, _ = os.wait4(pid, os.WNOHANG)
                if wpid == pid:
                    status = wstatus
                    break
                t = time.monotonic()
                past_deadline = (
                    self.warm_stop_at is not None and t - self.warm_stop_at >= self.settings.shutdown_timeout
                )
                if self.cold_stop or past_deadline:
                    why = (
                        "cold shutdown"
                        if self.cold_stop
                        else f"still running after SHUTDOWN_TIMEOUT={self.settings.shutdown_timeout}s"
                    )
                    log.warning("job %s %s: killing the horse and putting the job back", job.id, why)
                    self._kill_and_reap(pid)
                    put_back = True
                    break
                if t - started > job.timeout + self.settings.job_grace:
                    log.error("job %s outlived its timeout by %ss; killing the horse", job.id, self.settings.job_grace)
                    status = self._kill_and_reap(pid)
                    break
                if t - last_beat >= self.settings.heartbeat_interval:
                    last_beat = t
                    try:
                        self.maintain_heartbeats(job, execution)
                        self._recover_abandoned(job.id)
                        self._enqueue_due_jobs()  # and keeps RQ's scheduler locks (61 s) through a long job
                    except REDIS_ERRORS as exc:
                        log.warning("heartbeat for job %s failed (%s)", job.id, type(exc).__name__)
        finally:
            os.close(pidfd)
        self._horse_pid = 0
        self.executions.pop(execution.id, None)
        duration = time.monotonic() - started
        if put_back:
            self._put_back(job, queue, execution)
            self._job_ended(job, queue, Outcome.REQUEUED, duration, None)
            return
        try:
            # (the execution gone: not a job that called os._exit(75) itself)
            if self._taken_over(status) and not self.connection.hexists(execution.key, "id"):
                self._job_ended(job, queue, Outcome.TAKEN_OVER, duration, None)
                return
            if status != 0:
                self._handle_dead_horse(job, queue, execution, status)
            outcome, etype = self._outcome(job)
            counters = progress.read_counters(job)
        except REDIS_ERRORS as exc:
            log.warning("could not read the outcome of job %s (%s)", job.id, type(exc).__name__)
            outcome, etype, counters = Outcome.UNKNOWN, None, {}
        self._job_ended(job, queue, outcome, duration, etype, counters)

    @staticmethod
    def _taken_over(status: int | None) -> bool:
        return status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == TAKEN_OVER_EXIT

    def _kill_and_reap(self, pid: int) -> int | None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the horse leads its own process group
        with contextlib.suppress(ChildProcessError):
            return os.wait4(pid, 0)[1]
        return None

    def _handle_dead_horse(self, job: Job, queue: Queue, execution, status: int | None) -> None:
        """The horse exited abnormally (killed, crashed, out of memory): fail the job clearly."""
        if self._stopped_job_id == job.id:  # `rq`'s send_stop_job_command: RQ's own handling
            self._handle_stopped_job(job, queue, execution)
            return
        try:
            job_status = job.get_status(refresh=True)
        except InvalidJobOperation:
            return
        if job_status in (JobStatus.FINISHED, JobStatus.FAILED):
            return
        if not recovery.claim_ending(self.connection, execution.key):
            log.warning("job %s: its horse died, and the job was taken over by another worker meanwhile", job.id)
            return
        job.ended_at = now()
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            how = f"killed by signal {sig} ({signal.Signals(sig).name})"
        else:
            how = f"exited with status {os.waitstatus_to_exitcode(status) if status is not None else '?'}"
        exc_string = f"worker.errors.WorkHorseDied: the work-horse running this job {how}"
        log.warning("job %s: %s", job.id, exc_string)
        self.handle_work_horse_killed(job, None, status, None)
        self.handle_job_failure(job, queue=queue, exc_string=exc_string, execution=execution)

    def _outcome(self, job: Job) -> tuple[Outcome, str | None]:
        try:
            outcome = outcome_of(job.get_status(refresh=True))
        except InvalidJobOperation:
            outcome = outcome_of(None)  # finished and already expired (result_ttl=0)
        if outcome in (Outcome.FAILED, Outcome.RETRIED):
            result = job.latest_result()
            return outcome, error_type(result.exc_string) if result is not None else None
        return outcome, None

    def _put_back(self, job: Job, queue: Queue, execution) -> None:
        """Put a job we could not finish back at the front of its queue, retrying until Redis
        answers (a job in hand is never dropped). Gives up only on cold shutdown; then the
        job stays in the started registry, where recovery finds it."""
        meta, meta_bytes = recovery.counted(job, "requeued")
        backoff = Backoff()
        while True:
            try:
                with self.connection.pipeline() as pipe:
                    ours = self._still_ours(pipe, job, execution)
                    pipe.multi()
                    pipe.lrem(self.inflight_key, 0, job.id)
                    if ours:
                        if execution is not None:
                            self.cleanup_execution(job, pipeline=pipe, execution=execution)
                        recovery.put_back(pipe, job.id, queue.key, meta_bytes)
                    pipe.execute()
                if not ours:
                    log.warning(
                        "job %s was taken over by another worker while this one looked dead; not putting it back",
                        job.id,
                    )
                    return
                job.meta = meta
                log.info("job %s put back at the front of %s", job.id, queue.name)
                return
            except redis.exceptions.WatchError:
                continue  # a sweep took the job at this very moment: look again
            except REDIS_ERRORS as exc:
                if self.cold_stop and backoff.current >= 4:
                    log.error("could not put job %s back (%s); recovery will", job.id, type(exc).__name__)
                    return
                delay = backoff.next()
                log.warning("putting job %s back failed (%s); retrying in %.1fs", job.id, type(exc).__name__, delay)
                time.sleep(delay)
                self.live.beat()

    def _still_ours(self, pipe, job: Job, execution) -> bool:
        """Is the job still this worker's to put back? Not when a sweep took it over while this
        worker was cut off from Redis and looked dead: it deleted the execution (or, for a job not
        yet started, emptied the in-flight list), and someone may be running the job now. Watched,
        so that a sweep at the same moment makes the caller's transaction fail and look again."""
        if execution is not None:
            pipe.watch(execution.key)
            return bool(pipe.hexists(execution.key, "id"))
        pipe.watch(self.inflight_key)
        return pipe.lpos(self.inflight_key, job.id) is not None

    def _job_ended(self, job, queue, outcome, duration, etype, counters=None) -> None:
        self.live.job_ended(outcome, duration, counters)
        level = logging.INFO if outcome in (Outcome.OK, Outcome.REQUEUED) else logging.WARNING
        log.log(
            level,
            "job %s %s in %.3fs",
            job.id,
            outcome,
            duration,
            extra={
                "job_id": job.id,
                "function": func_name(job),
                "queue": queue.name,
                "duration": round(duration, 6),
                "outcome": outcome,
                "error_type": etype,
                "worker": self.name,
            },
        )
