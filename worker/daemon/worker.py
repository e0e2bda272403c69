"""`DaemonWorker`: the RQ-facing class. An RQ fork worker whose main loop we control.

It keeps RQ's job semantics (a work-horse forked per job, registries, results, retries, `rq
info` visibility) and replaces the loop, the horse's watch and the signal handling. Each
iteration of the loop is an error boundary: an error tied to one job or entry is logged and
the loop goes on; any Redis error (but a lost optimistic lock) means Redis is unusable for a
while: back off, /readyz 503, carry on. The pieces live beside it: `signals`, `watch` (the
parent's side of a job), `horse` (the child's side), `housekeeping` (periodic tasks).
"""

from __future__ import annotations

import contextlib
import logging
import os
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

from worker import lifecycle, progress, recovery
from worker.allowlist import GuardedJob
from worker.daemon import horse
from worker.daemon.housekeeping import Housekeeping, Task, guarded, report
from worker.daemon.signals import Signals
from worker.daemon.watch import Ending, Verdict, watch
from worker.dequeue import Dequeuer
from worker.errors import Outcome, error_type, outcome_of, redis_unusable
from worker.safe import safe_text
from worker.settings import Settings, get_settings
from worker.state import CurrentJob, LiveState, State

log = logging.getLogger("worker.daemon")


def func_name(job: Job) -> str:
    """The job's function name, safe for any output, or a placeholder when its payload cannot
    be read or names no function."""
    try:
        name = job.func_name
    except Exception:  # DeserializationError: e.g. a pickle payload sent to a JSON worker
        return "<undecodable>"
    return safe_text(name, 200) if isinstance(name, str) and name else "<invalid>"


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
        self.signals = Signals()
        self._dequeuer: Dequeuer | None = None
        self._scheduler: RQScheduler | None = None
        self._backoff = Backoff()
        interval = self.settings.heartbeat_interval
        self._housekeeping = Housekeeping(
            [
                Task("heartbeat", interval, self.heartbeat),
                Task("maintenance", 0, self._maintenance, due=lambda: self.should_run_maintenance_tasks),
                Task("scheduler", 1.0, self._enqueue_due_jobs),
                Task("recovery sweep", interval, self._recover_abandoned),
            ]
        )

    @property
    def connection_timeout(self) -> int:
        """RQ raises the socket timeout to this; ours blocks POLL_INTERVAL at most, so a frozen
        Redis costs the main loop seconds, not RQ's default of seven minutes."""
        return self.settings.poll_interval + 4

    # -- RQ's hooks, delegated --------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        self.signals.install(on_stop=self._flag_stop)

    def _flag_stop(self) -> None:
        self._stop_requested = True

    def request_stop(self, signum=None, frame=None) -> None:
        self.signals.request_stop()

    def unsubscribe(self) -> None:
        """RQ's, without waiting a second for its pubsub thread (a daemon thread, blocked in a
        read) to notice: every stop would take a second longer."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop()

    def handle_payload(self, message) -> None:
        """RQ's commands, from its pubsub thread. Whatever a message holds, it is at worst
        ignored with a log line: the thread (and with it every later command) must live on.
        RQ carries out `shutdown` by sending itself SIGINT, its warm stop; SIGINT is our cold
        one, so here it is a warm stop, as in RQ."""
        try:
            payload = parse_payload(message)
            if not isinstance(payload, dict):
                raise ValueError(f"a command is a JSON object, not {type(payload).__name__}")
            if payload.get("command") == "shutdown":
                log.info("shutdown command received")
                self.request_stop()
                self.signals.wake()
                return
            super().handle_payload(message)
        except Exception as exc:
            log.warning("command message ignored: %s", safe_text(f"{type(exc).__name__}: {exc}", 300))

    def _pubsub_exception_handler(self, exc, pubsub, pubsub_thread) -> None:
        """RQ's ends its thread on anything but a connection error: ours never does."""
        log.warning("command channel: %s; listening again in 2s", safe_text(f"{type(exc).__name__}: {exc}"))
        time.sleep(2.0)

    def work(self, burst: bool = False, max_jobs: int | None = None, dequeue_strategy=None, **_rq_options) -> bool:
        """RQ's entry point (`rq worker -w worker.daemon.DaemonWorker`), running our loop; RQ's
        options for its own loop (logging, scheduler, idle time) do not apply."""
        if dequeue_strategy is not None:
            self.settings = self.settings.override(
                dequeue_strategy=str(getattr(dequeue_strategy, "value", dequeue_strategy))
            )
        return self.run(burst=burst, max_jobs=max_jobs) > 0

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's, as the lifecycle's `start`: the job leaves our in-flight list in the same
        transaction that puts it in the started registry, so it is always in one of the two."""
        with self.connection.pipeline() as pipeline:
            execution = lifecycle.start(pipeline, job, self.inflight_key, self.get_heartbeat_ttl(job), self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            pipeline.execute()
        return execution

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        pid = os.fork()
        if pid == 0:
            horse.run(self, job, queue)  # never returns
        self._horse_pid = pid

    def _finalize_success(self, job, queue, execution, return_value) -> None:  # in the horse
        horse.may_end_job(self, job, execution)
        super()._finalize_success(job, queue, execution, return_value)

    def _finalize_failure(self, job, queue, execution, exc_info) -> None:  # in the horse
        horse.may_end_job(self, job, execution)
        horse.retry_policy(job, exc_info[1], self.settings.retry_intervals)
        super()._finalize_failure(job, queue, execution, exc_info)

    @property
    def inflight_key(self) -> str:
        return lifecycle.inflight_key(self.name)

    # -- the main loop -----------------------------------------------------------------
    def _tick(self) -> None:
        """Called at least every POLL_INTERVAL: proves the loop is alive."""
        self.live.beat()
        while self.signals.ignored:
            sig = self.signals.ignored.pop()
            log.warning("signal %s ignored (SIGTERM stops the worker)", signal.Signals(sig).name)
        if self._stop_requested and self.live.state != State.DRAINING:
            self.live.set_state(State.DRAINING)
            log.info("shutdown requested: %s", "cold" if self.signals.cold else "warm, finishing the current job")

    def _sleep(self, seconds: float) -> None:
        """Sleep, ticking, but wake early on a signal."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            self._tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.signals.wait(min(left, 1.0))

    def run(self, burst: bool = False, max_jobs: int | None = None) -> int:
        """Run until stopped; returns the number of jobs executed."""
        self._install_signal_handlers()
        self._dequeue_strategy = self.settings.dequeue_strategy
        self._tick()
        if not self._bootstrap_with_retry():
            self.signals.restore()
            return 0
        self.live.set_state(State.IDLE)
        with contextlib.suppress(redis.exceptions.RedisError):
            self.set_state(WorkerStatus.IDLE)  # as RQ shows a worker waiting for work
        completed = 0
        try:
            while not self._stop_requested:
                self._tick()
                try:
                    done = self._iteration(burst)
                except Exception as exc:
                    self._iteration_failed(exc)
                    continue
                if done is None:
                    break
                completed += done
                if max_jobs is not None and completed >= max_jobs:
                    log.info("executed %d jobs (--max-jobs), exiting", completed)
                    break
        finally:
            self.live.set_state(State.DRAINING)
            self._teardown_quietly()
            self.signals.restore()
        return completed

    def _iteration(self, burst: bool) -> int | None:
        """One turn of the loop: housekeeping, then one job if there is one. Returns the jobs
        run (0 or 1), or None when burst mode is done."""
        self._housekeeping.run_due()
        if is_suspended(self.connection, self):
            if burst:
                log.info("queues suspended (rq suspend); burst mode exits")
                return None
            if self.get_state() != WorkerStatus.SUSPENDED:
                self.set_state(WorkerStatus.SUSPENDED)
            self._sleep(self.settings.poll_interval)
            return 0
        if self.get_state() == WorkerStatus.SUSPENDED:
            self.set_state(WorkerStatus.IDLE)
        result = self._dequeue(burst)
        self._redis_back()
        if result is None:
            if burst:
                log.info("queues empty, burst mode exits")
                return None
            return 0
        job, queue = result
        self.reorder_queues(reference_queue=queue)  # DEQUEUE_STRATEGY round_robin / random
        self.execute_job(job, queue)
        return 1

    def _iteration_failed(self, exc: Exception) -> None:
        """The loop's boundary. A horse is never left running unsupervised; a job in hand stays
        in our in-flight list or the started registry, where the next sweep finds it."""
        if self._horse_pid:
            from worker.daemon.watch import kill_and_reap

            kill_and_reap(self._horse_pid)
            self._horse_pid = 0
        if redis_unusable(exc):
            self._redis_lost(exc)
        else:
            report("main loop", exc)
            self._sleep(self._backoff.next())

    def _bootstrap_with_retry(self) -> bool:
        while not self._stop_requested:
            self._tick()
            try:
                self.bootstrap(self.settings.log_level)
                self.connection.hset(self.key, recovery.OURS_FIELD, "1")
                self._redis_back()
                return True
            except ValueError as exc:  # RQ: "There exists an active worker named ... already"
                guarded("registration", lambda e=exc: self._name_taken(e))
            except Exception as exc:
                if not redis_unusable(exc):
                    report("registration", exc)
                self._redis_lost(exc)
        return False

    def _name_taken(self, exc: ValueError) -> None:
        if recovery.worker_alive(self.connection, self.name, self.settings.dead_worker_after):
            log.error("%s; waiting for it to go away", exc)
            self._sleep(self.settings.heartbeat_interval)
        else:
            log.warning("worker %s left a stale registration (it died); taking over", self.name)
            self.connection.hset(self.key, "death", "stale")

    def _redis_lost(self, exc: BaseException) -> None:
        self.live.redis_ok = False
        delay = self._backoff.next()
        log.warning("Redis unavailable (%s); retrying in %.1fs: %s", type(exc).__name__, delay, safe_text(exc, 120))
        self._sleep(delay)

    def _redis_back(self) -> None:
        if self.live.redis_ok is False:
            log.info("Redis is back")
        self.live.redis_ok = True
        self._backoff.reset()

    # -- housekeeping tasks -----------------------------------------------------------
    def _maintenance(self) -> None:
        self._recover_abandoned(force=True)  # before RQ's clean-up, which would fail or drop them
        try:
            guarded("RQ's registry maintenance", self.run_maintenance_tasks)
        finally:
            self.last_cleaned_at = now()  # whatever happened, not again before the next interval

    def _recover_abandoned(self, current_job_id: str | None = None, force: bool = False) -> None:
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
            except Exception as exc:  # a scheduled job's hash RQ cannot read: fail it, keep the others
                if redis_unusable(exc):
                    raise
                log.warning("scheduled jobs could not be moved (%s)", safe_text(f"{type(exc).__name__}: {exc}"))
                self._fail_unreadable_scheduled()

    def _fail_unreadable_scheduled(self) -> None:
        for queue in self.queues:
            for job_id in queue.scheduled_job_registry.get_jobs_to_schedule():
                guarded("scheduled entry", lambda q=queue, j=job_id: self._check_scheduled(q, j))

    def _check_scheduled(self, queue: Queue, job_id: str) -> None:
        try:
            self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            self.connection.zrem(queue.scheduled_job_registry.key, job_id)
        except Exception as exc:
            if redis_unusable(exc):
                raise
            lifecycle.fail_unreadable(self.connection, queue, job_id, exc, self.serializer)

    def _teardown_quietly(self) -> None:
        if self._dequeuer is not None:
            self._dequeuer.stop()
            self._dequeuer = None  # it holds this run's wake-up fd
        try:
            lifecycle.restore_inflight(self.connection, self.inflight_key)  # normally empty
            if self._scheduler is not None and self._scheduler.acquired_locks:
                self._scheduler.release_locks()
            self.teardown()
        except Exception as exc:
            log.warning("could not register worker death in Redis (%s)", safe_text(type(exc).__name__))

    def _dequeue(self, burst: bool) -> tuple[Job, Queue] | None:
        if self._dequeuer is None:
            self._dequeuer = Dequeuer(
                self.connection,
                self.inflight_key,
                self.settings.poll_interval,
                self.job_class,
                self.serializer,
                wake_fd=self.signals.wake_r,
            )
        try:
            return self._dequeuer.next(self._ordered_queues, burst)
        finally:
            self.signals.drain()

    # -- one job: the parent's side ---------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        timeout = self.settings.capped_timeout(job.timeout)
        if timeout != job.timeout and job.timeout is not None:
            log.warning(
                "job %s asked for timeout %s; runs under %ss (MAX_JOB_TIMEOUT)", job.id, safe_text(job.timeout), timeout
            )
        job.timeout = timeout  # the horse's death penalty and our liveness check both read this
        try:
            execution = self.prepare_execution(job)
        except Exception as exc:
            if not redis_unusable(exc):
                raise
            # Dequeued but not yet registered as started: put it back or it would be lost.
            log.warning("Redis failed before job %s started (%s); putting it back", job.id, type(exc).__name__)
            self._put_back(job, queue, execution=None)
            return
        self.live.job_started(
            CurrentJob(
                id=job.id,
                function=func_name(job),
                queue=safe_text(queue.name, 100),
                started=time.monotonic(),
                timeout=float(job.timeout),
            )
        )
        self.fork_work_horse(job, queue)
        self.monitor_work_horse(job, queue, execution)
        with contextlib.suppress(redis.exceptions.RedisError):
            self.set_state(WorkerStatus.IDLE)

    def monitor_work_horse(self, job: Job, queue: Queue, execution) -> None:
        started = time.monotonic()
        job.started_at = now()

        def periodic() -> None:
            try:
                self.maintain_heartbeats(job, execution)
                guarded("recovery sweep", lambda: self._recover_abandoned(job.id))
                guarded("scheduler", self._enqueue_due_jobs)  # and keeps RQ's scheduler locks through a long job
            except Exception as exc:  # Redis away: the horse goes on, we beat again next time
                log.warning("heartbeat for job %s failed (%s)", job.id, safe_text(type(exc).__name__))

        ending = watch(
            self._horse_pid,
            self.signals,
            timeout=job.timeout,
            grace=self.settings.job_grace,
            shutdown_timeout=self.settings.shutdown_timeout,
            tick=lambda: guarded("tick", self._tick),
            periodic=periodic,
            interval=self.settings.heartbeat_interval,
            poll=self.settings.poll_interval,
        )
        self._horse_pid = 0
        self.executions.pop(execution.id, None)
        self._horse_ended(job, queue, execution, ending, time.monotonic() - started)

    def _horse_ended(self, job: Job, queue: Queue, execution, ending: Ending, duration: float) -> None:
        if ending.verdict is Verdict.PUT_BACK:
            log.warning("job %s %s: horse stopped, job put back", job.id, ending.why)
            self._put_back(job, queue, execution)
            self._job_ended(job, queue, Outcome.REQUEUED, duration, None)
            return
        if ending.verdict is Verdict.KILL:
            log.error("job %s %s; horse killed", job.id, ending.why)
        outcome, etype, counters = Outcome.UNKNOWN, None, {}
        try:
            # (the execution gone: not a job that called os._exit(75) itself)
            if _exit_code(ending.status) == horse.TAKEN_OVER_EXIT and not self.connection.hexists(execution.key, "id"):
                self._job_ended(job, queue, Outcome.TAKEN_OVER, duration, None)
                return
            if ending.status != 0:
                self._handle_dead_horse(job, queue, execution, ending.status)
            outcome, etype = self._outcome(job)
            counters = progress.read_counters(job)
        except Exception as exc:  # the job's end could not be read; a sweep settles what is left
            if redis_unusable(exc):
                log.warning("could not read the outcome of job %s (%s)", job.id, type(exc).__name__)
            else:
                report("ending a job", exc)
        self._job_ended(job, queue, outcome, duration, etype, counters)

    def _handle_dead_horse(self, job: Job, queue: Queue, execution, status: int | None) -> None:
        """The horse exited abnormally (killed, crashed, out of memory): fail the job clearly."""
        if self._stopped_job_id == job.id:  # `rq`'s send_stop_job_command: RQ's own handling
            self._handle_stopped_job(job, queue, execution)
            return
        try:
            job_status = job.get_status(refresh=True)
        except InvalidJobOperation:
            return
        except ValueError:  # a status someone wrote that is none of RQ's: the job has not ended
            job_status = None
        if job_status in (JobStatus.FINISHED, JobStatus.FAILED):
            return
        if not lifecycle.claim_ending(self.connection, execution.key):
            log.warning("job %s: its horse died, and the job was taken over by another worker meanwhile", job.id)
            return
        job.ended_at = now()
        exc_string = f"worker.errors.WorkHorseDied: the work-horse running this job {_how_it_ended(status)}"
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
        meta, meta_bytes = lifecycle.counted(job, "requeued")
        backoff = Backoff()
        while True:
            try:
                ours = lifecycle.put_back_running(
                    self.connection,
                    job,
                    queue,
                    execution,
                    self.inflight_key,
                    meta_bytes,
                    cleanup=lambda pipe: self.cleanup_execution(job, pipeline=pipe, execution=execution),
                )
            except redis.exceptions.WatchError:
                continue  # a sweep took the job at this very moment: look again
            except Exception as exc:
                if not redis_unusable(exc):
                    report("putting a job back", exc)  # left where it is: the sweep takes it
                    return
                if self.signals.cold and backoff.current >= 4:
                    log.error("could not put job %s back (%s); recovery will", job.id, type(exc).__name__)
                    return
                delay = backoff.next()
                log.warning("putting job %s back failed (%s); retrying in %.1fs", job.id, type(exc).__name__, delay)
                time.sleep(delay)
                self.live.beat()
                continue
            if not ours:
                log.warning(
                    "job %s was taken over by another worker while this one looked dead; not putting it back", job.id
                )
                return
            job.meta = meta
            log.info("job %s put back at the front of %s", job.id, safe_text(queue.name))
            return

    def _job_ended(self, job, queue, outcome, duration, etype, counters=None) -> None:
        function = func_name(job)
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
                "function": function,
                "queue": safe_text(queue.name, 100),
                "duration": round(duration, 6),
                "outcome": outcome,
                "error_type": safe_text(etype, 100) if etype else None,
                "worker": self.name,
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
